"""The vSphere Content Library driver against VMware's real simulator (vcsim), no mocks.

Each test gets a fresh simulator on 127.0.0.1 (about 0.1 s to start), arranges state
through the REST API (peers/vcsim_peer.py) and checks results through it too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from peers.vcsim_peer import PASSWORD, USER, Vcsim, running

from assetfs import errors
from assetfs.drivers import driver_class
from assetfs.drivers.base import ChangeEvent, ChangeKind, Kind, ReadMode
from assetfs.drivers.vsphere import PASSWORD_ENV, VsphereDriver


@pytest.fixture
def sim() -> Iterator[Vcsim]:
    with running() as peer:
        yield peer


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def make_driver(sim: Vcsim, path: str = "/", **options: str) -> VsphereDriver:
    if sim.url.startswith("http:"):
        options.setdefault("http", "")
    return VsphereDriver(f"vsphere://{USER}@{sim.host}{path}", options)


@pytest.fixture
async def driver(sim: Vcsim, password_env: None) -> AsyncIterator[VsphereDriver]:
    d = make_driver(sim, poll_interval="0.5")
    await d.connect()
    try:
        yield d
    finally:
        await d.close()


@pytest.fixture
def library(sim: Vcsim) -> str:
    """A library ``lib`` with item ``iso`` holding ``a.txt`` (11 bytes)."""
    lid = sim.create_library("lib")
    sim.upload(sim.create_item(lid, "iso"), "a.txt", b"hello world")
    return lid


def source_file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


async def read_all(d: VsphereDriver, path: str) -> bytes:
    return b"".join([chunk async for chunk in d.open_stream(path)])


# --- registry and URL ---------------------------------------------------------------
def test_scheme_is_registered() -> None:
    assert driver_class("vsphere://u@h/") is VsphereDriver


def test_password_in_url_is_refused() -> None:
    with pytest.raises(errors.BadURL, match="no password in the URL"):
        VsphereDriver("vsphere://u:pw@h/", {})


# --- browsing -----------------------------------------------------------------------
async def test_browse_tree_and_metadata(driver: VsphereDriver, library: str) -> None:
    assert [e.name for e in await driver.list("/")] == ["lib"]
    (item,) = await driver.list("/lib")
    assert (item.name, item.kind, item.metadata["type"]) == ("iso", Kind.DIR, "iso")
    (file,) = await driver.list("/lib/iso")
    assert (file.name, file.kind, file.size) == ("a.txt", Kind.FILE, 11)
    assert file.metadata["type"] == "iso" and file.version
    assert await driver.stat("/lib/iso/a.txt") == file
    assert (await driver.stat("/")).is_dir
    with pytest.raises(errors.NotFound):
        await driver.stat("/lib/iso/missing")
    with pytest.raises(errors.NotFound):
        await driver.stat("/lib/nope")
    with pytest.raises(errors.NotADirectory):
        await driver.list("/lib/iso/a.txt")


async def test_mount_one_library(sim: Vcsim, library: str, password_env: None) -> None:
    d = make_driver(sim, "/lib")
    await d.connect()
    try:
        assert [e.name for e in await d.list("/")] == ["iso"]
        assert await read_all(d, "/iso/a.txt") == b"hello world"
    finally:
        await d.close()


async def test_duplicate_library_names_are_told_apart(
    driver: VsphereDriver, sim: Vcsim, library: str
) -> None:
    second = sim.create_library("lib")
    names = sorted(e.name for e in await driver.list("/"))
    assert names == ["lib", f"lib~{second[:8]}"]
    assert await driver.list(f"/lib~{second[:8]}") == []


async def test_description_and_checksum_fields(
    driver: VsphereDriver, sim: Vcsim, library: str
) -> None:
    await driver.control("/lib/iso", "description", b"install media")
    item = await driver.stat("/lib/iso")
    assert item.metadata["description"] == "install media"
    assert (await driver.stat("/lib/iso/a.txt")).metadata["description"] == "install media"


# --- reading ------------------------------------------------------------------------
async def test_stream_reads_whole_file_and_deletes_session(
    driver: VsphereDriver, sim: Vcsim, library: str, tmp_path: Path
) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    await driver.write("/lib/iso/big.bin", source_file(tmp_path, "big", data), len(data))
    assert await read_all(driver, "/lib/iso/big.bin") == data
    start, size = 3 * 1024 * 1024 + 7, 1536 * 1024 + 3  # spans the driver's 1 MiB pieces
    assert await driver.read("/lib/iso/big.bin", start, size) == data[start : start + size]
    assert await driver.read("/lib/iso/big.bin", len(data) - 5, 100) == data[-5:]
    # an abandoned stream still deletes its session
    stream = driver.open_stream("/lib/iso/big.bin")
    assert await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]
    assert not sim.call("GET", "/rest/com/vmware/content/library/item/download-session")


async def test_ranged_read_falls_back_when_range_is_ignored(
    driver: VsphereDriver, library: str
) -> None:
    assert driver.capabilities.read_mode is ReadMode.STREAM
    assert await driver.read("/lib/iso/a.txt", 6, 3) == b"wor"
    assert driver.range_honoured is False  # vcsim replies 200 with the whole body
    assert await driver.read("/lib/iso/a.txt", 6, 100) == b"world"
    assert await driver.read("/lib/iso/a.txt", 11, 5) == b""


async def test_stream_of_a_directory_or_missing_file(driver: VsphereDriver, library: str) -> None:
    with pytest.raises(errors.IsADirectory):
        await read_all(driver, "/lib/iso")
    with pytest.raises(errors.NotFound):
        await read_all(driver, "/lib/iso/nope")


async def test_server_killed_mid_stream_is_unavailable(
    driver: VsphereDriver, sim: Vcsim, library: str, tmp_path: Path
) -> None:
    data = os.urandom(64 * 1024 * 1024)
    await driver.write("/lib/iso/big.bin", source_file(tmp_path, "big", data), len(data))
    stream = driver.open_stream("/lib/iso/big.bin")
    got = len(await stream.__anext__())
    os.kill(sim.proc.pid, signal.SIGKILL)
    with pytest.raises(errors.Unavailable):
        async for chunk in stream:
            got += len(chunk)
    assert got < len(data)


# --- writing ------------------------------------------------------------------------
async def test_write_new_file_then_check_through_rest(
    driver: VsphereDriver, sim: Vcsim, library: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    entry = await driver.write("/lib/iso/new.bin", source_file(tmp_path, "n", data), len(data))
    assert (entry.name, entry.size) == ("new.bin", len(data))
    item = sim.find_item(library, "iso")
    assert item is not None
    assert sorted(f["name"] for f in sim.files(item)) == ["a.txt", "new.bin"]
    assert sim.download_sha256(item, "new.bin") == (len(data), hashlib.sha256(data).hexdigest())


async def test_overwrite_leaves_one_file(
    driver: VsphereDriver, sim: Vcsim, library: str, tmp_path: Path
) -> None:
    before = await driver.stat("/lib/iso/a.txt")
    data = b"replaced, longer"
    entry = await driver.write("/lib/iso/a.txt", source_file(tmp_path, "a", data), len(data))
    assert entry.version != before.version
    assert driver.remove_kills_session is True  # the simulator's quirk was met and handled
    item = sim.find_item(library, "iso")
    assert item is not None
    assert [f["name"] for f in sim.files(item)] == ["a.txt"]
    assert sim.download_sha256(item, "a.txt") == (len(data), hashlib.sha256(data).hexdigest())
    # no scratch item or session is left behind
    assert [e.name for e in await driver.list("/lib")] == ["iso"]
    assert len(sim.call("GET", "/rest/com/vmware/content/library/item", library_id=library)) == 1
    assert not sim.call("GET", "/rest/com/vmware/content/library/item/update-session")
    assert await read_all(driver, "/lib/iso/a.txt") == data
    assert not sim.call("GET", "/rest/com/vmware/content/library/item/download-session")


async def test_overwrite_keeps_other_files(
    driver: VsphereDriver, sim: Vcsim, library: str, tmp_path: Path
) -> None:
    other = os.urandom(100_000)
    await driver.write("/lib/iso/other.bin", source_file(tmp_path, "o", other), len(other))
    sibling = await driver.stat("/lib/iso/other.bin")
    await driver.write("/lib/iso/a.txt", source_file(tmp_path, "a", b"v2"), 2)
    # the rebuild re-created other.bin unchanged: same version, or the core's write-back
    # would take a pending overwrite of it for a conflict
    assert (await driver.stat("/lib/iso/other.bin")).version == sibling.version
    item = sim.find_item(library, "iso")
    assert item is not None
    assert sorted(f["name"] for f in sim.files(item)) == ["a.txt", "other.bin"]
    assert sim.download_sha256(item, "other.bin")[1] == hashlib.sha256(other).hexdigest()
    # with the quirk known, replacing and removing go straight to the rebuild
    await driver.write("/lib/iso/a.txt", source_file(tmp_path, "a", b"v3"), 2)
    await driver.remove("/lib/iso/other.bin", Kind.FILE)
    item = sim.find_item(library, "iso")
    assert item is not None
    assert [f["name"] for f in sim.files(item)] == ["a.txt"]
    assert sim.download_sha256(item, "a.txt")[1] == hashlib.sha256(b"v3").hexdigest()
    assert not sim.call("GET", "/rest/com/vmware/content/library/item/update-session")


async def test_write_outside_an_item_is_refused(
    driver: VsphereDriver, library: str, tmp_path: Path
) -> None:
    src = source_file(tmp_path, "x", b"x")
    with pytest.raises(errors.NotSupported) as info:
        await driver.write("/lib/loose.txt", src, 1)
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(errors.NotFound):
        await driver.write("/lib/noitem/x.txt", src, 1)


# --- folders, removal, renames -------------------------------------------------------
async def test_mkdir_item_and_errors(driver: VsphereDriver, sim: Vcsim, library: str) -> None:
    entry = await driver.mkdir("/lib/newitem")
    assert entry.is_dir and sim.find_item(library, "newitem")
    with pytest.raises(errors.AlreadyExists):
        await driver.mkdir("/lib/newitem")
    with pytest.raises(errors.NotSupported) as info:
        await driver.mkdir("/lib/newitem/sub")
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(errors.NotFound):
        await driver.mkdir("/nolib/item")


async def test_mkdir_library_reuses_storage_backing(
    driver: VsphereDriver, sim: Vcsim, library: str
) -> None:
    entry = await driver.mkdir("/second")
    assert entry.is_dir
    assert sorted(e.name for e in await driver.list("/")) == ["lib", "second"]
    await driver.remove("/second", Kind.DIR)
    assert [e.name for e in await driver.list("/")] == ["lib"]


async def test_remove_file_then_item(driver: VsphereDriver, sim: Vcsim, library: str) -> None:
    with pytest.raises(errors.DirectoryNotEmpty):
        await driver.remove("/lib/iso", Kind.DIR)
    with pytest.raises(errors.DirectoryNotEmpty):
        await driver.remove("/lib", Kind.DIR)
    await driver.remove("/lib/iso/a.txt", Kind.FILE)
    item = sim.find_item(library, "iso")
    assert item is not None and sim.files(item) == []
    await driver.remove("/lib/iso", Kind.DIR)
    assert sim.find_item(library, "iso") is None
    with pytest.raises(errors.NotFound):
        await driver.remove("/lib/iso", Kind.DIR)


async def test_rename_item_and_refusals(driver: VsphereDriver, sim: Vcsim, library: str) -> None:
    await driver.rename("/lib/iso", "/lib/renamed")
    assert sim.find_item(library, "renamed") and sim.find_item(library, "iso") is None
    assert await read_all(driver, "/lib/renamed/a.txt") == b"hello world"
    with pytest.raises(errors.NotSupported) as info:
        await driver.rename("/lib/renamed/a.txt", "/lib/renamed/b.txt")
    assert info.value.errno == errno.EOPNOTSUPP
    await driver.mkdir("/lib/other")
    with pytest.raises(errors.AlreadyExists):
        await driver.rename("/lib/renamed", "/lib/other")
    sim.create_library("lib2")
    with pytest.raises(errors.NotSupported) as info:
        await driver.rename("/lib/renamed", "/lib2/renamed")
    assert info.value.errno == errno.EXDEV


# --- sessions and failures -------------------------------------------------------------
async def test_session_expiry_is_survived(
    driver: VsphereDriver, sim: Vcsim, library: str, tmp_path: Path
) -> None:
    first = driver.session_id
    assert first
    sim.expire_session(first)
    assert [e.name for e in await driver.list("/lib")] == ["iso"]
    second = driver.session_id
    assert second and second != first
    sim.expire_session(second)  # and again in the middle of a data transfer
    assert await read_all(driver, "/lib/iso/a.txt") == b"hello world"
    sim.expire_session(driver.session_id or "")
    await driver.write("/lib/iso/b.txt", source_file(tmp_path, "b", b"bee"), 3)
    assert await read_all(driver, "/lib/iso/b.txt") == b"bee"


async def test_bad_credentials(sim: Vcsim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    d = make_driver(sim)
    with pytest.raises(errors.PermissionDenied, match="login refused for user 'admin'"):
        await d.connect()
    await d.close()


async def test_no_password(sim: Vcsim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(errors.PermissionDenied, match=PASSWORD_ENV):
        await make_driver(sim).connect()


async def test_credentials_file_must_be_private(
    sim: Vcsim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    creds = tmp_path / "creds"
    creds.write_text(f"password={PASSWORD}\n")
    creds.chmod(0o644)
    with pytest.raises(errors.PermissionDenied, match="chmod 600"):
        await make_driver(sim, credentials=str(creds)).connect()
    creds.chmod(0o600)
    d = make_driver(sim, credentials=str(creds))
    await d.connect()
    await d.close()


async def test_unreachable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = VsphereDriver(f"vsphere://u@127.0.0.1:{port}/", {"http": "", "call_timeout": "5"})
    with pytest.raises(errors.Unavailable, match="cannot reach"):
        await d.connect()
    await d.close()


async def test_proxy_from_environment(
    sim: Vcsim, library: str, password_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy set in the environment is used (here one that is down), unless NO_PROXY
    names the server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    d = make_driver(sim, call_timeout="5")
    with pytest.raises(errors.Unavailable):
        await d.connect()
    await d.close()
    monkeypatch.setenv("NO_PROXY", sim.host.rsplit(":", 1)[0])
    d = make_driver(sim)
    await d.connect()
    assert await read_all(d, "/lib/iso/a.txt") == b"hello world"
    await d.close()


async def test_unknown_library(sim: Vcsim, library: str, password_env: None) -> None:
    d = make_driver(sim, "/nosuchlib")
    with pytest.raises(errors.NotFound, match="no content library named 'nosuchlib'"):
        await d.connect()
    await d.close()


async def test_tls_needs_trust(password_env: None) -> None:
    with running(tls=True) as peer:
        assert peer.ca_file
        d = make_driver(peer)
        with pytest.raises(errors.AssetFSError, match="ca_bundle"):
            await d.connect()
        await d.close()
        lid = peer.create_library("lib")
        data = os.urandom(3 * 1024 * 1024 + 7)  # several of the driver's 1 MiB reads
        peer.upload(peer.create_item(lid, "iso"), "a.bin", data)
        for options in ({"ca_bundle": peer.ca_file}, {"insecure": ""}):
            d = make_driver(peer, **options)
            await d.connect()
            assert [e.name for e in await d.list("/")] == ["lib"]
            assert await read_all(d, "/lib/iso/a.bin") == data
            await d.close()


async def test_download_whole_and_ranged(
    sim: Vcsim, library: str, password_env: None, tmp_path: Path
) -> None:
    """Whole and ranged reads give the stored bytes, across a session expiry."""
    d = make_driver(sim)
    await d.connect()
    try:
        data = os.urandom(3 * 1024 * 1024 + 5)
        await d.write("/lib/iso/b.bin", source_file(tmp_path, "b", data), len(data))
        assert await read_all(d, "/lib/iso/b.bin") == data
        assert await d.read("/lib/iso/b.bin", 1_000_000, 2_500_000) == data[1_000_000:3_500_000]
        sim.expire_session(d.session_id or "")
        assert await read_all(d, "/lib/iso/a.txt") == b"hello world"
        with pytest.raises(errors.NotFound):
            await read_all(d, "/lib/iso/missing")
    finally:
        await d.close()


# --- change detection ----------------------------------------------------------------
async def test_poll_reports_remote_changes(driver: VsphereDriver, sim: Vcsim, library: str) -> None:
    send, receive = trio.open_memory_channel[ChangeEvent](100)
    item = sim.find_item(library, "iso")
    assert item is not None
    async with trio.open_nursery() as nursery:
        driver.watch("/lib/iso")
        driver.watch("/lib")
        nursery.start_soon(driver.run_events, send)
        await trio.sleep(0.2)  # first listing
        await trio.to_thread.run_sync(sim.upload, item, "b.txt", b"bee")
        await trio.to_thread.run_sync(sim.create_item, library, "item2")
        seen: set[tuple[ChangeKind, str]] = set()
        with trio.fail_after(3):
            while {
                (ChangeKind.CREATED, "/lib/iso/b.txt"),
                (ChangeKind.CREATED, "/lib/item2"),
            } - seen:
                event = await receive.receive()
                seen.add((event.kind, event.path))
        nursery.cancel_scope.cancel()


async def test_duplicate_file_entries_show_once_newest_last(
    driver: VsphereDriver, sim: Vcsim, library: str
) -> None:
    item = sim.find_item(library, "iso")
    assert item is not None
    before = await driver.stat("/lib/iso/a.txt")
    sim.upload(item, "a.txt", b"second upload, longer")  # vcsim adds a second entry
    assert [f["name"] for f in sim.files(item)] == ["a.txt", "a.txt"]
    (entry,) = await driver.list("/lib/iso")
    assert entry.size == len(b"second upload, longer") and entry.version != before.version
    assert await read_all(driver, "/lib/iso/a.txt") == b"second upload, longer"


async def test_failed_rebuild_leaves_the_item_intact(
    driver: VsphereDriver, sim: Vcsim, library: str, tmp_path: Path
) -> None:
    short = source_file(tmp_path, "short", b"only 9 b.")
    with pytest.raises(errors.AssetFSError, match="shorter"):
        await driver.write("/lib/iso/a.txt", short, 1000)  # the upload breaks mid-way
    items = sim.call("GET", "/rest/com/vmware/content/library/item", library_id=library)
    assert len(items) == 1  # the scratch item is gone
    assert await read_all(driver, "/lib/iso/a.txt") == b"hello world"
    # no update session is left open either (cancelled and deleted)
    assert not sim.call("GET", "/rest/com/vmware/content/library/item/update-session")


def test_check_create_refuses_what_the_store_cannot_hold(sim: Vcsim) -> None:
    d = make_driver(sim)  # no I/O: not even connected
    d.check_create("/lib/item/file.iso", Kind.FILE)
    d.check_create("/lib/item", Kind.DIR)
    d.check_create("/lib", Kind.DIR)
    for path, kind in (("/lib/loose.txt", Kind.FILE), ("/lib/item/sub", Kind.DIR)):
        with pytest.raises(errors.NotSupported) as info:
            d.check_create(path, kind)
        assert info.value.errno == errno.EOPNOTSUPP
    one_library = make_driver(sim, "/lib")
    one_library.check_create("/item/file.iso", Kind.FILE)
    with pytest.raises(errors.NotSupported):
        one_library.check_create("/loose.txt", Kind.FILE)
