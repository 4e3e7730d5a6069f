"""Kernel FUSE passthrough. Files whose whole content is in the cache are read and
written by the kernel straight from and into their cache file; the daemon still journals
them, uploads them, answers stat, and falls back to serving I/O itself where the kernel's
rules (one backing file per inode, no mixing with page-cache opens) or the cache bound say
so. Through real mounts of omni.client's ``file:`` provider."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pyfuse3
import pytest
from mounting import Mount, mounted
from test_writeback import flush, options, status, wait_for

MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


def passthrough_expected() -> bool:
    """Whether this machine allows passthrough: Linux >= 6.9, root (the backing-file ioctl
    needs CAP_SYS_ADMIN) and the pyfuse3 of scripts/build-pyfuse3-wheel.sh."""
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return (major, minor) >= (6, 9) and os.geteuid() == 0 and hasattr(pyfuse3, "backing_open")


def passthrough_opens(mount: Mount) -> int:
    return status(mount)["passthrough"]["opens"]


@pytest.mark.parametrize("passthrough", ["yes", "no"])
def test_written_file_is_journaled_and_survives_sigkill(
    passthrough: str, store: Path, tmp_path: Path
) -> None:
    """Written in 1 MiB writes and closed, then the daemon is killed before the upload: the
    next mount uploads it intact. While open, stat shows the size written so far."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    data = os.urandom(32 * MiB)
    opts = options(tmp_path, write_back_delay="60", passthrough=passthrough)
    with mounted(url, mnt, opts) as m:
        fd = os.open(mnt / "big.bin", os.O_WRONLY | os.O_CREAT)
        try:
            for offset in range(0, len(data), MiB):
                os.write(fd, data[offset:offset + MiB])
                if offset == 8 * MiB:
                    assert os.stat(mnt / "big.bin").st_size == 9 * MiB
                    assert status(m)["dirty_files"] == ["/big.bin"]
        finally:
            os.close(fd)
        assert os.stat(mnt / "big.bin").st_size == len(data)
        assert status(m)["cache"]["dirty_bytes"] == len(data)
        if passthrough == "yes" and passthrough_expected():
            assert passthrough_opens(m) >= 1
        else:
            assert passthrough_opens(m) == 0
        m.kill()
    assert not (store / "big.bin").exists()
    with mounted(url, mnt, opts) as m:
        wait_for(lambda: not status(m)["dirty_files"], 30, "the replayed upload")
        assert (mnt / "big.bin").read_bytes() == data
    assert hashlib.sha256((store / "big.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()


def test_open_for_writing_without_a_write_uploads_nothing(store: Path, tmp_path: Path) -> None:
    """Opening a cached file read-write and closing it unchanged (an editor's probe, a
    backup tool's open) leaves it clean: no upload, and its mtime is the store's."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="0.1")) as m:
        (mnt / "doc.txt").write_bytes(b"content\n")
        flush(m)
        uploads = status(m)["uploads"]["files"]
        mtime = os.stat(mnt / "doc.txt").st_mtime_ns
        with open(mnt / "doc.txt", "r+b") as f:
            assert f.read() == b"content\n"
        time.sleep(0.5)
        assert not status(m)["dirty_files"]
        assert status(m)["uploads"]["files"] == uploads
        assert os.stat(mnt / "doc.txt").st_mtime_ns == mtime
        with open(mnt / "doc.txt", "r+b") as f:  # a real change is uploaded
            f.seek(0, os.SEEK_END)
            f.write(b"more\n")
        flush(m)
        assert status(m)["uploads"]["files"] == uploads + 1
    assert (store / "doc.txt").read_bytes() == b"content\nmore\n"


def test_fsync_then_close_uploads_once(store: Path, tmp_path: Path) -> None:
    """A safe save (write, fsync, close) uploads once: the fsync's upload carries it all,
    and the close finds nothing new. A write after an fsync is uploaded again."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    data = os.urandom(3 * MiB)
    with mounted(url, mnt, options(tmp_path, write_back_delay="0.1")) as m:
        with open(mnt / "doc.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            assert (store / "doc.bin").read_bytes() == data
        time.sleep(0.5)
        assert status(m)["uploads"]["files"] == 1
        assert status(m)["uploads"]["bytes"] == len(data)
        assert not status(m)["dirty_files"]
        with open(mnt / "doc.bin", "r+b", buffering=0) as f:
            f.write(b"X")
            os.fsync(f.fileno())
            assert (store / "doc.bin").read_bytes()[:2] == b"X" + data[1:2]
            f.write(b"Y")  # after the fsync, before the close
        flush(m)
        assert status(m)["uploads"]["files"] == 3
    assert (store / "doc.bin").read_bytes() == b"XY" + data[2:]


def test_readers_and_writers_of_one_file_see_each_other(store: Path, tmp_path: Path) -> None:
    """Several opens of one file at once (the kernel wants one backing file per inode): a
    reader sees what a writer wrote, through either handle order."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="60")) as m:
        with open(mnt / "log.txt", "wb", buffering=0) as writer, \
                open(mnt / "log.txt", "rb", buffering=0) as reader:
            writer.write(b"first line\n")
            assert reader.read() == b"first line\n"
            with open(mnt / "log.txt", "ab", buffering=0) as appender:
                appender.write(b"appended\n")
            writer.write(b"x")  # O_WRONLY handle at its own offset, after "first line\n"
            assert reader.read() == b"xppended\n"
        assert (mnt / "log.txt").read_bytes() == b"first line\nxppended\n"
        flush(m)
    assert (store / "log.txt").read_bytes() == b"first line\nxppended\n"


def test_store_change_under_an_open_reader(store: Path, tmp_path: Path) -> None:
    """A file read from its cache file is changed on the store while a program keeps it
    open: a new open reads the new content (through the daemon, since the open reader
    still holds the old cache file as the inode's backing file), the old one goes on."""
    url, mnt = f"file://{store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path, write_back_delay="0.1")) as m:
        (mnt / "scene.usd").write_bytes(b"version 1\n")
        flush(m)
        with open(mnt / "scene.usd", "rb", buffering=0) as old:
            assert old.read() == b"version 1\n"
            (store / "scene.usd").write_bytes(b"version 2, longer\n")
            wait_for(lambda: (mnt / "scene.usd").read_bytes() == b"version 2, longer\n",
                     10, "the store's change")
            old.seek(0)
            assert old.read(9) == b"version 1"
        assert (mnt / "scene.usd").read_bytes() == b"version 2, longer\n"
        assert not status(m)["dirty_files"]


ROOTLESS = r"""
set -eu
python=$1 store=$2 mnt=$3 cache=$4
"$python" -m assetfs.cli mount "file://$store" "$mnt" -o "cache_dir=$cache,write_back_delay=0.1" >&2
pid=$(getfattr -n user.assetfs.status --only-values "$mnt" | "$python" -c \
    'import json, sys; print(json.load(sys.stdin)["pid"])')
trap '"$python" -m assetfs.cli umount "$mnt" >/dev/null || kill -9 "$pid"' EXIT
cp "$store/../source.bin" "$mnt/copy.bin"
cmp "$mnt/copy.bin" "$store/../source.bin"
echo "appended" >> "$mnt/copy.bin"
getfattr -n user.assetfs.status --only-values "$mnt"
"""


def test_without_cap_sys_admin_every_open_goes_through_the_daemon(
    store: Path, tmp_path: Path
) -> None:
    """A daemon without CAP_SYS_ADMIN (here: root of a rootless user namespace, as in a
    rootless container) cannot register backing files: it says so once in its log, and
    reads and writes go through it, intact."""
    if subprocess.run(["unshare", "-U", "-r", "-m", "true"], check=False).returncode:
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    source = os.urandom(8 * MiB)
    (tmp_path / "source.bin").write_bytes(source)
    (tmp_path / "mnt").mkdir()
    done = subprocess.run(
        ["unshare", "-U", "-r", "-m", "--propagation", "private", "bash", "-c", ROOTLESS,
         "rootless", sys.executable, str(store), str(tmp_path / "mnt"), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["passthrough"] == {"enabled": False, "opens": 0}
    assert state["requests"]["write"] >= 8
    log = (tmp_path / "cache" / "daemon.log").read_text()
    assert log.count("kernel FUSE passthrough unavailable") == 1
    assert (store / "copy.bin").read_bytes() == source + b"appended\n"
