"""Real mounts of a Resonite inventory served by the Resonite-IO-compatible test peer.

Arrange and check through the peer's own rpcs (peers/resonite_peer.py ``Direct``), act
through the mount.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mounting import assetfs_command, mounted, wait_for
from peers.resonite_peer import Peer, pb, running
from PIL import Image

POLL = 1.0
"""``-o poll_interval`` of every mount here, seconds."""


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    with running(tmp_path / "peer") as game:
        yield game


def game_env(peer: Peer) -> dict[str, str]:
    """The environment a user's shell has: the socket folder of the game, no fixed socket."""
    return {"RESONITE_IO_SOCKET_DIR": str(peer.socket_dir), "RESONITE_IO_SOCKET": ""}


def mount_game(peer: Peer, tmp_path: Path, name: str = "mnt", url: str = "resonite:",
               **extra: str) -> Any:
    """``mounted()`` for the peer, with a block cache per mount ``name`` and one thumbnail
    store for every mount of the test."""
    options: dict[str, str | None] = {
        "poll_interval": str(POLL),
        "cache_dir": str(tmp_path / f"{name}-cache"),
        "thumbnail_cache": str(tmp_path / "thumbnails"),
    }
    options.update(extra)
    return mounted(url, tmp_path / name, options, env=game_env(peer))


def os_error(action: Callable[[], Any]) -> int:
    """The errno ``action()`` fails with (fails the test when it succeeds)."""
    with pytest.raises(OSError) as caught:
        action()
    assert caught.value.errno is not None
    return caught.value.errno


def setfattr(path: Path, name: str, value: str) -> None:
    """``setfattr -n user.assetfs.NAME -v VALUE PATH``."""
    os.setxattr(path, f"user.assetfs.{name}", value.encode())


def test_items_are_thumbnail_files_byte_identical_to_fetch_thumbnail(
    peer: Peer, tmp_path: Path
) -> None:
    with mount_game(peer, tmp_path) as m, peer.direct() as game:
        assert sorted(os.listdir(m.path)) == sorted(
            ["Avatars", "Worlds", "Objects", "Empty Folder", "Shared Worlds", "Broken Link"])
        avatars = sorted(os.listdir(m.path / "Avatars"))
        assert len(avatars) == 4
        assert set(avatars) >= {"Chair.webp", "Kitsune ☆ Fox.webp", "Robot Avatar.png"}
        for shown, server in [("Avatars/Robot Avatar.png", "/Inventory/Avatars/Robot Avatar"),
                              ("Avatars/Kitsune ☆ Fox.webp", "/Inventory/Avatars/Kitsune ☆ Fox"),
                              ("Avatars/Chair.webp", "/Inventory/Avatars/Chair"),
                              ("Objects/Nested/Deeper/Tiny Cube.png",
                               "/Inventory/Objects/Nested/Deeper/Tiny Cube"),
                              ("Shared Worlds/My Home.webp", "/Inventory/Worlds/My Home")]:
            data, content_type = game.thumbnail(server)
            file = m.path / shown
            assert file.read_bytes() == data
            assert file.stat().st_size == len(data)
            assert Image.open(io.BytesIO(file.read_bytes())).format == (
                "WEBP" if content_type == "image/webp" else "PNG")
        assert sorted(os.listdir(m.path / "Shared Worlds")) == sorted(
            os.listdir(m.path / "Worlds"))
        assert os_error(lambda: os.listdir(m.path / "Broken Link")) == errno.ENOENT


def test_record_fields_are_xattrs(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m, peer.direct() as game:
        robot = game.list("/Inventory/Avatars")["Robot Avatar"]
        file = m.path / "Avatars" / "Robot Avatar.png"
        values = {n: os.getxattr(file, n).decode() for n in os.listxattr(file)}
        assert values["user.assetfs.record_id"] == robot.record_id
        assert values["user.assetfs.asset_uri"] == robot.asset_uri
        assert values["user.assetfs.kind"] == "object"
        assert values["user.assetfs.public"] == "true"
        assert values["user.assetfs.thumbnail"] == "png"
        assert os.getxattr(m.path / "Worlds" / "My Home.webp", "user.assetfs.kind") == b"world"
        assert os.getxattr(m.path / "Objects" / "Mystery.png", "user.assetfs.kind") == b"unknown"
        link = m.path / "Shared Worlds"
        assert os.getxattr(link, "user.assetfs.kind") == b"link"
        assert os.getxattr(link, "user.assetfs.asset_uri").startswith(b"resrec:///")


def test_repeated_names_slashes_and_missing_thumbnails_stay_addressable(
    peer: Peer, tmp_path: Path
) -> None:
    with mount_game(peer, tmp_path) as m, peer.direct() as game:
        second = [e for e in game.inventory["List"](
            pb.InventoryListRequest(path="/Inventory/Avatars")).entries if e.name == "Chair"][1]
        twin = m.path / "Avatars" / f"Chair~{second.record_id[2:10]}.json"
        record = json.loads(twin.read_bytes())
        assert record["record_id"] == second.record_id
        assert record["thumbnail"] == "unreachable by path"
        assert os.getxattr(twin, "user.assetfs.record_id").decode() == second.record_id
        lamp = m.path / "Objects" / "Lamp\u2215Desk.json"
        assert json.loads(lamp.read_bytes())["name"] == "Lamp/Desk"
        assert os.getxattr(lamp, "user.assetfs.name").decode() == "Lamp/Desk"
        empty = m.path / "Worlds" / "Empty World.json"
        assert json.loads(empty.read_bytes())["thumbnail"] == "none"
        assert empty.stat().st_size == len(empty.read_bytes())
        # no path reaches them: refused with EINVAL, nothing changed on the server
        assert os_error(lambda: os.rename(twin, m.path / "Worlds" / twin.name)) == errno.EINVAL
        assert os_error(lambda: os.unlink(lamp)) == errno.EINVAL
        assert game.names("/Inventory/Avatars").count("Chair") == 2


def test_mkdir_mv_rm_reach_the_inventory(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m, peer.direct() as game:
        folder = m.path / "Café ☆ Ü stuff"
        folder.mkdir()
        assert game.list("/Inventory")["Café ☆ Ü stuff"].kind == 1
        robot_id = game.list("/Inventory/Avatars")["Robot Avatar"].record_id
        (m.path / "Avatars" / "Robot Avatar.png").rename(folder / "Robo Two.png")
        moved = game.list("/Inventory/Café ☆ Ü stuff")["Robo Two"]
        assert moved.record_id == robot_id
        assert "Robot Avatar" not in game.list("/Inventory/Avatars")
        assert sorted(os.listdir(folder)) == ["Robo Two.png"]
        (folder / "Deep").mkdir()
        (m.path / "Objects" / "Nested").rename(folder / "Deep" / "Nest")
        assert "Deeper" in game.list("/Inventory/Café ☆ Ü stuff/Deep/Nest")
        assert "Nested" not in game.list("/Inventory/Objects")
        subprocess.run(["rm", "-r", str(folder)], check=True)
        assert "Café ☆ Ü stuff" not in game.list("/Inventory")
        assert not folder.exists()
        (m.path / "Worlds" / "My Home.webp").unlink()
        assert "My Home" not in game.list("/Inventory/Worlds")


def test_file_contents_are_refused_and_names_keep_their_type(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m, peer.direct() as game:
        new = m.path / "Avatars" / "new.png"
        assert os_error(lambda: new.write_bytes(b"x")) == errno.EOPNOTSUPP
        existing = m.path / "Avatars" / "Robot Avatar.png"
        assert os_error(lambda: existing.write_bytes(b"x")) == errno.EOPNOTSUPP
        assert os_error(lambda: os.truncate(existing, 0)) == errno.EOPNOTSUPP
        assert os_error(lambda: existing.rename(m.path / "Avatars" / "Robot")) == errno.EINVAL
        assert os_error(
            lambda: existing.rename(m.path / "Avatars" / "Robot.webp")) == errno.EINVAL
        assert os_error(
            lambda: existing.rename(m.path / "Avatars" / "Chair.webp")) == errno.EINVAL
        fox = m.path / "Avatars" / "Kitsune ☆ Fox.webp"
        assert os_error(lambda: fox.rename(m.path / "Avatars" / "Chair.webp")) == errno.EEXIST
        assert game.names("/Inventory/Avatars").count("Chair") == 2  # nothing was replaced
        assert "Robot Avatar" in game.list("/Inventory/Avatars")
        assert existing.read_bytes() == game.thumbnail("/Inventory/Avatars/Robot Avatar")[0]
        home = m.path / "Worlds" / "My Home.webp"
        fox.rename(m.path / "Worlds" / "My Home.webp")  # replaces the file there
        worlds = game.names("/Inventory/Worlds")
        assert worlds.count("My Home") == 1 and "Kitsune ☆ Fox" not in game.names(
            "/Inventory/Avatars")
        assert home.read_bytes() == game.thumbnail("/Inventory/Worlds/My Home")[0]


def test_copy_action_is_a_server_side_copy(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m, peer.direct() as game:
        cube = m.path / "Objects" / "Nested" / "Deeper" / "Tiny Cube.png"
        os.listdir(m.path / "Empty Folder")
        setfattr(cube, "copy", "/Empty Folder")
        copied = game.list("/Inventory/Empty Folder")["Tiny Cube"]
        assert copied.record_id != game.list("/Inventory/Objects/Nested/Deeper")[
            "Tiny Cube"].record_id
        landed = m.path / "Empty Folder" / "Tiny Cube.png"
        wait_for(landed.exists, 10 * POLL, "the copy in the mount")
        assert landed.read_bytes() == cube.read_bytes()
        setfattr(m.path / "Objects" / "Nested", "copy", "Worlds/Nest Copy")
        assert "Tiny Cube" in game.list("/Inventory/Worlds/Nest Copy/Deeper")
        assert os_error(lambda: setfattr(cube, "copy", "Empty Folder/Tiny Cube.png")) == (
            errno.EEXIST)
        assert game.names("/Inventory/Empty Folder") == ["Tiny Cube"]


def test_spawn_action_and_no_focused_world(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m:
        home = m.path / "Worlds" / "My Home.webp"
        setfattr(home, "spawn", "1")
        assert peer.control(get="spawned") == ["/Inventory/Worlds/My Home"]
        peer.set(focused_world=False)
        assert os_error(lambda: setfattr(home, "spawn", "1")) == errno.EPERM
        assert "No focused world to spawn into." in m.output()
        assert peer.control(get="spawned") == ["/Inventory/Worlds/My Home"]


def test_status_codes_reach_users_as_errnos(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path, timeout="3") as m, peer.direct() as game:
        peer.set(signed_in=False)  # FAILED_PRECONDITION
        assert os_error(lambda: os.listdir(m.path / "Objects")) == errno.EPERM
        peer.set(signed_in=True, fault_prefix="/Inventory/Objects", fault_code="INTERNAL")
        assert os_error(lambda: os.listdir(m.path / "Objects" / "Nested")) == errno.EIO
        assert "Inventory bridge faulted" in m.output()
        peer.set(fault_prefix="", bridge=False)  # UNAVAILABLE: retried, then EIO
        assert os_error(lambda: os.listdir(m.path / "Worlds")) == errno.EIO
        peer.set(bridge=True)
        game.inventory["MakeDir"](pb.InventoryMakeDirRequest(path="/Inventory/Late"))
        assert os_error(lambda: (m.path / "Late").mkdir()) == errno.EEXIST  # ALREADY_EXISTS
        assert os_error(lambda: os.listdir(m.path / "Nowhere")) == errno.ENOENT


def test_remote_changes_are_found_by_relisting(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m, peer.direct() as game:
        assert "Arrived" not in os.listdir(m.path)
        game.inventory["MakeDir"](pb.InventoryMakeDirRequest(path="/Inventory/Arrived"))
        wait_for(lambda: "Arrived" in os.listdir(m.path), 10 * POLL, "a new remote folder")
        game.inventory["Remove"](pb.InventoryRemoveRequest(path="/Inventory/Worlds/My Home"))
        wait_for(lambda: "My Home.webp" not in os.listdir(m.path / "Worlds"), 10 * POLL,
                 "a removed remote item")


def test_a_folder_url_is_normalised(peer: Peer, tmp_path: Path) -> None:
    url = "resonite:/Inventory//Objects/./Nested/../Nested"
    with mount_game(peer, tmp_path, url=url) as m:
        assert os.listdir(m.path) == ["Deeper"]
        assert (m.path / "Deeper" / "Tiny Cube.png").stat().st_size > 0


def test_thumbnails_are_fetched_once_across_mounts(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path, name="first") as m:
        first = {p.name: p.read_bytes() for p in (m.path / "Avatars").iterdir()}
    fetched = peer.calls("FetchThumbnail")
    with mount_game(peer, tmp_path, name="second") as m:
        again = {p.name: p.read_bytes() for p in (m.path / "Avatars").iterdir()}
        subprocess.run(["ls", "-lR", str(m.path / "Avatars")], check=True, capture_output=True)
    assert again == first
    assert peer.calls("FetchThumbnail") == fetched


def test_an_item_moved_to_the_local_trash_keeps_its_thumbnail(peer: Peer,
                                                              tmp_path: Path) -> None:
    with peer.direct() as game:
        data, _ = game.thumbnail("/Inventory/Avatars/Kitsune ☆ Fox")
    with mount_game(peer, tmp_path, trash="local") as m:
        trash = m.path / f".Trash-{os.getuid()}" / "files"
        trash.mkdir(parents=True)
        subprocess.run(["mv", str(m.path / "Avatars" / "Kitsune ☆ Fox.webp"), str(trash)],
                       check=True)
        assert (trash / "Kitsune ☆ Fox.webp").read_bytes() == data
    with peer.direct() as game:
        assert "Kitsune ☆ Fox" not in game.list("/Inventory/Avatars")


def test_a_game_restart_on_a_new_socket_is_survived(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m:
        before = {p.name: p.read_bytes() for p in (m.path / "Avatars").iterdir()}
        old_socket = peer.socket
        peer.stop()
        time.sleep(2 * POLL)  # past the kernel's and the mount's cache lifetimes
        assert {p.name: p.read_bytes() for p in (m.path / "Avatars").iterdir()} == before
        peer.start()
        assert peer.socket != old_socket
        (m.path / "After Restart").mkdir()
        with peer.direct() as game:
            assert "After Restart" in game.list("/Inventory")
        assert "Resonite IO: now using socket" in m.output()


def test_mount_waits_for_ping_and_fails_with_one_line_errors(tmp_path: Path) -> None:
    with running(tmp_path / "slow-game", "--not-ready-for", "2") as slow:
        with mount_game(slow, tmp_path, name="slow") as m:
            assert "Avatars" in os.listdir(m.path)
            assert "Resonite IO not ready yet" in m.output()
        (tmp_path / "never").mkdir()
        slow.set(ready_in=60)
        failed = subprocess.run(
            assetfs_command("mount", "resonite:", str(tmp_path / "never"), "-o",
                            f"ready_timeout=1,thumbnail_cache={tmp_path / 'thumbnails'}"),
            env={**os.environ, **game_env(slow)}, capture_output=True, text=True, timeout=60)
        assert failed.returncode != 0
        assert "not ready after 1s" in failed.stderr
        (slow.socket_dir / f"resonite-{os.getpid()}.sock").touch()  # a second live game
        (slow.socket_dir / "resonite-999999999.sock").touch()  # a dead one: skipped
        ambiguous = subprocess.run(
            assetfs_command("mount", "resonite:", str(tmp_path / "never")),
            env={**os.environ, **game_env(slow)}, capture_output=True, text=True, timeout=60)
        assert ambiguous.returncode != 0
        assert "RESONITE_IO_SOCKET" in ambiguous.stderr
        assert len(ambiguous.stderr.strip().splitlines()) == 1
        slow.set(ready_in=0)
        with mount_game(slow, tmp_path, name="fixed", socket=str(slow.socket)) as m:
            assert "Worlds" in os.listdir(m.path)
    missing = subprocess.run(
        assetfs_command("mount", "resonite:", str(tmp_path / "never")),
        env={**os.environ, "RESONITE_IO_SOCKET_DIR": str(tmp_path / "no-game"),
             "RESONITE_IO_SOCKET": ""}, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert "no Resonite IO socket" in missing.stderr and "RESONITE_IO_SOCKET" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_desktop_thumbnailer_makes_thumbnails_of_items(peer: Peer, tmp_path: Path) -> None:
    with mount_game(peer, tmp_path) as m:
        for item in ("Avatars/Robot Avatar.png", "Avatars/Kitsune ☆ Fox.webp"):
            out = tmp_path / (Path(item).stem + ".thumb.png")
            subprocess.run(["gdk-pixbuf-thumbnailer", "-s", "48", str(m.path / item), str(out)],
                           check=True, timeout=60)
            with Image.open(out) as thumb:
                assert thumb.format == "PNG"
                assert max(thumb.size) == 48
