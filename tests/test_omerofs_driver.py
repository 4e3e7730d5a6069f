"""OMERO.fs driver against the real fsServerFS / fsServerMS (omero-dropbox) on 127.0.0.1.

No mocks: every test talks Ice to the stock servers, started per test by pid on a tree built
once per module (files from 0 B to 64 MiB, nested and unicode names).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

pytest.importorskip("Ice", reason="needs the omero extra: make omero")
pytest.importorskip("fsServerFS", reason="needs omero-dropbox: make omero")

from omerofs_fixtures import live, servers, tree  # noqa: F401 - pytest fixtures
from omerofs_peer import UNICODE_DIR, UNICODE_FILE, MiB, OmeroFS

from assetfs import errors
from assetfs.drivers.base import ChangeEvent, ChangeKind, Kind
from assetfs.drivers.omerofs import OmeroFSDriver

TIMEOUT = 2.0  # the driver's Ice invocation timeout in these tests, seconds






@pytest.fixture
async def driver(servers: OmeroFS) -> AsyncIterator[OmeroFSDriver]:
    drv = OmeroFSDriver(servers.url, {"call_timeout": str(TIMEOUT), "connect_timeout": "1"})
    await drv.connect()
    try:
        yield drv
    finally:
        await drv.close()




async def read_all(drv: OmeroFSDriver, path: str, chunk: int = 4 * MiB) -> bytes:
    out, offset = [], 0
    while True:
        data = await drv.read(path, offset, chunk)
        if not data:
            return b"".join(out)
        out.append(data)
        offset += len(data)


# --- URL and options ---------------------------------------------------------------------
def test_url_forms() -> None:
    drv = OmeroFSDriver("omerofs://files.example:4064/data/x%20y", {})
    assert drv.root == "/data/x y"
    assert drv._fs_proxy == "FileServer:tcp -h files.example -p 4064"
    assert drv._ms_proxy == "MonitorServer:tcp -h files.example -p 4065"
    assert OmeroFSDriver("omerofs://h:1/d", {"monitor": "7000"})._ms_proxy.endswith("-p 7000")
    assert OmeroFSDriver("omerofs://h:1/d", {"monitor": "m:7"})._ms_proxy == (
        "MonitorServer:tcp -h m -p 7"
    )
    grid = OmeroFSDriver(
        "omerofs:///data",
        {"fileserver": "FileServer@FSAdapter", "monitor": "MonitorServer@MSAdapter"},
    )
    assert (grid._fs_proxy, grid._ms_proxy) == ("FileServer@FSAdapter", "MonitorServer@MSAdapter")
    assert not OmeroFSDriver("omerofs://h:1/d", {"monitor": "off"}).events_enabled
    with pytest.raises(errors.BadURL):
        OmeroFSDriver("omerofs://h/data", {})  # no port, no proxy
    with pytest.raises(errors.BadURL):
        OmeroFSDriver("omerofs:///data", {"fileserver": "FileServer@A"})  # no monitor


def test_translate_reason_errno() -> None:
    import omero  # type: ignore[import-not-found]

    from assetfs.drivers.omerofs import translate

    def err(reason: str) -> errors.AssetFSError:
        return translate(omero.OmeroFSError(reason=reason), "omerofs://h:1/x")

    assert isinstance(err("Failed to get  /x stats : [Errno 2] No such file"), errors.NotFound)
    assert isinstance(
        err("Failed to read data from  /x : [Errno 13] Permission denied"), errors.PermissionDenied
    )
    assert isinstance(
        err("Unable to get directory of  /x : [Errno 20] Not a directory"), errors.NotADirectory
    )
    assert type(err("File ID  x not on this FSServer")) is errors.AssetFSError


# --- metadata and data ---------------------------------------------------------------------
async def test_listing_matches_source(
    driver: OmeroFSDriver, tree: tuple[Path, dict[str, str]]
) -> None:
    root = tree[0]
    seen: dict[str, tuple[Kind, int]] = {}

    async def walk(path: str) -> None:
        for entry in await driver.list(path):
            child = path.rstrip("/") + "/" + entry.name
            seen[child] = (entry.kind, entry.size)
            if entry.is_dir:
                assert entry.mode == 0o555
                await walk(child)
            else:
                assert entry.mode == 0o444 and entry.version

    await walk("/")
    expected: dict[str, tuple[Kind, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root) if dirpath != str(root) else ""
        for name in dirnames:
            expected[f"{rel}/{name}"] = (Kind.DIR, 0)
        for name in filenames:
            expected[f"{rel}/{name}"] = (Kind.FILE, os.path.getsize(os.path.join(dirpath, name)))
    assert seen == expected
    assert f"/{UNICODE_DIR}/{UNICODE_FILE}" in seen
    unicode_entry = await driver.stat(f"/{UNICODE_DIR}/{UNICODE_FILE}")
    assert unicode_entry.name == UNICODE_FILE and unicode_entry.kind is Kind.FILE


async def test_read_sha256_all_sizes(
    driver: OmeroFSDriver, tree: tuple[Path, dict[str, str]]
) -> None:
    for rel, digest in tree[1].items():
        data = await read_all(driver, "/" + rel)
        assert hashlib.sha256(data).hexdigest() == digest, rel


async def test_ranged_reads_and_eof(
    driver: OmeroFSDriver, tree: tuple[Path, dict[str, str]]
) -> None:
    source = (tree[0] / "data" / "odd.bin").read_bytes()
    for offset, size in [(0, 1), (MiB - 3, 10), (MiB, MiB), (12345, 2 * MiB + 7), (0, 10 * MiB)]:
        assert await driver.read("/data/odd.bin", offset, size) == source[offset : offset + size]
    assert await driver.read("/data/odd.bin", len(source), 100) == b""
    assert await driver.read("/data/odd.bin", len(source) + MiB, 100) == b""
    assert await driver.read("/data/empty.bin", 0, MiB) == b""


async def test_read_into_local_file(
    driver: OmeroFSDriver, tree: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    for rel, digest in tree[1].items():
        target = tmp_path / "copy.bin"
        with open(target, "wb") as f:
            offset = 0
            while written := await driver.read_into("/" + rel, offset, 3 * MiB, f.fileno()):
                offset += written
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest, rel
    source = (tree[0] / "data" / "odd.bin").read_bytes()
    with open(tmp_path / "part.bin", "w+b") as f:
        assert await driver.read_into("/data/odd.bin", 12345, 2 * MiB + 7, f.fileno()) == (
            2 * MiB + 7
        )
        assert await driver.read_into("/data/odd.bin", len(source) - 5, MiB, f.fileno()) == 5
        assert await driver.read_into("/data/odd.bin", len(source), 100, f.fileno()) == 0
        assert os.pread(f.fileno(), 2 * MiB + 7, 12345) == source[12345 : 12345 + 2 * MiB + 7]
        with pytest.raises(errors.NotFound):
            await driver.read_into("/nope.bin", 0, 10, f.fileno())
        with pytest.raises(errors.IsADirectory):
            await driver.read_into("/data", 0, 10, f.fileno())


async def test_errors_are_translated(driver: OmeroFSDriver) -> None:
    with pytest.raises(errors.NotFound):
        await driver.stat("/no/such/file")
    with pytest.raises(errors.NotFound):
        await driver.list("/nope")
    with pytest.raises(errors.NotFound):
        await driver.read("/nope.bin", 0, 10)
    with pytest.raises(errors.NotADirectory):
        await driver.list("/data/one.bin")
    with pytest.raises(errors.IsADirectory):
        await driver.read("/data", 0, 10)
    with pytest.raises(errors.ReadOnly):
        await driver.mkdir("/new")
    assert not driver.capabilities.writable and driver.capabilities.push_events


async def test_sha1_xattr(driver: OmeroFSDriver, tree: tuple[Path, dict[str, str]]) -> None:
    source = (tree[0] / "data" / "odd.bin").read_bytes()
    assert driver.lazy_xattrs == ("sha1",)
    assert await driver.xattr("/data/odd.bin", "sha1") == hashlib.sha1(source).hexdigest().encode()
    assert await driver.xattr("/data", "sha1") is None
    assert await driver.xattr("/data/odd.bin", "nope") is None


async def test_connect_fails_fast_without_server(tmp_path: Path) -> None:
    from omerofs_peer import free_port_pair

    drv = OmeroFSDriver(f"omerofs://127.0.0.1:{free_port_pair()}/tmp", {"call_timeout": "1"})
    started = time.monotonic()
    with pytest.raises(errors.Unavailable):
        await drv.connect()
    await drv.close()
    assert time.monotonic() - started < 3


# --- events --------------------------------------------------------------------------------
class Events:
    """Collects a driver's events; ``expect`` waits (bounded) for one and times it."""

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[ChangeEvent](1000)
        self.seen: list[ChangeEvent] = []

    async def expect(self, kind: ChangeKind, path: str, within: float = 1.0) -> float:
        started = time.monotonic()
        with trio.move_on_after(within):
            while True:
                if any(e.kind is kind and e.path == path for e in self.seen):
                    return time.monotonic() - started
                self.seen.append(await self.recv.receive())
        raise AssertionError(f"no {kind.value} {path} within {within}s; saw {self.seen}")


async def started_events(nursery: trio.Nursery, drv: OmeroFSDriver, generation: int = 1) -> Events:
    events = Events()
    nursery.start_soon(drv.run_events, events.send)
    with trio.fail_after(10):
        while drv.monitor_generation < generation:
            await trio.sleep(0.02)
    return events


async def test_server_side_changes_arrive_within_1s(driver: OmeroFSDriver, live: Path) -> None:
    async with trio.open_nursery() as nursery:
        events = await started_events(nursery, driver)
        (live / "new.txt").write_bytes(b"hello")
        await events.expect(ChangeKind.CREATED, "/live/new.txt")
        with open(live / "new.txt", "ab") as f:
            f.write(b" world")
        await events.expect(ChangeKind.UPDATED, "/live/new.txt")
        os.rename(live / "new.txt", live / "renamed ✓.txt")
        await events.expect(ChangeKind.DELETED, "/live/new.txt")
        await events.expect(ChangeKind.CREATED, "/live/renamed ✓.txt")
        (live / "sub").mkdir()
        await events.expect(ChangeKind.CREATED, "/live/sub")
        (live / "sub" / "inner.bin").write_bytes(b"x")  # Follow mode: new folders are watched
        await events.expect(ChangeKind.CREATED, "/live/sub/inner.bin")
        (live / "renamed ✓.txt").unlink()
        await events.expect(ChangeKind.DELETED, "/live/renamed ✓.txt")
        # A pre-existing subfolder (the server's shared watch registry quirk).
        (live.parent / "a" / "b" / "event.txt").write_bytes(b"1")
        try:
            await events.expect(ChangeKind.CREATED, "/a/b/event.txt")
        finally:
            (live.parent / "a" / "b" / "event.txt").unlink()
        nursery.cancel_scope.cancel()


async def test_same_size_rewrite_changes_version(driver: OmeroFSDriver, live: Path) -> None:
    """mtimes are 128 s coarse: the Modify event, not the mtime, moves the version on."""
    target = live / "same.bin"
    target.write_bytes(b"a" * 100)
    async with trio.open_nursery() as nursery:
        events = await started_events(nursery, driver)
        before = await driver.stat("/live/same.bin")
        with open(target, "r+b") as f:
            f.write(b"b" * 100)
        await events.expect(ChangeKind.UPDATED, "/live/same.bin")
        after = await driver.stat("/live/same.bin")
        assert after.size == before.size and after.version != before.version
        nursery.cancel_scope.cancel()


async def test_second_monitor_on_same_server_falls_back_to_polling(
    servers: OmeroFS, live: Path
) -> None:
    """The real server shares one watch registry per process: a monitor created after another
    one on the same tree misses events in the subfolders the first one watched. The safety-net
    poll of watched folders still reports the change (here within poll_interval=0.3 s)."""
    (live / "pre").mkdir()
    for round_ in range(2):
        drv = OmeroFSDriver(servers.url, {"call_timeout": str(TIMEOUT), "poll_interval": "0.3"})
        await drv.connect()
        drv.watch("/live/pre")
        try:
            async with trio.open_nursery() as nursery:
                events = await started_events(nursery, drv)
                await trio.sleep(0.5)  # the poll's first listing
                (live / "pre" / f"f{round_}").write_bytes(b"x")
                await events.expect(ChangeKind.CREATED, f"/live/pre/f{round_}", within=2)
                nursery.cancel_scope.cancel()
        finally:
            await drv.close()


async def test_monitor_server_restart_resyncs(
    driver: OmeroFSDriver, servers: OmeroFS, live: Path
) -> None:
    driver.monitor_check = 0.2
    async with trio.open_nursery() as nursery:
        events = await started_events(nursery, driver)
        before = await driver.stat("/data/one.bin")
        first = driver.monitor_id
        await trio.to_thread.run_sync(servers.ms.stop)
        await trio.to_thread.run_sync(servers.ms.start)
        await events.expect(ChangeKind.RESYNC, "/", within=10)
        assert driver.monitor_id and driver.monitor_id != first
        # Events were lost while it was down: every cached version must be re-validated.
        assert (await driver.stat("/data/one.bin")).version != before.version
        (live / "after.txt").write_bytes(b"x")
        await events.expect(ChangeKind.CREATED, "/live/after.txt")
        nursery.cancel_scope.cancel()


# --- faults --------------------------------------------------------------------------------
async def test_fileserver_stopped_mid_read_then_restarted(
    driver: OmeroFSDriver, servers: OmeroFS, tree: tuple[Path, dict[str, str]]
) -> None:
    source = tree[0] / "data" / "big-64MiB.bin"
    assert await driver.read("/data/big-64MiB.bin", 0, MiB) == source.read_bytes()[:MiB]

    async def keep_reading() -> float:
        offset = MiB
        while True:
            try:
                data = await driver.read("/data/big-64MiB.bin", offset % (64 * MiB), 4 * MiB)
            except errors.Unavailable:
                return time.monotonic()
            offset += len(data)

    async with trio.open_nursery() as nursery:
        failed_at: list[float] = []

        async def reader() -> None:
            failed_at.append(await keep_reading())

        nursery.start_soon(reader)
        await trio.sleep(0.3)
        stopped_at = time.monotonic()
        await trio.to_thread.run_sync(servers.fs.stop)
        with trio.fail_after(TIMEOUT + 2):
            while not failed_at:
                await trio.sleep(0.01)
    assert failed_at[0] - stopped_at <= TIMEOUT + 1
    with pytest.raises(errors.Unavailable):
        await driver.stat("/data/one.bin")
    await trio.to_thread.run_sync(servers.fs.start)
    data = await driver.read("/data/big-64MiB.bin", 5 * MiB, MiB)
    with open(source, "rb") as f:
        f.seek(5 * MiB)
        assert data == f.read(MiB)


async def test_hung_fileserver_times_out(driver: OmeroFSDriver, servers: OmeroFS) -> None:
    await driver.stat("/data/one.bin")
    servers.fs.pause()
    try:
        started = time.monotonic()
        with pytest.raises(errors.TimedOut):
            await driver.read("/data/odd.bin", 0, MiB)
        assert time.monotonic() - started < TIMEOUT + 1
    finally:
        servers.fs.resume()
    assert (await driver.stat("/data/one.bin")).size == 1
