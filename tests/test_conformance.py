"""The driver contract (assetfs/drivers/base.py, docs/drivers.md), checked at the driver level
against every driver with a test peer: memory://, Nucleus on omni.client's ``file:``
provider and on ``omniverse://`` through the Storage API peer, OMERO.fs on the real
servers, vSphere on vcsim (test ids carry the driver's name).

What a store cannot do is declared once per driver in its :class:`Target` (read-only, no
folders inside the scratch folder, no rename of files); the suite then checks that the
driver refuses those with the project's error instead of skipping them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from assetfs import errors
from assetfs.drivers.base import ChangeEvent, ChangeKind, Driver, Kind, ReadMode, join

Put = Callable[[str, bytes], Awaitable[None]]
Delete = Callable[[str], Awaitable[None]]
NAMES = ("plain.txt", "with space.txt", "ünïcödé ✓.txt")


@dataclass
class Target:
    """One driver connected to its peer.

    ``scratch`` is a driver path of a folder the suite fills (empty at the start); ``put``
    and ``delete`` change the store behind the driver's back, as another client would
    (``put`` makes missing parent folders). ``writable``, ``folders`` (mkdir/rmdir inside
    ``scratch``) and ``rename_files`` declare what the store can do; ``event_latency`` is
    the seconds within which the driver promises to report a change.
    """

    driver: Driver
    scratch: str
    put: Put
    delete: Delete
    writable: bool
    folders: bool
    rename_files: bool
    event_latency: float
    broken: Callable[[], Driver]
    """A driver of a store that is not there (no server, or no such root)."""


def local_changes(root: Path, base: str = "/") -> tuple[Put, Delete]:
    """put/delete for a store served from local folder ``root`` (driver path ``base`` is
    ``root`` itself)."""

    def local(path: str) -> Path:
        return root / os.path.relpath(path, base)

    async def put(path: str, data: bytes) -> None:
        local(path).parent.mkdir(parents=True, exist_ok=True)
        local(path).write_bytes(data)

    async def delete(path: str) -> None:
        local(path).unlink()

    return put, delete


@contextlib.asynccontextmanager
async def memory_target(tmp_path: Path) -> AsyncIterator[Target]:
    from assetfs.drivers.memory import STORES, MemoryDriver, free_name

    name = free_name()
    driver = MemoryDriver(f"memory://{name}/", {})
    other = MemoryDriver(f"memory://{name}/", {})
    await driver.connect()
    await driver.mkdir("/scratch")

    async def put(path: str, data: bytes) -> None:
        source = tmp_path / "put"
        source.write_bytes(data)
        parts = path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            with contextlib.suppress(errors.AlreadyExists):
                await other.mkdir("/" + "/".join(parts[:depth]))
        await other.write(path, str(source), len(data))

    try:
        yield Target(driver, "/scratch", put, lambda p: other.remove(p, Kind.FILE),
                     writable=True, folders=True, rename_files=True, event_latency=1.0,
                     broken=lambda: MemoryDriver(f"memory://{name}/no/such/root", {}))
    finally:
        await driver.close()
        STORES.pop(name, None)


@contextlib.asynccontextmanager
async def nucleus_target(tmp_path: Path) -> AsyncIterator[Target]:
    from assetfs.drivers.nucleus import NucleusDriver

    store = tmp_path / "store"
    (store / "scratch").mkdir(parents=True)
    driver = NucleusDriver(f"file://{store}", {})
    await driver.connect()
    put, delete = local_changes(store)
    try:
        # omni.client's file: provider reports deletions by polling, ~10 s (docs/backends)
        yield Target(driver, "/scratch", put, delete, writable=True, folders=True,
                     rename_files=True, event_latency=15.0,
                     broken=lambda: NucleusDriver(f"file://{tmp_path}/no/such/root", {}))
    finally:
        await driver.close()


@contextlib.asynccontextmanager
async def omniverse_target(tmp_path: Path) -> AsyncIterator[Target]:
    from nucleus_fixtures import free_port, nucleus_peer

    from assetfs.drivers.nucleus import NucleusDriver

    store = tmp_path / "store"
    (store / "scratch").mkdir(parents=True)
    with nucleus_peer(store, tmp_path / "peer") as peer:
        driver = NucleusDriver(peer.url, {"discovery": peer.discovery})
        await driver.connect()
        put, delete = local_changes(store)
        nobody = f"http://127.0.0.1:{free_port()}"
        try:
            yield Target(driver, "/scratch", put, delete, writable=True, folders=True,
                         rename_files=True, event_latency=2.0,
                         broken=lambda: NucleusDriver(peer.url, {"discovery": nobody}))
        finally:
            await driver.close()


@contextlib.asynccontextmanager
async def omerofs_target(tmp_path: Path) -> AsyncIterator[Target]:
    from omerofs_peer import free_port_pair, omerofs_servers

    from assetfs.drivers.omerofs import OmeroFSDriver

    tree = tmp_path / "tree"
    (tree / "scratch").mkdir(parents=True)
    with omerofs_servers(tree, tmp_path / "servers") as servers:
        driver = OmeroFSDriver(servers.url, {"call_timeout": "10", "connect_timeout": "2"})
        await driver.connect()
        put, delete = local_changes(tree)
        port = free_port_pair()
        try:
            yield Target(driver, "/scratch", put, delete, writable=False, folders=False,
                         rename_files=False, event_latency=5.0,
                         broken=lambda: OmeroFSDriver(
                             f"omerofs://127.0.0.1:{port}/tmp",
                             {"call_timeout": "1", "connect_timeout": "1"}))
        finally:
            await driver.close()


@contextlib.asynccontextmanager
async def vsphere_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                         ) -> AsyncIterator[Target]:
    from peers.vcsim_peer import PASSWORD, USER, running

    from assetfs.drivers.vsphere import PASSWORD_ENV, VsphereDriver

    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with running() as sim:
        url = f"vsphere://{USER}@{sim.host}/"
        options = {"http": "", "poll_interval": "0.5"}
        driver, other = VsphereDriver(url, options), VsphereDriver(url, options)
        sim.create_item(sim.create_library("lib"), "scratch")
        await driver.connect()
        await other.connect()

        async def put(path: str, data: bytes) -> None:
            source = tmp_path / "put"
            source.write_bytes(data)
            await other.write(path, str(source), len(data))

        try:
            yield Target(driver, "/lib/scratch", put, lambda p: other.remove(p, Kind.FILE),
                         writable=True, folders=False, rename_files=False, event_latency=5.0,
                         broken=lambda: VsphereDriver(f"vsphere://{USER}@127.0.0.1:9/",
                                                      {"http": "", "call_timeout": "1"}))
        finally:
            await other.close()
            await driver.close()


@pytest.fixture(params=["memory", "nucleus", "omniverse",
                        pytest.param("omerofs", marks=pytest.mark.omero),
                        pytest.param("vsphere", marks=pytest.mark.vsphere)])
async def target(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Target]:
    make = {
        "memory": lambda: memory_target(tmp_path),
        "nucleus": lambda: nucleus_target(tmp_path),
        "omniverse": lambda: omniverse_target(tmp_path),
        "omerofs": lambda: omerofs_target(tmp_path),
        "vsphere": lambda: vsphere_target(tmp_path, monkeypatch),
    }[request.param]
    async with make() as one:
        yield one


async def content(driver: Driver, path: str, size: int) -> bytes:
    """The whole content of ``path`` through the driver's read mode."""
    mode = driver.capabilities.read_mode
    if mode is ReadMode.LOCAL:
        return Path(await driver.local_path(path)).read_bytes()
    if mode is ReadMode.RANGED:
        return await driver.read(path, 0, size + 1)
    chunks = [chunk async for chunk in driver.open_stream(path)]
    return b"".join(chunks)


async def upload(target: Target, path: str, data: bytes, tmp_path: Path) -> None:
    source = tmp_path / "upload"
    source.write_bytes(data)
    await target.driver.write(path, str(source), len(data))


# --- metadata ------------------------------------------------------------------------------
async def test_stat_and_list_shapes(target: Target) -> None:
    files = {"empty": b"", "one": b"x", "big.bin": os.urandom((1 << 20) + 17)}
    for name, data in files.items():
        await target.put(join(target.scratch, name), data)
    driver = target.driver
    listed = {e.name: e for e in await driver.list(target.scratch)}
    assert set(listed) == set(files)
    now = time.time_ns()
    for name, data in files.items():
        entry = listed[name]
        assert entry.kind is Kind.FILE and entry.size == len(data)
        assert entry.version, f"{name} has no version"
        assert abs(entry.mtime_ns - now) < 86400 * 10**9, "mtime_ns is not ns since the epoch"
        assert entry.mode & 0o444 and not entry.mode & ~0o7777
        stat = await driver.stat(join(target.scratch, name))
        assert (stat.name, stat.kind, stat.size, stat.version) == (
            entry.name, entry.kind, entry.size, entry.version)
    folder = await driver.stat(target.scratch)
    assert folder.is_dir and (await driver.stat("/")).is_dir


async def test_missing_paths_and_wrong_kinds(target: Target) -> None:
    driver = target.driver
    with pytest.raises(errors.NotFound):
        await driver.stat(join(target.scratch, "missing"))
    with pytest.raises(errors.NotFound):
        await driver.list(join(target.scratch, "missing"))
    await target.put(join(target.scratch, "file"), b"data")
    with pytest.raises((errors.NotADirectory, errors.NotFound)):
        await driver.list(join(target.scratch, "file"))


async def test_names_with_spaces_and_non_ascii(target: Target) -> None:
    for name in NAMES:
        await target.put(join(target.scratch, name), name.encode())
    assert sorted(e.name for e in await target.driver.list(target.scratch)) == sorted(NAMES)
    for name in NAMES:
        path = join(target.scratch, name)
        entry = await target.driver.stat(path)
        assert await content(target.driver, path, entry.size) == name.encode()


# --- data ------------------------------------------------------------------------------------
async def test_reads_at_and_past_eof(target: Target, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = join(target.scratch, "ranges.bin")
    await target.put(path, data)
    driver = target.driver
    assert await content(driver, path, len(data)) == data
    if driver.capabilities.read_mode is not ReadMode.RANGED:
        with contextlib.suppress(errors.NotSupported):  # ranges it does not claim: correct
            assert await driver.read(path, 1000, 10) == data[1000:1010]
        return
    assert await driver.read(path, 1000, 10) == data[1000:1010]
    assert await driver.read(path, len(data) - 5, 100) == data[-5:]  # spans EOF: short
    assert await driver.read(path, len(data), 100) == b""
    assert await driver.read(path, len(data) + 4096, 100) == b""
    fd = os.open(tmp_path / "into", os.O_RDWR | os.O_CREAT)
    try:
        assert await driver.read_into(path, 4096, 8192, fd) == 8192
        assert os.pread(fd, 8192, 4096) == data[4096:4096 + 8192]
    finally:
        os.close(fd)


async def test_write_and_replace(target: Target, tmp_path: Path) -> None:
    driver = target.driver
    path = join(target.scratch, "written.bin")
    first, second = os.urandom(70_000), os.urandom(50_000)
    if not target.writable:
        assert not driver.capabilities.writable
        with pytest.raises(errors.ReadOnly):
            await upload(target, path, first, tmp_path)
        with pytest.raises(errors.ReadOnly):
            await driver.mkdir(join(target.scratch, "folder"))
        return
    await upload(target, path, first, tmp_path)
    one = await driver.stat(path)
    assert one.size == len(first) and await content(driver, path, one.size) == first
    await upload(target, path, second, tmp_path)
    two = await driver.stat(path)
    assert two.size == len(second) and two.version != one.version
    assert await content(driver, path, two.size) == second
    assert [e.name for e in await driver.list(target.scratch)] == ["written.bin"]
    await driver.remove(path, Kind.FILE)
    with pytest.raises(errors.NotFound):
        await driver.stat(path)
    with pytest.raises(errors.NotFound):
        await driver.remove(path, Kind.FILE)


async def test_folders(target: Target) -> None:
    driver = target.driver
    folder = join(target.scratch, "sub")
    if not target.folders:
        with pytest.raises(errors.AssetFSError):
            driver.check_create(folder, Kind.DIR)
            await driver.mkdir(folder)
        return
    entry = await driver.mkdir(folder)
    assert entry.is_dir and (await driver.stat(folder)).is_dir
    with pytest.raises(errors.AlreadyExists):
        await driver.mkdir(folder)
    with pytest.raises(errors.NotFound):
        await driver.mkdir(join(target.scratch, "no/such/parent"))
    await target.put(join(folder, "child"), b"c")
    with pytest.raises(errors.DirectoryNotEmpty):
        await driver.remove(folder, Kind.DIR)
    await driver.remove(join(folder, "child"), Kind.FILE)
    await driver.remove(folder, Kind.DIR)
    with pytest.raises(errors.NotFound):
        await driver.stat(folder)


async def test_rename_moves_and_replaces_files(target: Target, tmp_path: Path) -> None:
    driver = target.driver
    old, new = join(target.scratch, "old.txt"), join(target.scratch, "new name ✓.txt")
    await target.put(old, b"old content")
    if not (target.writable and target.rename_files):
        with pytest.raises((errors.NotSupported, errors.ReadOnly)):
            await driver.rename(old, new)
        assert (await driver.stat(old)).size == len(b"old content")
        return
    await driver.rename(old, new)
    with pytest.raises(errors.NotFound):
        await driver.stat(old)
    moved = await driver.stat(new)
    assert await content(driver, new, moved.size) == b"old content"
    await target.put(old, b"replacement")
    await driver.rename(old, new)
    replaced = await driver.stat(new)
    assert await content(driver, new, replaced.size) == b"replacement"
    assert [e.name for e in await driver.list(target.scratch)] == ["new name ✓.txt"]


# --- events ------------------------------------------------------------------------------------
async def test_events_for_create_update_and_delete(target: Target) -> None:
    """A change made by another client is reported within the driver's promised latency
    (push events, or the base class's polling)."""
    driver = target.driver
    path = join(target.scratch, "evented.txt")
    send, receive = trio.open_memory_channel[ChangeEvent](1000)
    seen: list[ChangeEvent] = []

    def reported(event: ChangeEvent, kinds: set[ChangeKind]) -> bool:
        if event.kind is ChangeKind.LISTED:  # a subscription's first listing shows it
            names = {e.name for e in event.listing}
            return event.path == target.scratch and (
                ("evented.txt" in names) == (ChangeKind.DELETED not in kinds))
        return event.path == path and event.kind in kinds

    async def expect(kinds: set[ChangeKind]) -> None:
        with trio.move_on_after(target.event_latency):
            while not any(reported(e, kinds) for e in seen):
                seen.append(await receive.receive())
        assert any(reported(e, kinds) for e in seen), (kinds, seen)
        seen.clear()

    async with trio.open_nursery() as nursery:
        driver.watch(target.scratch)
        nursery.start_soon(driver.run_events, send)
        with trio.fail_after(30):
            await driver.events_ready.wait()
        await driver.list(target.scratch)
        if not driver.capabilities.push_events:
            await trio.sleep(driver.poll_interval * 1.5)  # the first poll's baseline
        await target.put(path, b"one")
        await expect({ChangeKind.CREATED, ChangeKind.UPDATED, ChangeKind.RESYNC})
        await target.put(path, b"second version")
        await expect({ChangeKind.UPDATED, ChangeKind.CREATED})
        await target.delete(path)
        await expect({ChangeKind.DELETED})
        nursery.cancel_scope.cancel()


# --- errors --------------------------------------------------------------------------------------
async def test_a_store_that_is_not_there_gives_a_project_error(target: Target) -> None:
    """Wire errors come out as the project's types (assetfs/errors.py), never as a library's
    own exception."""
    broken = target.broken()
    with trio.fail_after(30), pytest.raises(errors.AssetFSError):
        await broken.connect()
    await broken.close()


def test_every_driver_is_in_this_suite() -> None:
    """A driver registered without a test peer here would escape the contract."""
    from assetfs.drivers import available

    covered = {"memory", "file", "omni", "omniverse", "omerofs", "vsphere"}
    pending = {"nodeodx", "nodeodxs", "resonite"}
    assert set(available()) - pending <= covered

