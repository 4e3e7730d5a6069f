"""Control commands never sit in a system call on the mount: ``assetfs umount`` with an
upload that cannot finish (the store's disk is full: omni.client answers ERROR, which is
retried) stops at ``--timeout`` or at Ctrl-C, ``assetfs status`` answers meanwhile, and the
file reaches the store at a later mount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Mount, assetfs_command, is_mounted, mounted

from assetfs.cache.journal import Journal

MiB = 1 << 20


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Path]:
    """A store folder on a 1 MiB tmpfs: an upload of 2 MiB fails there until it grows."""
    disk = tmp_path / "store"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def options(tmp_path: Path) -> dict[str, str | None]:
    return {"cache_dir": str(tmp_path / "cache"), "write_back_delay": "0", "timeout": "3"}


def stuck_upload(mount: Mount) -> bytes:
    """Write a file whose upload keeps failing; return its content."""
    data = os.urandom(2 * MiB)
    (mount.path / "big.bin").write_bytes(data)
    deadline = time.monotonic() + 20
    while json.loads(os.getxattr(mount.path, "user.assetfs.status"))["uploads"]["retries"] < 1:
        assert time.monotonic() < deadline, "the upload never failed"
        time.sleep(0.05)
    return data


def umount(mount: Mount, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(assetfs_command("umount", *args, str(mount.path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_umount_stops_at_its_timeout_and_the_file_uploads_at_the_next_mount(
    small_store: Path, tmp_path: Path
) -> None:
    url, mnt = f"file://{small_store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path)) as m:
        data = stuck_upload(m)
        done = umount(m, "--timeout", "3")
        assert done.stdout is not None
        first = done.stdout.readline()  # printed as it starts waiting (after the interpreter
        started = time.monotonic()  # started: that takes a loaded machine a second or more)
        _, err = done.communicate(timeout=60)
        took = time.monotonic() - started
        assert done.returncode == 0, err
        assert took <= 4.0, f"umount --timeout 3 took {took:.1f}s"
        assert "waiting for 1 uploads: /big.bin" in first
        assert "last error: upload of /big.bin" in first
        assert "1 files not uploaded after 3s" in err
        assert not is_mounted(mnt)
        assert m.proc.wait(timeout=10) == 0
    journal = Journal(tmp_path / "cache" / "journal.sqlite")
    assert [r.path for r in journal.records()] == ["/big.bin"]
    journal.close()
    subprocess.run(["mount", "-o", "remount,size=8M", str(small_store)], check=True)
    with mounted(url, mnt, options(tmp_path)) as again:
        deadline = time.monotonic() + 30
        while json.loads(os.getxattr(again.path, "user.assetfs.status"))["dirty_files"]:
            assert time.monotonic() < deadline, "not uploaded at the next mount"
            time.sleep(0.1)
    assert (small_store / "big.bin").read_bytes() == data


def test_ctrl_c_stops_umount_at_once_and_status_answers_meanwhile(
    small_store: Path, tmp_path: Path
) -> None:
    url, mnt = f"file://{small_store}", tmp_path / "mnt"
    with mounted(url, mnt, options(tmp_path)) as m:
        stuck_upload(m)
        waiting = umount(m)
        assert waiting.stdout is not None
        assert "waiting for 1 uploads" in waiting.stdout.readline()
        shown = subprocess.run(assetfs_command("status", str(mnt)), capture_output=True,
                               text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert "dirty files: 1 (/big.bin)" in shown.stdout
        assert waiting.poll() is None  # still waiting, and holding no kernel lock
        sent = time.monotonic()
        waiting.send_signal(signal.SIGINT)
        assert waiting.wait(timeout=30) == 130
        took = time.monotonic() - sent
        assert took <= 1.0, f"umount took {took:.2f}s to obey Ctrl-C"
        assert "interrupted" in (waiting.stderr.read() if waiting.stderr else "")
        assert is_mounted(mnt)  # Ctrl-C leaves the mount as it was, still uploading
        os.setxattr(mnt, "user.assetfs.umount_timeout", b"0")
