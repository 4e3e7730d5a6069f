"""memory://, the reference driver, through real FUSE mounts: the tree and what reaches the
store, changes made behind the mount's back, option checking, and the driver call layer's
deadline when the store hangs (assetfs/remote.py)."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import Mount, assetfs_command, mounted

TIMEOUT = 2.0
"""``-o timeout`` of the hang tests, seconds."""


def tree(root: Path) -> dict[str, bytes | None]:
    """relative path -> bytes (None for a folder) under ``root``."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            found[os.path.relpath(os.path.join(folder, name), root)] = Path(
                folder, name).read_bytes()
    return found


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    root = tmp_path / "seed"
    (root / "cached").mkdir(parents=True)
    (root / "other" / "deep").mkdir(parents=True)
    (root / "cached" / "a.txt").write_bytes(b"alpha\n")
    (root / "other" / "b.bin").write_bytes(os.urandom(3 << 20))
    (root / "other" / "deep" / "c.txt").write_bytes(b"gamma")
    return root


@pytest.fixture
def memory(tmp_path: Path, seed: Path) -> Iterator[Mount]:
    options = {"seed": str(seed), "dump": str(tmp_path / "dump"), "timeout": str(TIMEOUT),
               "cache_dir": str(tmp_path / "cache"), "write_back_delay": "0"}
    with mounted(f"memory://{tmp_path.name}/", tmp_path / "mnt", options) as mount:
        yield mount


def test_tree_reads_writes_and_what_reaches_the_store(memory: Mount, tmp_path: Path,
                                                      seed: Path) -> None:
    mnt = memory.path
    assert tree(mnt) == tree(seed)
    with open(mnt / "other" / "b.bin", "rb") as f:  # ranged reads at offsets
        f.seek(2 << 20)
        assert f.read(10) == (seed / "other" / "b.bin").read_bytes()[2 << 20:(2 << 20) + 10]
    (mnt / "new dir ✓").mkdir()
    (mnt / "new dir ✓" / "n.txt").write_bytes(b"new")
    os.rename(mnt / "cached" / "a.txt", mnt / "new dir ✓" / "a.txt")
    os.rename(mnt / "other", mnt / "moved")
    os.unlink(mnt / "moved" / "deep" / "c.txt")
    os.rmdir(mnt / "moved" / "deep")
    expected = tree(mnt)
    subprocess.run(assetfs_command("umount", str(mnt)), check=True, timeout=60)
    memory.proc.wait(timeout=30)
    assert tree(tmp_path / "dump") == expected
    assert expected["new dir ✓/a.txt"] == b"alpha\n"


def test_a_change_behind_the_mounts_back_shows_at_once(memory: Mount) -> None:
    mnt = memory.path
    assert sorted(os.listdir(mnt / "cached")) == ["a.txt"]
    os.setxattr(mnt, "user.assetfs.memory.put", b"cached/remote.txt\nfrom elsewhere")
    deadline = time.monotonic() + 5
    while "remote.txt" not in os.listdir(mnt / "cached") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (mnt / "cached" / "remote.txt").read_bytes() == b"from elsewhere"


def test_unknown_and_malformed_options_fail_the_mount_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    for option, named in (("nosuchopt=1", "nosuchopt"), ("timeout=soon", "timeout=soon"),
                          ("latency=-1", "latency=-1"), ("cache_max=lots", "cache_max")):
        result = subprocess.run(
            assetfs_command("mount", "memory://x/", str(tmp_path / "mnt"), "-o", option),
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], result.stderr


def drivers_listing() -> str:
    return subprocess.run(assetfs_command("drivers"), capture_output=True, text=True,
                          check=True, timeout=30).stdout


def test_assetfs_drivers_prints_each_drivers_options() -> None:
    listing = drivers_listing()
    assert "memory:" in listing and "-o latency=SECONDS" in listing
    assert "-o write_back_delay=SECONDS" in listing


def timed(call: Callable[[], object]) -> tuple[float, int | None]:
    """Seconds ``call()`` took and the errno it failed with (None if it did not)."""
    started = time.monotonic()
    try:
        call()
    except OSError as exc:
        return time.monotonic() - started, exc.errno
    return time.monotonic() - started, None


def test_a_hung_store_costs_each_request_its_deadline_and_nothing_else(memory: Mount) -> None:
    """mkdir, rename, unlink, create, truncate and an xattr action against a store that
    never answers each fail with EIO or ETIMEDOUT within ``timeout`` + 1 s, and ls of a
    cached folder answers meanwhile."""
    mnt = memory.path
    assert os.listdir(mnt / "cached") == ["a.txt"]
    assert os.listdir(mnt / "other")  # known names, content never read
    os.setxattr(mnt, "user.assetfs.memory.hang", b"*")
    attempts: dict[str, Callable[[], object]] = {
        "mkdir": lambda: os.mkdir(mnt / "other" / "newdir"),
        "rename": lambda: os.rename(mnt / "other" / "b.bin", mnt / "other" / "b2.bin"),
        "unlink": lambda: os.unlink(mnt / "other" / "deep" / "c.txt"),
        "create": lambda: open(mnt / "other" / "deep" / "unseen.txt", "w").close(),
        "truncate": lambda: os.truncate(mnt / "other" / "b.bin", 10),
        "xattr action": lambda: os.setxattr(mnt / "other" / "b.bin",
                                            "user.assetfs.checkpoint", b"hung"),
    }
    for name, attempt in attempts.items():
        took, failed = timed(attempt)
        assert failed in (errno.EIO, errno.ETIMEDOUT), (name, failed)
        assert took <= TIMEOUT + 1, (name, took)

    hung = threading.Thread(target=lambda: timed(lambda: os.mkdir(mnt / "other" / "again")))
    hung.start()
    time.sleep(0.3)
    assert os.listdir(mnt / "cached") == ["a.txt"]
    assert (mnt / "cached" / "a.txt").stat().st_size == 6
    assert hung.is_alive(), "ls of a cached folder answered only after the hung mkdir"
    hung.join()

    os.setxattr(mnt, "user.assetfs.memory.hang", b"")
    deadline = time.monotonic() + 10
    while timed(lambda: os.mkdir(mnt / "other" / "recovered"))[1] is not None:
        assert time.monotonic() < deadline, "the mount did not recover"
        time.sleep(0.2)
    assert (mnt / "other" / "recovered").is_dir()


def test_a_name_the_store_rejects_is_refused_at_once(tmp_path: Path) -> None:
    """A store that forbids some characters (memory's ``reject``): create and mkdir of such
    a name fail with EINVAL before anything is written, and nothing reaches the store."""
    options = {"reject": "[?*]", "dump": str(tmp_path / "dump"),
               "cache_dir": str(tmp_path / "cache"), "write_back_delay": "0"}
    with mounted(f"memory://{tmp_path.name}/", tmp_path / "mnt", options) as m:
        for attempt in (lambda: open(m.path / "what?.txt", "w").close(),
                        lambda: os.mkdir(m.path / "star*")):
            assert timed(attempt)[1] == errno.EINVAL
        (m.path / "fine.txt").write_bytes(b"ok")
        subprocess.run(assetfs_command("umount", str(m.path)), check=True, timeout=60)
        m.proc.wait(timeout=30)
    assert tree(tmp_path / "dump") == {"fine.txt": b"ok"}
