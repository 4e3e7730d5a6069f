"""OMERO.fs through a real mount: ``assetfs mount omerofs://...`` against the stock servers.

Listing and sha256 through the mount, server-side changes visible within 1 s, EROFS on every
write, FileServer stopped mid-read -> EIO within the timeout, restarted -> reads work again
without remounting. The fetch process (the daemon's child that runs the readBlock calls):
killed -> replaced without a failed read; stuck -> EIO within the timeout, then replaced;
gone with the daemon, whether it unmounts or is SIGKILLed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("Ice", reason="needs the omero extra: make omero")
pytest.importorskip("fsServerFS", reason="needs omero-dropbox: make omero")

from mounting import Mount, mounted
from omerofs_fixtures import live, servers, tree  # noqa: F401 - pytest fixtures
from omerofs_peer import UNICODE_DIR, UNICODE_FILE, MiB, OmeroFS

TIMEOUT = 3.0  # -o timeout: the deadline of one request through the mount, seconds








@pytest.fixture
def mount(servers: OmeroFS, tmp_path: Path) -> Iterator[Mount]:
    options = {
        "timeout": str(TIMEOUT),
        "call_timeout": "2",
        "cache_dir": str(tmp_path / "cache"),
    }
    with mounted(servers.url, tmp_path / "mnt", options) as running:
        # The mount is ready before its monitor is: events of changes made in between are
        # lost (the server cannot replay), so wait for the driver's "monitor ... on" line.
        within(10.0, lambda: "OMERO.fs monitor " in running.output())
        yield running


def within(seconds: float, check: Callable[[], bool]) -> float:
    """Poll ``check`` every 20 ms; return how long it took to become true, or fail."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not true within {seconds}s")
        time.sleep(0.02)
    return time.monotonic() - started


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def test_listing_and_sha256_match_source(mount: Mount, tree: tuple[Path, dict[str, str]]) -> None:
    root, digests = tree

    def walk(top: Path) -> dict[str, tuple[bool, int]]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                out[str(path.relative_to(top))] = (path.is_dir(), path.stat().st_size)
        return out

    source = {k: v for k, v in walk(root).items() if not k.startswith("live")}
    assert {k: (d, 0 if d else s) for k, (d, s) in walk(mount.path).items()} == {
        k: (d, 0 if d else s) for k, (d, s) in source.items()
    }
    assert (mount.path / UNICODE_DIR / UNICODE_FILE).read_text() == "Grüße, 世界\n"
    for rel, digest in digests.items():
        assert sha256_of(mount.path / rel) == digest, rel
    st = os.stat(mount.path / "data" / "odd.bin")
    assert st.st_mode & 0o777 == 0o444


def test_sha1_xattr(mount: Mount, tree: tuple[Path, dict[str, str]]) -> None:
    source = (tree[0] / "data" / "odd.bin").read_bytes()
    value = os.getxattr(mount.path / "data" / "odd.bin", "user.assetfs.sha1")
    assert value.decode() == hashlib.sha1(source).hexdigest()


def test_server_side_changes_visible_within_1s(mount: Mount, live: Path) -> None:
    view = mount.path / "live"
    assert os.listdir(view) == []  # cached (long kernel timeouts with push events)
    (live / "new.txt").write_bytes(b"hello")
    within(1.0, lambda: "new.txt" in os.listdir(view))
    assert (view / "new.txt").read_bytes() == b"hello"
    with open(live / "new.txt", "ab") as f:
        f.write(b" world")
    within(1.0, lambda: (view / "new.txt").read_bytes() == b"hello world")
    with open(live / "new.txt", "r+b") as f:  # same size, same 128 s mtime bucket
        f.write(b"HELLO")
    within(1.0, lambda: (view / "new.txt").read_bytes() == b"HELLO world")
    os.rename(live / "new.txt", live / "moved ✓.txt")
    within(1.0, lambda: sorted(os.listdir(view)) == ["moved ✓.txt"])
    (live / "moved ✓.txt").unlink()
    within(1.0, lambda: os.listdir(view) == [])
    (live / "sub").mkdir()
    (live / "sub" / "f.bin").write_bytes(b"x" * 10)
    within(1.0, lambda: (view / "sub" / "f.bin").exists())


def test_writes_get_erofs(mount: Mount) -> None:
    root = mount.path
    attempts: list[Callable[[], object]] = [
        lambda: os.open(root / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.open(root / "data" / "one.bin", os.O_RDWR),
        lambda: os.mkdir(root / "newdir"),
        lambda: os.unlink(root / "data" / "one.bin"),
        lambda: os.rmdir(root / "a" / "empty-folder"),
        lambda: os.rename(root / "data" / "one.bin", root / "data" / "two.bin"),
        lambda: os.truncate(root / "data" / "one.bin", 0),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno in (errno.EROFS, errno.EACCES), attempt
    assert (root / "data" / "one.bin").stat().st_size == 1


def test_fileserver_stopped_mid_read_eio_then_recovers(
    mount: Mount, servers: OmeroFS, tree: tuple[Path, dict[str, str]]
) -> None:
    big = mount.path / "data" / "big-64MiB.bin"
    source = tree[0] / "data" / "big-64MiB.bin"
    with open(big, "rb", buffering=0) as f:
        assert f.read(MiB) == source.read_bytes()[:MiB]
        servers.fs.stop()
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            while f.read(MiB):  # what is cached (read-ahead) may still come back
                pass
        elapsed = time.monotonic() - started
    assert info.value.errno in (errno.EIO, errno.ETIMEDOUT)
    assert elapsed <= TIMEOUT + 2, elapsed
    # Cached data stays readable while the server is down.
    with open(big, "rb") as f:
        assert f.read(4096) == source.read_bytes()[:4096]
    servers.fs.start()
    assert sha256_of(big) == tree[1]["data/big-64MiB.bin"]


# --- the fetch process -------------------------------------------------------------------
def fetch_process(mount: Mount) -> int:
    """The pid of the daemon's OMERO.fs fetch process (its child running omerofs.fetch_process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == mount.proc.pid and b"assetfs.drivers.omerofs.fetch_process" in cmdline:
            return int(entry.name)
    raise AssertionError("the daemon has no fetch process")


def gone(pid: int) -> bool:
    """True once process ``pid`` has exited (a zombie counts: it runs no more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_fetch_process_killed_mid_read_is_replaced(
    mount: Mount, tree: tuple[Path, dict[str, str]]
) -> None:
    big = mount.path / "data" / "big-64MiB.bin"
    first = fetch_process(mount)
    digest = hashlib.sha256()
    slowest = 0.0
    with open(big, "rb", buffering=0) as f:
        digest.update(f.read(MiB))
        os.kill(first, signal.SIGKILL)
        while True:
            started = time.monotonic()
            block = f.read(MiB)
            slowest = max(slowest, time.monotonic() - started)
            if not block:
                break
            digest.update(block)
    assert digest.hexdigest() == tree[1]["data/big-64MiB.bin"]
    assert slowest <= TIMEOUT, slowest
    assert gone(first)
    assert fetch_process(mount) != first


def test_fetch_process_stuck_eio_in_time_then_replaced(
    servers: OmeroFS, tmp_path: Path, tree: tuple[Path, dict[str, str]]
) -> None:
    # call_timeout 2 + connect_timeout 1 + 2: a process that owes replies and says nothing
    # for 5 s is killed and replaced.
    options = {"timeout": str(TIMEOUT), "call_timeout": "2", "connect_timeout": "1",
               "monitor": "off", "cache_dir": str(tmp_path / "cache")}
    with mounted(servers.url, tmp_path / "mnt", options) as mount:
        big = mount.path / "data" / "big-64MiB.bin"
        stuck = fetch_process(mount)
        os.kill(stuck, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(OSError) as info, open(big, "rb", buffering=0) as f:
                f.seek(32 * MiB)
                f.read(MiB)
            elapsed = time.monotonic() - started
            assert info.value.errno in (errno.EIO, errno.ETIMEDOUT)
            assert elapsed <= TIMEOUT + 2, elapsed
            within(10.0, lambda: gone(stuck))
            assert "sent nothing" in mount.output()
            assert sha256_of(big) == tree[1]["data/big-64MiB.bin"]
        finally:
            if not gone(stuck):
                os.kill(stuck, signal.SIGKILL)


def test_fetch_process_ends_with_the_daemon(servers: OmeroFS, tmp_path: Path) -> None:
    options = {"monitor": "off", "cache_dir": str(tmp_path / "cache")}
    with mounted(servers.url, tmp_path / "mnt", options) as mount:
        unmounted = fetch_process(mount)
    within(5.0, lambda: gone(unmounted))
    with mounted(servers.url, tmp_path / "mnt", options) as mount:
        orphan = fetch_process(mount)
        mount.kill()
        within(2.0, lambda: gone(orphan))
