"""The driver contract (assetfs/drivers/base.py, docs/drivers.md), checked at the driver level
against every driver with a test peer: memory://, Nucleus on omni.client's ``file:``
provider and on ``omniverse://`` through the Storage API peer, OMERO.fs on the real servers,
vSphere on vcsim, the Resonite inventory on its gRPC peer, NodeODX on its HTTP peer (test ids
carry the driver's name).

What a store cannot do is declared once per driver in its :class:`Target` (read-only, no
upload of content, no folders inside the scratch folder, no rename of files); the suite then
checks that the driver refuses those with the project's error instead of skipping them. A
store may name a file itself (a Resonite item is its name plus its image type's extension):
``Target.put`` returns the driver path of the file it made, and the tests use that path.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from PIL import Image

from assetfs import errors
from assetfs.drivers.base import ChangeEvent, ChangeKind, Driver, Kind, ReadMode, join, split

Put = Callable[[str, bytes], Awaitable[str]]
Delete = Callable[[str], Awaitable[None]]
NAMES = ("plain.txt", "with space.txt", "ünïcödé ✓.txt")


@dataclass
class Target:
    """One driver connected to its peer.

    ``scratch`` is a driver path of a folder the suite fills (empty at the start); ``put``
    and ``delete`` change the store behind the driver's back, as another client would:
    ``put(path, data)`` makes or replaces a file asked for as ``path`` (and missing parent
    folders) and returns the driver path the store gave it, which ``delete`` takes.
    ``sample(size)`` is new content of about ``size`` bytes the store can hold (random
    bytes; a real image for a store of images), different on each call. ``writable``
    (``Capabilities.writable``: any change at all), ``uploads`` (``write`` stores
    content), ``folders`` (mkdir/rmdir inside ``scratch``) and ``rename_files`` declare
    what the store can do; ``event_latency`` is the seconds within which the driver
    promises to report a change.
    """

    driver: Driver
    scratch: str
    put: Put
    delete: Delete
    writable: bool
    uploads: bool
    folders: bool
    rename_files: bool
    event_latency: float
    broken: Callable[[], Driver]
    """A driver of a store that is not there (no server, or no such root)."""
    sample: Callable[[int], bytes] = os.urandom


def png(size: int) -> bytes:
    """A real PNG image of random pixels, at least ``size`` bytes long (1x1 pixels, about
    70 bytes, for the smallest sizes): random RGB pixels do not compress, so a square of
    side ceil(sqrt(size / 3)) is enough."""
    side = max(1, math.isqrt(max(size - 1, 0) // 3) + 1)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        out, "PNG", compress_level=1)
    return out.getvalue()


def local_changes(root: Path, base: str = "/") -> tuple[Put, Delete]:
    """put/delete for a store served from local folder ``root`` (driver path ``base`` is
    ``root`` itself)."""

    def local(path: str) -> Path:
        return root / os.path.relpath(path, base)

    async def put(path: str, data: bytes) -> str:
        local(path).parent.mkdir(parents=True, exist_ok=True)
        local(path).write_bytes(data)
        return path

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

    async def put(path: str, data: bytes) -> str:
        source = tmp_path / "put"
        source.write_bytes(data)
        parts = path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            with contextlib.suppress(errors.AlreadyExists):
                await other.mkdir("/" + "/".join(parts[:depth]))
        await other.write(path, str(source), len(data))
        return path

    try:
        yield Target(driver, "/scratch", put, lambda p: other.remove(p, Kind.FILE),
                     writable=True, uploads=True, folders=True, rename_files=True,
                     event_latency=1.0,
                     broken=lambda: MemoryDriver(f"memory://{name}/no/such/root", {}))
    finally:
        await driver.close()
        STORES.pop(name, None)


@contextlib.asynccontextmanager
async def localdir_target(tmp_path: Path) -> AsyncIterator[Target]:
    """The local trash folder of ``-o trash=local`` (no URL scheme: the daemon makes it)."""
    from assetfs.drivers.localdir import LocalFolder

    root = tmp_path / "trash"
    driver = LocalFolder(root, tmp_path / "trash.partial")
    driver.poll_interval = 0.5
    await driver.connect()
    await driver.mkdir("/scratch")
    put, delete = local_changes(root)
    (tmp_path / "a file").write_text("not a folder")
    try:
        yield Target(driver, "/scratch", put, delete, writable=True, uploads=True,
                     folders=True, rename_files=True, event_latency=5.0,
                     broken=lambda: LocalFolder(tmp_path / "a file", tmp_path / "p"))
    finally:
        await driver.close()


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
        yield Target(driver, "/scratch", put, delete, writable=True, uploads=True,
                     folders=True, rename_files=True, event_latency=15.0,
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
            yield Target(driver, "/scratch", put, delete, writable=True, uploads=True,
                         folders=True, rename_files=True, event_latency=2.0,
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
            yield Target(driver, "/scratch", put, delete, writable=False, uploads=False,
                         folders=False, rename_files=False, event_latency=5.0,
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

        async def put(path: str, data: bytes) -> str:
            source = tmp_path / "put"
            source.write_bytes(data)
            await other.write(path, str(source), len(data))
            return path

        try:
            yield Target(driver, "/lib/scratch", put, lambda p: other.remove(p, Kind.FILE),
                         writable=True, uploads=True, folders=False, rename_files=False,
                         event_latency=5.0,
                         broken=lambda: VsphereDriver(f"vsphere://{USER}@127.0.0.1:9/",
                                                      {"http": "", "call_timeout": "1"}))
        finally:
            await other.close()
            await driver.close()


@contextlib.asynccontextmanager
async def resonite_target(tmp_path: Path) -> AsyncIterator[Target]:
    """The inventory's items are images named by the game (docs/resonite.md): ``put`` has
    the peer's game side make an item named as asked with a PNG thumbnail, shown as
    ``NAME.png``; deleting is the ordinary Remove rpc of another client."""
    from peers.resonite_peer import running

    from assetfs.drivers.resonite import ResoniteDriver

    def server_path(path: str) -> str:
        return "/Inventory" + path.removesuffix(".png")

    with running(tmp_path / "game") as peer, peer.direct() as game:
        game.make_dir("/Inventory/scratch")
        options = {"socket": str(peer.socket), "thumbnail_cache": str(tmp_path / "thumbs"),
                   "listing_ttl": "0", "poll_interval": "0.5"}
        driver = ResoniteDriver("resonite:", options)
        await driver.connect()

        async def put(path: str, data: bytes) -> str:
            await trio.to_thread.run_sync(peer.put_item, server_path(path), data)
            return path + ".png"

        async def delete(path: str) -> None:
            await trio.to_thread.run_sync(game.remove, server_path(path))

        try:
            yield Target(driver, "/scratch", put, delete, writable=True, uploads=False,
                         folders=True, rename_files=True, event_latency=5.0,
                         broken=lambda: ResoniteDriver("resonite:", {
                             **options, "socket": str(tmp_path / "no-game.sock"),
                             "ready_timeout": "1"}),
                         sample=png)
        finally:
            await driver.close()


@contextlib.asynccontextmanager
async def nodeodx_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                         ) -> AsyncIterator[Target]:
    """A task's files are the driver's (docs/nodeodx.md): the scratch folder is
    ``results/`` of a completed task made on the peer, its files the members of the task's
    all.zip, which ``put`` and ``delete`` rewrite as a new run of the task would. Nothing
    can be uploaded there, made or renamed (a committed task)."""
    from peers.nodeodx_peer import COMPLETED, running

    from assetfs.drivers.nodeodx import TOKEN_ENV, NodeODXDriver

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    scratch = "/survey/results"
    with running(tmp_path / "node") as node:
        node.timings(start=0, queued=0, running=0)
        uuid = node.create_task({"IMG_0001.JPG": b"\xff\xd8\xff\xe0image"}, name="survey")
        node.wait_status(uuid, COMPLETED)
        node.clear_results(uuid)
        options = {"poll_interval": "0.5", "poll_finished": "0",
                   "spool_dir": str(tmp_path / "spool")}
        driver = NodeODXDriver(f"nodeodx://{node.host}/", options)
        await driver.connect()

        async def put(path: str, data: bytes) -> str:
            member = os.path.relpath(path, scratch)
            await trio.to_thread.run_sync(node.set_result, uuid, member, data)
            return path

        async def delete(path: str) -> None:
            member = os.path.relpath(path, scratch)
            await trio.to_thread.run_sync(node.set_result, uuid, member, None)

        try:
            yield Target(driver, scratch, put, delete, writable=True, uploads=False,
                         folders=False, rename_files=False, event_latency=5.0,
                         broken=lambda: NodeODXDriver("nodeodx://127.0.0.1:9/", {
                             **options, "call_timeout": "1"}))
        finally:
            await driver.close()


@pytest.fixture(params=["memory", "localdir", "nucleus", "omniverse",
                        pytest.param("omerofs", marks=pytest.mark.omero),
                        pytest.param("vsphere", marks=pytest.mark.vsphere), "resonite",
                        "nodeodx"])
async def target(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Target]:
    make = {
        "memory": lambda: memory_target(tmp_path),
        "localdir": lambda: localdir_target(tmp_path),
        "nucleus": lambda: nucleus_target(tmp_path),
        "omniverse": lambda: omniverse_target(tmp_path),
        "omerofs": lambda: omerofs_target(tmp_path),
        "vsphere": lambda: vsphere_target(tmp_path, monkeypatch),
        "resonite": lambda: resonite_target(tmp_path),
        "nodeodx": lambda: nodeodx_target(tmp_path, monkeypatch),
    }[request.param]
    async with make() as one:
        yield one


async def content(driver: Driver, path: str, size: int) -> bytes:
    """The whole content of ``path`` through the driver's read mode."""
    mode = driver.capabilities.read_mode
    if mode is ReadMode.LOCAL:
        where = await driver.local_range(path)
        with open(where.path, "rb") as f:
            f.seek(where.offset)
            return f.read(-1 if where.size is None else where.size)
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
    files: dict[str, bytes] = {}
    for name, size in (("empty", 0), ("one", 1), ("big.bin", (1 << 20) + 17)):
        data = target.sample(size)
        files[await target.put(join(target.scratch, name), data)] = data
    driver = target.driver
    listed = {e.name: e for e in await driver.list(target.scratch)}
    assert set(listed) == {split(path)[1] for path in files}
    now = time.time_ns()
    for path, data in files.items():
        entry = listed[split(path)[1]]
        assert entry.kind is Kind.FILE and entry.size == len(data)
        assert entry.version, f"{path} has no version"
        assert abs(entry.mtime_ns - now) < 86400 * 10**9, "mtime_ns is not ns since the epoch"
        assert entry.mode & 0o444 and not entry.mode & ~0o7777
        stat = await driver.stat(path)
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
    path = await target.put(join(target.scratch, "file"), target.sample(4))
    with pytest.raises((errors.NotADirectory, errors.NotFound)):
        await driver.list(path)


async def test_names_with_spaces_and_non_ascii(target: Target) -> None:
    files: dict[str, bytes] = {}
    for name in NAMES:
        data = target.sample(len(name.encode()))
        files[await target.put(join(target.scratch, name), data)] = data
    listed = sorted(e.name for e in await target.driver.list(target.scratch))
    assert listed == sorted(split(path)[1] for path in files)
    for path, data in files.items():
        entry = await target.driver.stat(path)
        assert await content(target.driver, path, entry.size) == data


# --- data ------------------------------------------------------------------------------------
async def test_reads_at_and_past_eof(target: Target, tmp_path: Path) -> None:
    data = target.sample(300_000)
    path = await target.put(join(target.scratch, "ranges.bin"), data)
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
    assert driver.capabilities.writable is target.writable
    if not target.uploads:
        with pytest.raises((errors.ReadOnly, errors.NotSupported)) as refused:
            await upload(target, path, first, tmp_path)
        if target.writable:  # the VFS asks check_write before it takes the bytes
            with pytest.raises(type(refused.value)):
                driver.check_write(path)
        else:
            assert isinstance(refused.value, errors.ReadOnly)
            with pytest.raises(errors.ReadOnly):
                await driver.mkdir(join(target.scratch, "folder"))
        with pytest.raises(errors.NotFound):
            await driver.stat(path)
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
    child = await target.put(join(folder, "child"), target.sample(1))
    with pytest.raises(errors.DirectoryNotEmpty):
        await driver.remove(folder, Kind.DIR)
    await driver.remove(child, Kind.FILE)
    await driver.remove(folder, Kind.DIR)
    with pytest.raises(errors.NotFound):
        await driver.stat(folder)


async def test_rename_moves_and_replaces_files(target: Target) -> None:
    driver = target.driver
    data, replacement = target.sample(11), target.sample(11)
    old = await target.put(join(target.scratch, "old.txt"), data)
    new = join(target.scratch, "new name ✓ " + split(old)[1])  # the store's extension kept
    if not (target.writable and target.rename_files):
        with pytest.raises((errors.NotSupported, errors.ReadOnly)):
            await driver.rename(old, new)
        assert (await driver.stat(old)).size == len(data)
        return
    await driver.rename(old, new)
    with pytest.raises(errors.NotFound):
        await driver.stat(old)
    moved = await driver.stat(new)
    assert await content(driver, new, moved.size) == data
    assert await target.put(join(target.scratch, "old.txt"), replacement) == old
    await driver.rename(old, new)
    replaced = await driver.stat(new)
    assert await content(driver, new, replaced.size) == replacement
    assert [e.name for e in await driver.list(target.scratch)] == [split(new)[1]]


# --- events ------------------------------------------------------------------------------------
async def test_events_for_create_update_and_delete(target: Target) -> None:
    """A change made by another client is reported within the driver's promised latency
    (push events, or the base class's polling)."""
    driver = target.driver
    asked = join(target.scratch, "evented.txt")
    send, receive = trio.open_memory_channel[ChangeEvent](1000)
    seen: list[ChangeEvent] = []

    def reported(event: ChangeEvent, path: str, kinds: set[ChangeKind]) -> bool:
        if event.kind is ChangeKind.LISTED:  # a subscription's first listing shows it
            names = {e.name for e in event.listing}
            return event.path == target.scratch and (
                (split(path)[1] in names) == (ChangeKind.DELETED not in kinds))
        return event.path == path and event.kind in kinds

    async def expect(path: str, kinds: set[ChangeKind]) -> None:
        with trio.move_on_after(target.event_latency):
            while not any(reported(e, path, kinds) for e in seen):
                seen.append(await receive.receive())
        assert any(reported(e, path, kinds) for e in seen), (kinds, seen)
        seen.clear()

    async with trio.open_nursery() as nursery:
        driver.watch(target.scratch)
        nursery.start_soon(driver.run_events, send)
        with trio.fail_after(30):
            await driver.events_ready.wait()
        await driver.list(target.scratch)
        if not driver.capabilities.push_events:
            await trio.sleep(driver.poll_interval * 1.5)  # the first poll's baseline
        path = await target.put(asked, target.sample(3))
        await expect(path, {ChangeKind.CREATED, ChangeKind.UPDATED, ChangeKind.RESYNC})
        assert await target.put(asked, target.sample(14)) == path
        await expect(path, {ChangeKind.UPDATED, ChangeKind.CREATED})
        await target.delete(path)
        await expect(path, {ChangeKind.DELETED})
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

    covered = {"memory", "file", "omni", "omniverse", "omerofs", "vsphere", "resonite",
               "nodeodx", "nodeodxs"}  # omni*, nodeodxs: the file:, nodeodx: targets' classes
    assert set(available()) <= covered
