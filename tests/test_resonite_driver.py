"""The Resonite IO driver's pieces without FUSE: socket discovery, URL and name mapping,
the status-code translation on real replies of the test peer, and the driver against it."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from peers.resonite_peer import Peer, pb, running

from assetfs import errors
from assetfs.drivers.resonite import ResoniteDriver
from assetfs.drivers.resonite.discovery import AmbiguousSocket, SocketNotFound, find_socket
from assetfs.drivers.resonite.driver import server_root
from assetfs.drivers.resonite.naming import shown_names
from assetfs.drivers.resonite.session import translate
from assetfs.drivers.resonite.thumbnails import ThumbnailStore, extension


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    with running(tmp_path / "game") as game:
        yield game


# --- the thumbnail store ---------------------------------------------------------------------
def stored_bytes(store: ThumbnailStore, key: str) -> bytes | None:
    """The bytes ``store`` holds for ``key`` (None: not stored)."""
    place = store.place(key)
    if place is None:
        return None
    with open(place.path, "rb") as f:
        f.seek(place.offset)
        return f.read(place.size)


def test_the_thumbnail_store_keeps_every_whole_record_after_a_crash(tmp_path: Path) -> None:
    files = {f"{i:032x}": os.urandom(100 * i) for i in range(1, 6)}
    one, two = ThumbnailStore(tmp_path), ThumbnailStore(tmp_path)  # two mounts at once
    for i, (key, data) in enumerate(files.items()):
        (one if i % 2 else two).put(key, data, "webp")
    one.put("f" * 32, b"", "none")
    two.put("e" * 32, b"cut short", "png")
    packs = sorted(tmp_path.glob("*.pack"))
    assert len(packs) == 2  # one pack per mount, not one file per thumbnail
    cut = next(p for p in packs if p.read_bytes().endswith(b"cut short"))
    os.truncate(cut, cut.stat().st_size - 3)  # the crash: the last record's write cut short
    whole = next(p for p in packs if p != cut)
    with open(whole, "ab") as f:  # a header cut short
        f.write(f"{'d' * 32} 12".encode())
    again = ThumbnailStore(tmp_path)
    assert {key: stored_bytes(again, key) for key in files} == files
    assert again.get("f" * 32) is not None and stored_bytes(again, "f" * 32) == b""
    assert again.get("e" * 32) is None
    one.close()
    two.close()


# --- socket discovery ----------------------------------------------------------------------
def test_discovery_follows_the_official_client(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / f"resonite-{os.getpid()}.sock"
    live.touch()
    (tmp_path / "resonite-999999999.sock").touch()  # its process is gone: skipped
    env = {"RESONITE_IO_SOCKET_DIR": str(tmp_path)}
    assert find_socket(env) == live
    assert find_socket({**env, "RESONITE_IO_SOCKET": "/x/y.sock"}) == Path("/x/y.sock")
    assert find_socket({**env, "RESONITE_IO_SOCKET": ""}) == live  # empty counts as unset
    (tmp_path / "resonite-dev.sock").touch()  # not a pid: kept
    with pytest.raises(AmbiguousSocket, match="RESONITE_IO_SOCKET"):
        find_socket(env)
    with pytest.raises(SocketNotFound, match="RESONITE_IO_SOCKET_DIR"):
        find_socket({"RESONITE_IO_SOCKET_DIR": str(tmp_path / "none")})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(SocketNotFound, match=r"home/\.resonite-io"):
        find_socket({"RESONITE_IO_SOCKET_DIR": ""})


# --- URLs and names ------------------------------------------------------------------------
def test_mount_urls_are_normalised_here() -> None:
    assert server_root("resonite:") == "/Inventory"
    assert server_root("resonite:/") == "/Inventory"
    assert server_root("resonite:/Inventory/My%20Avatars/") == "/Inventory/My Avatars"
    assert server_root("resonite:///Inventory//a/./b/../c") == "/Inventory/a/c"
    for bad in ("resonite:/inventory", "resonite:/Other", "resonite:/Inventory/../etc"):
        with pytest.raises(errors.BadURL):
            server_root(bad)


def record(name: str, record_id: str = "", kind: int = 2) -> Any:
    return SimpleNamespace(name=name, record_id=record_id or f"R-{abs(hash(name)):012x}",
                           kind=kind, path="/Inventory/" + name)


def test_names_stay_unique_and_say_which_records_a_path_reaches() -> None:
    records = [record("Chair", "R-aaaaaaaa1"), record("Chair", "R-bbbbbbbb2"),
               record("a/b", "R-cccccccc3"), record(".", "R-dddddddd4"),
               record("Chair~bbbbbbbb", "R-eeeeeeee5"), record("Stool", "R-ffffffff6", 1)]
    exts = {"R-aaaaaaaa1": ".webp", "R-bbbbbbbb2": ".webp", "R-cccccccc3": ".png",
            "R-dddddddd4": ".png", "R-eeeeeeee5": ".webp", "R-ffffffff6": ""}
    named = shown_names(records, lambda r: exts[r.record_id])
    shown = [n.shown for n in named]
    assert len(set(shown)) == len(shown)
    assert shown[0] == "Chair.webp" and shown[2] == "a\u2215b.png" and shown[5] == "Stool"
    assert shown[1].startswith("Chair~") and shown[3] == ".~dddddddd.png"
    assert [n.reachable for n in named] == [True, False, False, True, True, True]


def test_the_extension_comes_from_the_type_or_the_bytes() -> None:
    assert extension("image/webp", b"") == "webp"
    assert extension("IMAGE/PNG; q=1", b"") == "png"
    assert extension("", b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert extension("", b"\x89PNG\r\n\x1a\nrest") == "png"
    assert extension("", b"\xff\xd8\xff\xe0") == "jpg"
    assert extension("application/x-unknown", b"????") == "bin"


# --- status codes, on the peer's own replies -----------------------------------------------
def status_of(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_every_status_code_of_the_server_has_its_errno(peer: Peer) -> None:
    with peer.direct() as game:
        inv = game.inventory
        cases: list[tuple[Callable[[], Any], grpc.StatusCode, int]] = [
            (lambda: inv["List"](pb.InventoryListRequest(path="Inventory")),
             grpc.StatusCode.INVALID_ARGUMENT, errno.EINVAL),
            (lambda: inv["MakeDir"](pb.InventoryMakeDirRequest(path="/Inventory")),
             grpc.StatusCode.INVALID_ARGUMENT, errno.EINVAL),
            (lambda: inv["List"](pb.InventoryListRequest(path="/Inventory/Nope")),
             grpc.StatusCode.NOT_FOUND, errno.ENOENT),
            (lambda: inv["FetchThumbnail"](pb.InventoryThumbnailRequest(
                path="/Inventory/Worlds/Empty World")), grpc.StatusCode.NOT_FOUND, errno.ENOENT),
            (lambda: inv["MakeDir"](pb.InventoryMakeDirRequest(path="/Inventory/Worlds")),
             grpc.StatusCode.ALREADY_EXISTS, errno.EEXIST),
            (lambda: inv["Remove"](pb.InventoryRemoveRequest(path="/Inventory/Worlds")),
             grpc.StatusCode.FAILED_PRECONDITION, errno.EPERM),
        ]
        for call, code, number in cases:
            error = status_of(call)
            assert error.code() is code
            failure = translate(error, "op", "resonite:")
            assert failure.errno == number and error.details() in str(failure)
        peer.set(signed_in=False)
        error = status_of(lambda: inv["List"](pb.InventoryListRequest(path="/Inventory")))
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert isinstance(translate(error, "op", "u"), errors.AssetFSError)
        blank = status_of(lambda: inv["FetchThumbnail"](pb.InventoryThumbnailRequest(path=" ")))
        assert blank.code() is grpc.StatusCode.INVALID_ARGUMENT  # checked before sign-in
        peer.set(signed_in=True, bridge=False)
        error = status_of(lambda: inv["List"](pb.InventoryListRequest(path="/Inventory")))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert isinstance(translate(error, "op", "u"), errors.Unavailable)
        peer.set(bridge=True, fault_prefix="/Inventory/Objects")
        error = status_of(lambda: inv["List"](pb.InventoryListRequest(path="/Inventory/Objects")))
        assert error.code() is grpc.StatusCode.INTERNAL
        failure = translate(error, "op", "u")
        assert failure.errno == errno.EIO and not isinstance(failure, errors.Unavailable)


def test_the_peer_keeps_upstreams_path_quirks(peer: Peer) -> None:
    with peer.direct() as game:
        listing = game.inventory["List"](pb.InventoryListRequest(path="/Inventory/"))
        assert listing.path == "/Inventory/"
        assert "/Inventory//Avatars" in [e.path for e in listing.entries]
        assert "Deeper" in game.list("/Inventory//Objects///Nested")
        assert status_of(lambda: game.list("/Inventory/Objects/./Nested")).code() is (
            grpc.StatusCode.NOT_FOUND)
        assert status_of(lambda: game.list("/inventory")).code() is (
            grpc.StatusCode.INVALID_ARGUMENT)


# --- the driver against the peer --------------------------------------------------------------
def driver_for(peer: Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               url: str = "resonite:") -> ResoniteDriver:
    monkeypatch.setenv("RESONITE_IO_SOCKET_DIR", str(peer.socket_dir))
    monkeypatch.delenv("RESONITE_IO_SOCKET", raising=False)
    return ResoniteDriver(url, {"thumbnail_cache": str(tmp_path / "thumbs"),
                                "listing_ttl": "0"})


async def test_the_driver_lists_moves_and_finds_a_restarted_game(
    peer: Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = driver_for(peer, tmp_path, monkeypatch)
    await driver.connect()
    try:
        names = {e.name for e in await driver.list("/Avatars")}
        assert {"Chair.webp", "Robot Avatar.png", "Kitsune ☆ Fox.webp"} <= names
        robot = await driver.stat("/Avatars/Robot Avatar.png")
        with peer.direct() as game:
            data, _ = game.thumbnail("/Inventory/Avatars/Robot Avatar")
        where = await driver.local_range("/Avatars/Robot Avatar.png")
        with open(where.path, "rb") as f:
            f.seek(where.offset)
            assert f.read(where.size) == data
        assert robot.size == len(data)
        await driver.rename("/Avatars/Robot Avatar.png", "/Worlds/Robot.png")
        with peer.direct() as game:
            assert game.list("/Inventory/Worlds")["Robot"].record_id == robot.metadata[
                "record_id"]
        with pytest.raises(errors.InvalidName):
            await driver.rename("/Worlds/Robot.png", "/Worlds/Robot.webp")
        with pytest.raises(errors.NotSupported):
            driver.check_write("/Worlds/Robot.png")
        old = peer.socket
        peer.restart()
        assert peer.socket != old
        assert "Robot.png" in {e.name for e in await driver.list("/Worlds")}
        assert driver.session.socket == peer.socket
    finally:
        await driver.close()


async def test_unknown_options_and_urls_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(errors.BadOption, match="nosuch"):
        ResoniteDriver("resonite:", {"nosuch": "1"})
    with pytest.raises(errors.BadOption, match="concurrency"):
        ResoniteDriver("resonite:", {"concurrency": "many"})
    with pytest.raises(errors.BadURL, match="/Inventory"):
        ResoniteDriver("resonite:/Elsewhere", {})
