"""The NodeODX driver against the test peer (peers/nodeodx_peer.py), at the driver level.

Arrange and check through the peer's own HTTP API, act through the driver.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from peers.nodeodx_peer import (
    COMPLETED,
    ZIP_LAYOUT,
    Peer,
    member_bytes,
    running,
)

from assetfs import errors
from assetfs.drivers.base import Kind
from assetfs.drivers.nodeodx import TOKEN_ENV, NodeODXDriver
from assetfs.drivers.nodeodx.client import redact

TOKEN = "s3cret-token"


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    with running(tmp_path / "node", token=TOKEN, max_images=5) as node:
        yield node


@pytest.fixture
async def driver(peer: Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[NodeODXDriver]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    drv = NodeODXDriver(f"nodeodx://{peer.host}/", {
        "poll_interval": "0.2", "poll_finished": "0.2", "spool_dir": str(tmp_path / "spool")})
    await drv.connect()
    try:
        yield drv
    finally:
        await drv.close()


async def read(drv: NodeODXDriver, path: str) -> bytes:
    return b"".join([chunk async for chunk in drv.open_stream(path)])


async def names(drv: NodeODXDriver, path: str) -> set[str]:
    return {e.name for e in await drv.list(path)}


def image(tmp_path: Path, name: str, data: bytes) -> tuple[str, int]:
    path = tmp_path / f"src-{name}"
    path.write_bytes(data)
    return str(path), len(data)


async def wait_status(drv: NodeODXDriver, folder: str, status: str) -> dict[str, str]:
    with trio.fail_after(30):
        while True:
            entry = await drv.stat(f"/{folder}")
            if entry.metadata.get("status") == status:
                return dict(entry.metadata)
            await trio.sleep(0.1)


async def test_a_completed_task_shows_info_console_archive_and_members(
        peer: Peer, driver: NodeODXDriver) -> None:
    uuid = peer.create_task({"a.jpg": b"A" * 10, "b.jpg": b"B" * 10}, name="survey")
    peer.wait_status(uuid, COMPLETED)
    top = await names(driver, "/")
    assert top == {".node", "survey"}
    meta = await wait_status(driver, "survey", "COMPLETED")
    assert meta["uuid"] == uuid and meta["images_count"] == "2" and meta["progress"] == "100.0"
    assert await names(driver, "/survey") == {"info.json", "console.txt", "all.zip", "results"}
    info = json.loads(await read(driver, "/survey/info.json"))
    assert info["uuid"] == uuid and info["status"]["code"] == COMPLETED
    console = (await read(driver, "/survey/console.txt")).decode()
    assert console.endswith("Done.\n") and "running step 20 of 20" in console
    assert (await driver.stat("/survey/console.txt")).size == len(console.encode())
    zipped = await read(driver, "/survey/all.zip")
    assert (await driver.stat("/survey/all.zip")).size == len(zipped)
    assert zipfile.ZipFile(io.BytesIO(zipped)).namelist() == list(ZIP_LAYOUT)
    tops = {name.split("/")[0] for name in ZIP_LAYOUT}
    assert await names(driver, "/survey/results") == tops
    ortho = "odm_orthophoto/odm_orthophoto.tif"
    entry = await driver.stat(f"/survey/results/{ortho}")
    assert entry.size == ZIP_LAYOUT[ortho]
    assert await read(driver, f"/survey/results/{ortho}") == member_bytes(ortho,
                                                                          ZIP_LAYOUT[ortho])
    assert driver.status()["archives"][uuid]["complete"] is True
    extracted = driver.archives.downloads[uuid].extracted
    assert set(extracted) == set(ZIP_LAYOUT) and all(m.done for m in extracted.values())
    node_info = json.loads(await read(driver, "/.node/info.json"))
    assert node_info["engine"] == "odx"
    assert "dsm" in {o["name"] for o in json.loads(await read(driver, "/.node/options.json"))}


async def test_folder_names_unnamed_repeated_and_unusable(peer: Peer,
                                                          driver: NodeODXDriver) -> None:
    unnamed = peer.create_task({"a.jpg": b"1"})
    first = peer.create_task({"a.jpg": b"1"}, name="same")
    second = peer.create_task({"a.jpg": b"1"}, name="same")
    slash = peer.create_task({"a.jpg": b"1"}, name="a/b")
    reserved = peer.create_task({"a.jpg": b"1"}, name=".node")
    assert await names(driver, "/") == {
        ".node", unnamed, "same", f"same~{second[:8]}", f"a_b~{slash[:8]}",
        f".node~{reserved[:8]}"}
    assert (await driver.stat("/same")).metadata["uuid"] == first


async def test_staging_uploads_images_and_commit_starts_the_task(
        peer: Peer, driver: NodeODXDriver, tmp_path: Path) -> None:
    await driver.mkdir("/flight")
    await driver.write("/flight/options.json", *image(tmp_path, "o", b'{"dsm": true}'))
    for name in ("1.jpg", "2.jpg", "gcp_list.txt"):
        await driver.write(f"/flight/{name}", *image(tmp_path, name, name.encode() * 100))
    assert await names(driver, "/flight") == {"options.json", "1.jpg", "2.jpg", "gcp_list.txt"}
    staged = await driver.stat("/flight")
    assert staged.metadata["status"] == "STAGED"
    assert peer.uuids() == []  # invisible before the commit
    await driver.control("/flight", "commit", b"1")
    uuid = peer.uuids()[0]
    held = peer.task(uuid)
    assert held["name"] == "flight"
    assert {i["name"] for i in held["images"]} == {"1.jpg", "2.jpg"}
    assert [g["name"] for g in held["gcp"]] == ["gcp_list.txt"]
    assert held["options"] == [{"name": "dsm", "value": True}]
    assert (await driver.stat("/flight")).metadata["uuid"] == uuid
    with pytest.raises(errors.ReadOnly):
        driver.check_create("/flight/3.jpg", Kind.FILE)
    with pytest.raises(errors.ReadOnly):
        driver.check_write("/flight/info.json")
    await wait_status(driver, "flight", "COMPLETED")


async def test_bad_options_refuse_the_commit_with_the_reason(
        peer: Peer, driver: NodeODXDriver, tmp_path: Path) -> None:
    await driver.mkdir("/bad")
    await driver.write("/bad/options.json", *image(tmp_path, "o", b'{"dsm": "maybe"}'))
    await driver.write("/bad/1.jpg", *image(tmp_path, "1", b"x"))
    assert "dsm" in (await driver.stat("/bad")).metadata["error"]
    with pytest.raises(errors.InvalidName, match="dsm"):
        await driver.control("/bad", "commit", b"1")
    await driver.mkdir("/unknown")
    await driver.write("/unknown/options.json", *image(tmp_path, "u", b'{"nosuch": 1}'))
    with pytest.raises(errors.InvalidName, match="nosuch"):
        await driver.control("/unknown", "commit", b"")
    assert peer.uuids() == []


async def test_commit_file_commits(peer: Peer, driver: NodeODXDriver, tmp_path: Path) -> None:
    await driver.mkdir("/byfile")
    await driver.write("/byfile/1.jpg", *image(tmp_path, "1", b"x" * 1000))
    assert driver.uploads_last("/byfile/COMMIT") and not driver.uploads_last("/byfile/1.jpg")
    await driver.write("/byfile/COMMIT", *image(tmp_path, "c", b""))
    assert len(peer.uuids()) == 1


async def test_too_many_images_fail_the_task(peer: Peer, driver: NodeODXDriver,
                                             tmp_path: Path) -> None:
    await driver.mkdir("/big")
    for i in range(6):
        await driver.write(f"/big/{i}.jpg", *image(tmp_path, str(i), b"x"))
    await driver.control("/big", "commit", b"1")
    meta = await wait_status(driver, "big", "FAILED")
    assert "Too many images" in meta["error"]
    info = json.loads(await read(driver, "/big/info.json"))
    assert "Too many images" in info["status"]["errorMessage"]
    assert "all.zip" not in await names(driver, "/big")


async def test_a_restart_mid_upload_never_commits_with_images_missing(
        peer: Peer, driver: NodeODXDriver, tmp_path: Path) -> None:
    await driver.mkdir("/r")
    await driver.write("/r/1.jpg", *image(tmp_path, "1", b"one"))
    peer.restart(clean=False)  # the upload session is gone
    await driver.write("/r/2.jpg", *image(tmp_path, "2", b"two"))
    assert await names(driver, "/r") == {"2.jpg"}
    assert "1.jpg" in (await driver.stat("/r")).metadata["error"]
    with pytest.raises(errors.AssetFSError, match=r"1\.jpg"):
        await driver.control("/r", "commit", b"1")
    await driver.write("/r/1.jpg", *image(tmp_path, "1", b"one"))
    await driver.control("/r", "commit", b"1")
    held = peer.task(peer.uuids()[0])
    assert {i["name"] for i in held["images"]} == {"1.jpg", "2.jpg"}


async def test_tasks_and_results_lost_by_a_restart_vanish(
        peer: Peer, driver: NodeODXDriver) -> None:
    kept = peer.create_task({"a.jpg": b"1"}, name="kept")
    peer.wait_status(kept, COMPLETED)
    assert await read(driver, "/kept/results/cameras.json")
    peer.restart(clean=True)  # saves the list
    lost = peer.create_task({"a.jpg": b"1"}, name="lost")
    assert "lost" in await names(driver, "/")
    peer.restart(clean=False, lose_results=(kept,))
    await trio.sleep(0.3)
    assert await names(driver, "/") == {".node", "kept"}
    assert lost not in peer.uuids()
    assert await names(driver, "/kept") == {"info.json", "console.txt"}
    with pytest.raises(errors.NotFound):
        await driver.stat("/kept/results/cameras.json")


async def test_cancel_restart_remove(peer: Peer, driver: NodeODXDriver) -> None:
    peer.timings(running=60)
    uuid = peer.create_task({"a.jpg": b"1"}, name="long")
    await wait_status(driver, "long", "RUNNING")
    await driver.control("/long", "cancel", b"")
    assert (await driver.stat("/long")).metadata["status"] == "CANCELED"
    peer.timings(start=0, queued=0, running=0.2)
    await driver.control("/long", "restart", b'{"fast-orthophoto": true}')
    await wait_status(driver, "long", "COMPLETED")
    assert peer.task(uuid)["options"] == [{"name": "fast-orthophoto", "value": True}]
    with pytest.raises(errors.NotSupported):
        await driver.control("/long", "explode", b"")
    await driver.remove("/long", Kind.DIR)
    assert peer.uuids() == []


async def test_wrong_token_gives_the_nodes_message(peer: Peer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    drv = NodeODXDriver(f"nodeodx://{peer.host}/", {"spool_dir": str(tmp_path / "s")})
    with pytest.raises(errors.PermissionDenied, match="token does not match"):
        await drv.connect()
    await drv.close()


async def test_token_only_from_environment_or_private_file(
        peer: Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(errors.BadURL, match="token"):
        NodeODXDriver(f"nodeodx://{peer.host}/?token={TOKEN}", {})
    with pytest.raises(errors.BadURL, match="token"):
        await NodeODXDriver(f"nodeodx://{peer.host}/", {"token": TOKEN}).connect()
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o644)
    with pytest.raises(errors.PermissionDenied, match="chmod 600"):
        await NodeODXDriver(f"nodeodx://{peer.host}/", {"token_file": str(secret)}).connect()
    secret.chmod(0o600)
    drv = NodeODXDriver(f"nodeodx://{peer.host}/", {"token_file": str(secret),
                                                    "spool_dir": str(tmp_path / "s")})
    await drv.connect()
    await drv.close()


async def test_unreachable_node(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    drv = NodeODXDriver(f"nodeodx://127.0.0.1:{port}/", {"spool_dir": str(tmp_path / "s")})
    with pytest.raises(errors.Unavailable, match="cannot connect"):
        await drv.connect()
    await drv.close()


async def test_query_strings_never_reach_the_log(peer: Peer, driver: NodeODXDriver,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    assert redact("GET http://h:1/info?token=abc HTTP/1.1") == \
        "GET http://h:1/info?<redacted> HTTP/1.1"
    with caplog.at_level(logging.DEBUG):
        await driver.list("/")
    assert caplog.records and TOKEN not in caplog.text
    assert os.environ[TOKEN_ENV] == TOKEN


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek: zipfile then writes data descriptors (bit 3), as
    streaming zip writers do."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += b
        return len(b)


def _archive(streamed: bool, members: dict[str, bytes]) -> bytes:
    target: Any = _Unseekable() if streamed else io.BytesIO()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            if streamed:
                with archive.open(name, "w") as member:
                    member.write(data)
            else:
                archive.writestr(name, data)
    return bytes(target.data) if streamed else target.getvalue()


@pytest.mark.parametrize("streamed", [False, True], ids=["sizes-in-header", "data-descriptor"])
def test_members_are_extracted_while_the_archive_arrives(tmp_path: Path, streamed: bool) -> None:
    import threading

    from assetfs.drivers.nodeodx.unzip import Growing, extract

    members = {"a/one.bin": os.urandom(3 << 20), "b.txt": b"text " * 1000, "c/d/e": b""}
    data = _archive(streamed, members)
    spool = tmp_path / "all.zip"
    spool.write_bytes(b"")
    state = {"received": 0, "ended": False}
    found: list[Any] = []

    def arrive() -> None:  # the download, in pieces
        with open(spool, "r+b") as out:
            for at in range(0, len(data), 100_000):
                out.seek(at)
                out.write(data[at:at + 100_000])
                out.flush()
                state["received"] = min(len(data), at + 100_000)
        state["ended"] = True

    writer = threading.Thread(target=arrive)
    writer.start()
    out = tmp_path / "out"
    out.mkdir()
    feed = Growing(spool, lambda: state["received"], lambda: state["ended"], threading.Event())
    extract(feed, out, found.append, lambda: None)
    feed.close()
    writer.join()
    assert {m.name: m.path.read_bytes() for m in found} == members
    assert all(m.done and not m.failed for m in found)


def test_a_cut_archive_leaves_the_member_failed(tmp_path: Path) -> None:
    import threading

    from assetfs.drivers.nodeodx.unzip import Growing, extract

    data = _archive(False, {"big": os.urandom(1 << 20)})[:500_000]
    spool = tmp_path / "all.zip"
    spool.write_bytes(data)
    found: list[Any] = []
    feed = Growing(spool, lambda: len(data), lambda: True, threading.Event())
    extract(feed, tmp_path, found.append, lambda: None)
    feed.close()
    assert len(found) == 1 and found[0].failed and not found[0].done
