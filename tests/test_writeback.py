"""Journaled write-back through real mounts of omni.client's ``file:`` provider,
with real faults: SIGKILL of the daemon, a store that refuses writes, a remote change under
a dirty file, a bounded cache, and ``assetfs umount`` with and without flushing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mounting import Mount, assetfs_command, mounted

from assetfs.cache.journal import Journal

MiB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def status(mount: Mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.assetfs.status"))


def wait_for(check: Callable[[], object], seconds: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not in {seconds}s: {what}"
        time.sleep(0.05)


def flush(mount: Mount, seconds: int = 30) -> None:
    """Upload everything dirty now (the flush xattr starts the uploads, as ``assetfs
    umount`` does) and wait until nothing is dirty."""
    os.setxattr(mount.path, "user.assetfs.flush", b"")
    wait_for(lambda: not status(mount)["dirty_files"], seconds, "uploads after a flush")


def du(folder: Path) -> int:
    """Bytes allocated on disk under ``folder`` (what ``du`` counts)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


def options(tmp_path: Path, **extra: str) -> dict[str, str | None]:
    return {"cache_dir": str(tmp_path / "cache"), "timeout": "3", **extra}


# --- crash safety -------------------------------------------------------------------------
def test_sigkill_with_100_queued_files_loses_nothing(store: Path, tmp_path: Path) -> None:
    """100 closed files (new ones, editor-style renames, overwrites of store files) are
    queued behind a 60 s delay when the daemon is SIGKILLed; the next mount on the dead
    endpoint clears it, serves our versions and uploads each file exactly once."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    (store / "batch").mkdir()
    for i in range(5):
        (store / "batch" / f"old{i}.bin").write_bytes(b"stale content %d\n" % i)
    expected: dict[str, bytes] = {}
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as first:
        for i in range(85):
            expected[f"f{i:03}.bin"] = os.urandom(1000 + 997 * i)
            (mnt / "batch" / f"f{i:03}.bin").write_bytes(expected[f"f{i:03}.bin"])
        for i in range(10):  # save to a temporary name, then rename over the real one
            expected[f"saved{i}.txt"] = f"document {i}\n".encode() * (i + 1)
            (mnt / "batch" / f"saved{i}.tmp").write_bytes(expected[f"saved{i}.txt"])
            os.rename(mnt / "batch" / f"saved{i}.tmp", mnt / "batch" / f"saved{i}.txt")
        for i in range(5):
            expected[f"old{i}.bin"] = os.urandom(50_000)
            (mnt / "batch" / f"old{i}.bin").write_bytes(expected[f"old{i}.bin"])
        before = status(first)
        assert len(before["dirty_files"]) == 100 and before["uploads"]["files"] == 0
        first.kill()
        with pytest.raises(OSError) as dead:
            os.listdir(mnt)
        assert dead.value.errno == errno.ENOTCONN
        assert sorted(os.listdir(store / "batch")) == [f"old{i}.bin" for i in range(5)]

        with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as second:
            # the journal's files are uploaded at start, and read back as ours meanwhile
            for name in ("f000.bin", "saved3.txt", "old2.bin"):
                assert (mnt / "batch" / name).read_bytes() == expected[name]
            wait_for(lambda: not status(second)["dirty_files"], 30, "uploads after restart")
            after = status(second)
            assert sorted(os.listdir(mnt / "batch")) == sorted(expected)
    assert after["uploads"]["files"] == 100, after["uploads"]
    assert after["uploads"]["bytes"] == sum(map(len, expected.values()))
    assert after["uploads"]["retries"] == 0 and after["uploads"]["conflicts"] == 0
    assert sorted(os.listdir(store / "batch")) == sorted(expected)
    for name, data in expected.items():
        assert sha256((store / "batch" / name).read_bytes()) == sha256(data), name


# --- a store that refuses writes --------------------------------------------------------------
def test_store_refusing_writes_keeps_reads_and_uploads_later(store: Path, tmp_path: Path) -> None:
    """The target folder is made immutable (``chattr +i``: root ignores permission bits):
    uploads fail and are retried, fsync reports the error quickly, cached files and folders
    stay readable; once the folder is writable again everything arrives."""
    folder = store / "locked"
    folder.mkdir()
    original = os.urandom(200_000)
    (folder / "existing.bin").write_bytes(original)
    url, mnt = f"file://{store}", tmp_path / "mnt"
    written = {f"new{i}.bin": os.urandom(100_000 + i) for i in range(5)}
    with mounted(url, mnt, options(tmp_path, write_back_delay="0.2", timeout="2")) as m:
        assert (mnt / "locked" / "existing.bin").read_bytes() == original
        assert os.listdir(mnt / "locked") == ["existing.bin"]
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            for name, data in written.items():
                (mnt / "locked" / name).write_bytes(data)
            wait_for(lambda: status(m)["uploads"]["retries"] >= 5, 20, "upload retries")
            uploads = status(m)["uploads"]
            assert uploads["files"] == 0 and "new" in uploads["last_error"][1], uploads
            # fsync waits for the upload and reports its failure, without hanging
            started = time.monotonic()
            with open(mnt / "locked" / "synced.bin", "wb") as f:
                f.write(b"must reach the store")
                f.flush()
                with pytest.raises(OSError) as refused:
                    os.fsync(f.fileno())
            assert refused.value.errno in (errno.EIO, errno.EACCES, errno.EPERM), refused.value
            assert time.monotonic() - started < 10
            # reads of cached and dirty files and listings keep working meanwhile
            assert (mnt / "locked" / "existing.bin").read_bytes() == original
            assert (mnt / "locked" / "new3.bin").read_bytes() == written["new3.bin"]
            assert sorted(os.listdir(mnt / "locked")) == sorted(
                ["existing.bin", "synced.bin", *written])
            assert os.listdir(folder) == ["existing.bin"]
            assert len(status(m)["dirty_files"]) == 6
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        for name in ("synced.bin", "new0.bin"):  # no stale error from the failed attempts
            with open(mnt / "locked" / name, "rb") as f:
                os.fsync(f.fileno())
            assert (folder / name).exists()
        flush(m)
        assert not status(m)["dirty_files"]
    assert (folder / "synced.bin").read_bytes() == b"must reach the store"
    for name, data in written.items():
        assert sha256((folder / name).read_bytes()) == sha256(data), name


# --- conflicts --------------------------------------------------------------------------------
def test_remote_change_under_a_dirty_file_gives_a_conflict_copy(
    store: Path, tmp_path: Path
) -> None:
    (store / "doc.txt").write_bytes(b"original text\n")
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
        with open(mnt / "doc.txt", "r+b") as f:
            f.write(b"OURS")
        assert (mnt / "doc.txt").read_bytes() == b"OURSinal text\n"
        time.sleep(0.05)
        (store / "doc.txt").write_bytes(b"theirs: changed on the store meanwhile\n")
        flush(m)
        copies = sorted(store.glob("doc.txt.conflict-*"))
        assert len(copies) == 1, sorted(os.listdir(store))
        assert copies[0].read_bytes() == b"OURSinal text\n"
        assert (store / "doc.txt").read_bytes() == b"theirs: changed on the store meanwhile\n"
        uploads = status(m)["uploads"]
        assert uploads["conflicts"] == 1 and uploads["conflict_files"] == [
            "/" + copies[0].name]
        wait_for(lambda: (mnt / "doc.txt").read_bytes().startswith(b"theirs"), 10,
                 "the mount shows the store's version")
        assert (mnt / copies[0].name).read_bytes() == b"OURSinal text\n"
        assert sorted(os.listdir(mnt)) == ["doc.txt", copies[0].name]


def test_remote_change_to_the_same_bytes_is_no_conflict(store: Path, tmp_path: Path) -> None:
    """The store already holding exactly our bytes (another client saved the same content,
    or a daemon was killed between an upload and its journal update) is not a conflict."""
    (store / "doc.txt").write_bytes(b"original text\n")
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
        (mnt / "doc.txt").write_bytes(b"the same new text\n")
        time.sleep(0.05)
        (store / "doc.txt").write_bytes(b"the same new text\n")
        os.utime(store / "doc.txt", ns=(1_700_000_000_000_000_000,) * 2)  # a new version
        flush(m)
        assert sorted(os.listdir(store)) == ["doc.txt"]
        assert status(m)["uploads"]["conflicts"] == 0 and not status(m)["dirty_files"]
        assert (mnt / "doc.txt").read_bytes() == b"the same new text\n"


# --- the cache bound ----------------------------------------------------------------------------
def test_cache_stays_within_its_bound_and_dirty_overflow_is_enospc(
    store: Path, tmp_path: Path
) -> None:
    for i in range(4):
        (store / f"big{i}.bin").write_bytes(os.urandom(5 * MiB))
    url, mnt = f"file://{store}", tmp_path / "mnt"
    data_dir = tmp_path / "cache" / "data"
    bound = 8 * MiB
    with mounted(url, mnt, options(tmp_path, write_back_delay="60", cache_max="8M")) as m:
        for i in range(4):  # reads past the bound
            assert (mnt / f"big{i}.bin").read_bytes() == (store / f"big{i}.bin").read_bytes()
        assert du(data_dir) <= bound
        written = {}
        for i in range(6):  # 18 MiB written and uploaded one after the other
            written[f"w{i}.bin"] = os.urandom(3 * MiB)
            (mnt / f"w{i}.bin").write_bytes(written[f"w{i}.bin"])
            flush(m)
            assert du(data_dir) <= bound, f"after w{i}: {du(data_dir)} bytes cached"
        assert status(m)["cache"]["used_bytes"] <= bound

        # dirty data alone would pass the bound: the writer gets ENOSPC, readers go on
        kept = {f"d{i}.bin": os.urandom(3 * MiB) for i in range(2)}
        for name, data in kept.items():
            (mnt / name).write_bytes(data)
        overflow = os.urandom(3 * MiB)
        accepted = 0
        fd = os.open(mnt / "overflow.bin", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as full:
                for offset in range(0, len(overflow), 256 * 1024):
                    accepted += os.write(fd, overflow[offset:offset + 256 * 1024])
        finally:
            os.close(fd)
        assert full.value.errno == errno.ENOSPC
        assert 0 < accepted < len(overflow)
        assert status(m)["cache"]["dirty_bytes"] <= bound
        assert du(data_dir) <= bound + MiB
        assert (mnt / "big2.bin").read_bytes() == (store / "big2.bin").read_bytes()
        for name, data in kept.items():
            assert (mnt / name).read_bytes() == data
        assert (mnt / "overflow.bin").read_bytes() == overflow[:accepted]
        flush(m)
    for name, data in {**written, **kept}.items():
        assert sha256((store / name).read_bytes()) == sha256(data), name
    assert (store / "overflow.bin").read_bytes() == overflow[:accepted]


# --- unmounting --------------------------------------------------------------------------------
def write_queued(mnt: Path, count: int) -> dict[str, bytes]:
    files = {f"q{i}.bin": os.urandom(MiB + i) for i in range(count)}
    for name, data in files.items():
        (mnt / name).write_bytes(data)
    return files


def test_umount_waits_for_queued_uploads(store: Path, tmp_path: Path) -> None:
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
        files = write_queued(mnt, 5)
        done = subprocess.run(assetfs_command("umount", str(mnt)), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "waiting for 5 uploads" in done.stdout
        assert m.proc.wait(timeout=10) == 0
    for name, data in files.items():
        assert sha256((store / name).read_bytes()) == sha256(data), name


def test_umount_no_flush_leaves_uploads_to_the_next_mount(store: Path, tmp_path: Path) -> None:
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
        files = write_queued(mnt, 5)
        started = time.monotonic()
        done = subprocess.run(assetfs_command("umount", "--no-flush", str(mnt)),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert m.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    assert os.listdir(store) == []
    journal = Journal(tmp_path / "cache" / "journal.sqlite")
    assert sorted(r.path for r in journal.records()) == sorted(f"/{n}" for n in files)
    journal.close()
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as again:
        wait_for(lambda: not status(again)["dirty_files"], 20, "uploads at the next mount")
        assert status(again)["uploads"]["files"] == 5
    for name, data in files.items():
        assert sha256((store / name).read_bytes()) == sha256(data), name


def test_lazy_unmount_right_after_close_still_uploads(store: Path, tmp_path: Path) -> None:
    """``fusermount3 -u -z`` right after programs closed their files: the kernel may drop
    the close (RELEASE) it had not yet handed to the daemon; the daemon counts those files
    closed, and the stop signal that follows lets it upload them before it exits."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
        files = write_queued(mnt, 5)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=True)
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=30) == 0
    for name, data in files.items():
        assert sha256((store / name).read_bytes()) == sha256(data), name


def test_stopped_while_a_file_is_still_open_uploads_what_was_written(
    store: Path, tmp_path: Path
) -> None:
    """The daemon is stopped while a program still holds a file it wrote: that file is
    never closed towards the daemon, yet what was written so far reaches the store."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    data = os.urandom(3 * MiB)
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
        fd = os.open(mnt / "open.bin", os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, data)
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(timeout=30) == 0
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN: the daemon is gone
                os.close(fd)
    assert sha256((store / "open.bin").read_bytes()) == sha256(data)


def test_a_second_signal_stops_the_uploads_at_exit(store: Path, tmp_path: Path) -> None:
    """A stopped daemon keeps uploading for up to ``umount_timeout`` seconds; a second stop
    signal ends that at once and leaves the rest in the journal for the next mount."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    (store / "small").mkdir()  # a 1 MiB disk: the upload of 2 MiB fails (retried) there
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(store / "small")],
                   check=True)
    try:
        with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
            (mnt / "small" / "file.bin").write_bytes(os.urandom(2 * MiB))
            m.proc.send_signal(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                m.proc.wait(timeout=2)  # still trying to upload
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(timeout=10) == 0
            assert "leaving the rest to the next mount" in m.output()
    finally:
        subprocess.run(["umount", "-l", str(store / "small")], check=False)
    journal = Journal(tmp_path / "cache" / "journal.sqlite")
    assert [r.path for r in journal.records()] == ["/small/file.bin"]
    journal.close()


# --- renames and deletions racing an upload ------------------------------------------------------
def wait_until_uploading(mount: Mount, path: str) -> None:
    wait_for(lambda: path in status(mount)["uploads"]["in_progress"], 10, f"upload of {path}")


@pytest.mark.parametrize("action", ["unlink", "rename"])
def test_delete_or_rename_during_the_upload(action: str, store: Path, tmp_path: Path) -> None:
    """An editor renames (or a user deletes) a file while its upload is running: the store
    ends with exactly what the mount shows, not the old name too."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    data = os.urandom(16 * MiB) * 16  # 256 MiB: the upload takes a moment
    with mounted(url, mnt, options(tmp_path, write_back_delay="0.1")) as m:
        (mnt / "big.tmp").write_bytes(data)
        wait_until_uploading(m, "/big.tmp")
        if action == "unlink":
            os.unlink(mnt / "big.tmp")
        else:
            os.rename(mnt / "big.tmp", mnt / "big.bin")
        wait_for(lambda: not status(m)["dirty_files"] and not status(m)["uploads"][
            "in_progress"], 30, "uploads")
        time.sleep(0.3)
        shown = sorted(os.listdir(mnt))
    assert sorted(os.listdir(store)) == shown == ([] if action == "unlink" else ["big.bin"])
    if action == "rename":
        assert sha256((store / "big.bin").read_bytes()) == sha256(data)


def test_save_over_a_dirty_file_still_open(store: Path, tmp_path: Path) -> None:
    """An editor saves (write a temporary file, rename it over the original) while another
    program still has the unsaved original open: the replaced content is never uploaded
    over the saved one, now or after a restart."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="0.1")) as m:
        with open(mnt / "doc.txt", "wb") as old:
            old.write(b"old unsaved content\n")
            old.flush()
            (mnt / "doc.txt.tmp").write_bytes(b"saved content\n")
            os.rename(mnt / "doc.txt.tmp", mnt / "doc.txt")
            old.write(b"written to the replaced file\n")
        with open(mnt / "scratch.bin", "wb") as scratch:  # deleted while open, then written
            scratch.write(b"x" * 1000)
            scratch.flush()
            os.unlink(mnt / "scratch.bin")
            scratch.write(b"y" * 1000)
            scratch.flush()
            scratch.seek(0)
        flush(m)
        time.sleep(0.5)
        assert (mnt / "doc.txt").read_bytes() == b"saved content\n"
        assert not status(m)["dirty_files"]
    assert sorted(os.listdir(store)) == ["doc.txt"]
    assert (store / "doc.txt").read_bytes() == b"saved content\n"
    journal = Journal(tmp_path / "cache" / "journal.sqlite")
    assert journal.records() == []
    journal.close()


def test_full_cache_disk_gives_enospc_and_keeps_what_was_written(
    store: Path, tmp_path: Path
) -> None:
    """The cache disk itself fills up (a 12 MiB tmpfs; cache_max is far larger): writers get
    ENOSPC, not EIO; what was written before stays readable and is uploaded intact."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12M", "tmpfs", str(disk)], check=True)
    try:
        url, mnt = f"file://{store}", tmp_path / "mnt"
        opts = {"cache_dir": str(disk / "cache"), "write_back_delay": "60", "timeout": "3"}
        with mounted(url, mnt, opts) as m:
            kept = {f"k{i}.bin": os.urandom(MiB) for i in range(3)}
            for name, data in kept.items():
                (mnt / name).write_bytes(data)
            accepted = 0
            fd = os.open(mnt / "filler.bin", os.O_WRONLY | os.O_CREAT)
            try:
                with pytest.raises(OSError) as full:
                    for _ in range(64):
                        accepted += os.write(fd, os.urandom(256 * 1024))
            finally:
                os.close(fd)
            assert full.value.errno == errno.ENOSPC, full.value
            for name, data in kept.items():
                assert (mnt / name).read_bytes() == data
            assert os.path.getsize(mnt / "filler.bin") == accepted
            flush(m)
            assert not status(m)["dirty_files"]
            (mnt / "after.bin").write_bytes(b"room again")  # uploaded files left the disk
            flush(m)
        for name, data in kept.items():
            assert sha256((store / name).read_bytes()) == sha256(data), name
        assert os.path.getsize(store / "filler.bin") == accepted
        assert (store / "after.bin").read_bytes() == b"room again"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
