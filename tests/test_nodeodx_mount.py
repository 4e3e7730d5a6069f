"""Real mounts of a NodeODX node served by the test peer (peers/nodeodx_peer.py).

Arrange and check through the peer's HTTP API, act through the mount.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mounting import assetfs_command, mounted
from peers.nodeodx_peer import COMPLETED, ZIP_LAYOUT, Peer, member_bytes, running
from test_passthrough import passthrough_expected

from assetfs.drivers.nodeodx import TOKEN_ENV

TOKEN = "mount-s3cret"
ORTHO = "odm_orthophoto/odm_orthophoto.tif"


def _fuse_usable() -> str | None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "no /dev/fuse or fusermount3"
    return None


pytestmark = pytest.mark.skipif(_fuse_usable() is not None, reason=str(_fuse_usable()))


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    with running(tmp_path / "node", token=TOKEN, max_images=50) as node:
        yield node


def mount_node(peer: Peer, tmp_path: Path, name: str = "odx", **extra: Any) -> Any:
    options: dict[str, str | None] = {
        "poll_interval": "0.5", "poll_finished": "1", "write_back_delay": "0",
        "cache_dir": str(tmp_path / f"{name}-cache"),
        "spool_dir": str(tmp_path / f"{name}-spool"),
    }
    options.update(extra)
    return mounted(f"nodeodx://{peer.host}/", tmp_path / name, options, {TOKEN_ENV: TOKEN})


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def xattr(path: Path, key: str) -> str:
    return os.getxattr(path, f"user.assetfs.{key}").decode()


def test_a_task_folder_shows_info_console_archive_and_results(peer: Peer,
                                                               tmp_path: Path) -> None:
    uuid = peer.create_task({"a.jpg": b"A" * 100}, name="survey-1")
    peer.wait_status(uuid, COMPLETED)
    with mount_node(peer, tmp_path) as m:
        task = m.path / "survey-1"
        assert sorted(os.listdir(m.path)) == [".node", "survey-1"]
        assert sorted(os.listdir(task)) == ["all.zip", "console.txt", "info.json", "results"]
        subprocess.run(["ls", "-la", str(task), str(task / "info.json")], check=True,
                       capture_output=True)  # what a file manager does: stat every child
        assert (task / "results").is_dir() and (task / "all.zip").stat().st_size > 0
        status = json.loads(os.getxattr(m.path, "user.assetfs.status"))
        assert status["driver_state"]["archives"] == {}  # showing the folder fetched nothing
        assert xattr(task, "uuid") == uuid and xattr(task, "status") == "COMPLETED"
        assert xattr(task, "progress") == "100.0" and xattr(task, "images_count") == "1"
        assert int(xattr(task, "processing_time")) > 0
        info = json.loads((task / "info.json").read_text())
        assert info["uuid"] == uuid and info["name"] == "survey-1"
        assert (task / "console.txt").read_text().endswith("Done.\n")
        assert (task / "results" / ORTHO).read_bytes() == member_bytes(ORTHO, ZIP_LAYOUT[ORTHO])

        def downloaded() -> bool:  # the member may be read before the archive has ended
            status = json.loads(os.getxattr(m.path, "user.assetfs.status"))
            return bool(status["driver_state"]["archives"][uuid]["complete"])

        wait_for(downloaded, 20, "the archive download")
        listing = subprocess.run(["ls", "-lR", str(task)], capture_output=True, text=True,
                                 check=True).stdout
        assert "report.pdf" in listing and "odm_orthophoto.tif" in listing
        assert (task / "all.zip").stat().st_size == os.path.getsize(
            peer.state / "data" / uuid / "all.zip")
        assert json.loads((m.path / ".node" / "info.json").read_text())["engine"] == "odx"
        assert "dsm" in (m.path / ".node" / "options.json").read_text()


def status(mount_path: Path) -> dict[str, Any]:
    return dict(json.loads(os.getxattr(mount_path, "user.assetfs.status")))


def archive_complete(mount_path: Path, uuid: str) -> bool:
    return bool(status(mount_path)["driver_state"]["archives"][uuid]["complete"])


@pytest.mark.parametrize("passthrough", ["yes", "no"])
def test_results_read_after_the_archive_is_in_cost_the_daemon_no_reads(
        peer: Peer, tmp_path: Path, passthrough: str) -> None:
    uuid = peer.create_task({"a.jpg": b"1"}, name="survey-2")
    peer.wait_status(uuid, COMPLETED)
    peer.restart(clean=True)  # the node saves its task list: an unclean restart keeps it
    with mount_node(peer, tmp_path, passthrough=passthrough) as m:
        results = m.path / "survey-2" / "results"
        assert (results / ORTHO).read_bytes() == member_bytes(ORTHO, ZIP_LAYOUT[ORTHO])
        wait_for(lambda: archive_complete(m.path, uuid), 20, "the archive download")
        before = status(m.path)
        others = ["odm_report/report.pdf", "odm_dem/dsm.tif", "cameras.json"]
        for name in others:
            assert (results / name).read_bytes() == member_bytes(name, ZIP_LAYOUT[name])
        archive = (m.path / "survey-2" / "all.zip").read_bytes()
        after = status(m.path)
        assert archive == (peer.state / "data" / uuid / "all.zip").read_bytes()
        # read where the spool holds them, not streamed again into the block cache
        assert after["cache"]["downloaded_bytes"] == before["cache"]["downloaded_bytes"]
        assert after["cache"]["used_bytes"] == before["cache"]["used_bytes"]
        reads = after["requests"].get("read", 0) - before["requests"].get("read", 0)
        if passthrough == "yes" and passthrough_expected():  # by the kernel: no READ request
            assert reads == 0
            assert after["passthrough"]["opens"] - before["passthrough"]["opens"] == 4
        else:  # by the daemon, from the spool file
            assert reads > 0 and after["passthrough"]["opens"] == 0
        with open(results / others[0], "rb") as held:  # the results vanish while it is open
            start = held.read(1000)
            peer.restart(clean=False, lose_results=(uuid,))
            wait_for(lambda: "all.zip" not in os.listdir(m.path / "survey-2"), 20,
                     "the results to vanish")
            assert not any(tmp_path.glob("odx-spool/*.zip"))  # the spool let go of them
            assert start + held.read() == member_bytes(others[0], ZIP_LAYOUT[others[0]])


def test_a_new_run_leaving_an_archive_of_the_same_size_is_read_anew(
        peer: Peer, tmp_path: Path) -> None:
    peer.timings(start=0, queued=0, running=0)  # a restart's whole run falls between polls
    uuid = peer.create_task({"a.jpg": b"1"}, name="survey-3")
    peer.wait_status(uuid, COMPLETED)
    member = "cameras.json"
    old, new = os.urandom(ZIP_LAYOUT[member]), os.urandom(ZIP_LAYOUT[member])
    peer.set_result(uuid, member, old)
    archive_file = peer.state / "data" / uuid / "all.zip"
    old_archive = archive_file.read_bytes()
    with mount_node(peer, tmp_path) as m:
        task = m.path / "survey-3"
        assert (task / "results" / member).read_bytes() == old
        wait_for(lambda: archive_complete(m.path, uuid), 20, "the archive download")
        held = open(task / "all.zip", "rb")  # noqa: SIM115 - closed below
        try:
            assert held.read(1000) == old_archive[:1000]
            run = xattr(task, "processing_time")
            peer.set_result(uuid, member, new, rerun=True)  # the node restarted the task
            assert archive_file.stat().st_size == len(old_archive)  # same size, new bytes
            wait_for(lambda: xattr(task, "processing_time") != run, 20, "the new run")
            assert (task / "results" / member).read_bytes() == new
            new_archive = archive_file.read_bytes()
            assert new_archive != old_archive
            # all.zip held open keeps its inode; by the next poll the path is a new file
            wait_for(lambda: (task / "all.zip").read_bytes() == new_archive, 20,
                     "the new all.zip")
            assert held.read() == old_archive[1000:]  # an open file keeps what it had
        finally:
            held.close()


def test_mkdir_copy_and_commit_by_xattr_then_the_task_is_read_only(
        peer: Peer, tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for i in range(6):
        (source / f"IMG_{i:04}.JPG").write_bytes(os.urandom(256 << 10))
    with mount_node(peer, tmp_path) as m:
        task = m.path / "survey-7"
        task.mkdir()
        (task / "options.json").write_text('{"orthophoto-resolution": 2, "dsm": true}')
        subprocess.run(["cp", *sorted(str(p) for p in source.iterdir()), str(task)], check=True)
        assert peer.uuids() == []
        assert xattr(task, "status") == "STAGED"
        os.setxattr(task, "user.assetfs.commit", b"1")
        uuid = peer.uuids()[0]
        held = peer.task(uuid)
        assert sorted(i["name"] for i in held["images"]) == sorted(os.listdir(source))
        sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}
        assert {i["name"]: i["sha256"] for i in held["images"]} == sums
        assert {o["name"] for o in held["options"]} == {"orthophoto-resolution", "dsm"}
        wait_for(lambda: "info.json" in os.listdir(task), 20, "the committed task's files")
        assert xattr(task, "uuid") == uuid
        for attempt in (lambda: (task / "more.jpg").write_bytes(b"x"),
                        lambda: (task / "info.json").write_text("{}"),
                        lambda: (task / "sub").mkdir()):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
        with pytest.raises(OSError) as top:
            (m.path / "stray.txt").write_bytes(b"x")
        assert top.value.errno == errno.EOPNOTSUPP


def test_commit_file_from_a_file_manager_waits_for_the_copy(peer: Peer, tmp_path: Path) -> None:
    with mount_node(peer, tmp_path, write_back_delay="1") as m:
        task = m.path / "dragged"
        task.mkdir()
        for i in range(5):
            (task / f"{i}.jpg").write_bytes(os.urandom(128 << 10))
        (task / "COMMIT").touch()
        uuids = wait_for(peer.uuids, 30, "the commit")
        assert len(peer.task(uuids[0])["images"]) == 5
        wait_for(lambda: "info.json" in os.listdir(task), 20, "the task folder")


def test_a_staged_task_left_at_unmount_is_named_in_the_log(peer: Peer,
                                                           tmp_path: Path) -> None:
    """A staged task lives in the mount that staged it (the node hides upload sessions):
    unmounting before the commit discards it, and the daemon's log says which one."""
    with mount_node(peer, tmp_path) as m:
        task = m.path / "half-done"
        task.mkdir()
        (task / "IMG_0001.JPG").write_bytes(os.urandom(64 << 10))
        wait_for(lambda: json.loads(os.getxattr(m.path, "user.assetfs.status"))
                 ["driver_state"]["staged"].get("half-done", {}).get("files"), 20,
                 "the upload into the staged task")
    assert "/half-done: staged task not committed" in m.output()
    assert peer.uuids() == []
    with mount_node(peer, tmp_path) as again:
        assert "half-done" not in os.listdir(again.path)


def test_bad_options_give_einval_and_the_message(peer: Peer, tmp_path: Path) -> None:
    with mount_node(peer, tmp_path) as m:
        task = m.path / "bad"
        task.mkdir()
        (task / "options.json").write_text('{"feature-quality": "superb"}')
        (task / "1.jpg").write_bytes(b"x")
        wait_for(lambda: "superb" in xattr(task, "error"), 10, "the options error")
        with pytest.raises(OSError) as refused:
            os.setxattr(task, "user.assetfs.commit", b"1")
        assert refused.value.errno == errno.EINVAL
        assert "superb" in m.output()
        assert peer.uuids() == []


def test_rm_r_removes_the_task_and_a_failed_task_shows_its_error(peer: Peer,
                                                                  tmp_path: Path) -> None:
    done = peer.create_task({"a.jpg": b"1"}, name="old")
    peer.timings(fail="Not enough overlap")
    failed = peer.create_task({"a.jpg": b"1"}, name="broken")
    peer.wait_status(done, COMPLETED)
    with mount_node(peer, tmp_path) as m:
        wait_for(lambda: xattr(m.path / "broken", "status") == "FAILED", 20, "FAILED")
        assert xattr(m.path / "broken", "error") == "Not enough overlap"
        info = json.loads((m.path / "broken" / "info.json").read_text())
        assert info["status"]["errorMessage"] == "Not enough overlap"
        subprocess.run(["rm", "-r", str(m.path / "old")], check=True)
        assert done not in peer.uuids() and failed in peer.uuids()
        assert not (m.path / "old").exists()


def test_cancel_and_restart_actions(peer: Peer, tmp_path: Path) -> None:
    peer.timings(start=0.1, queued=0.1, running=600)
    uuid = peer.create_task({"a.jpg": b"1"}, name="long")
    with mount_node(peer, tmp_path) as m:
        task = m.path / "long"
        os.setxattr(task, "user.assetfs.cancel", b"1")
        assert peer.task_info(uuid)["status"]["code"] == 50
        wait_for(lambda: xattr(task, "status") == "CANCELED", 20, "CANCELED")
        peer.timings(start=0, queued=0, running=0.5)
        os.setxattr(task, "user.assetfs.restart", b'{"dsm": true}')
        assert peer.task(uuid)["options"] == [{"name": "dsm", "value": True}]
        wait_for(lambda: xattr(task, "status") == "COMPLETED", 30, "COMPLETED after restart")
        with pytest.raises(OSError) as refused:
            os.setxattr(task, "user.assetfs.restart", b'{"dsm": "maybe"}')
        assert refused.value.errno == errno.EINVAL


def test_console_grows_while_the_task_runs(peer: Peer, tmp_path: Path) -> None:
    peer.timings(start=0.1, queued=0.1, running=8)
    uuid = peer.create_task({"a.jpg": b"1"}, name="running")
    with mount_node(peer, tmp_path) as m:
        console = m.path / "running" / "console.txt"
        with open(console, "rb") as follower:
            first = follower.read()

            def tail() -> bytes:  # what tail -f does: fstat, then read what is new
                os.fstat(follower.fileno())
                return follower.read()

            more = wait_for(tail, 20, "new console lines")
        assert b"running step" in first + more
        wait_for(lambda: peer.task_info(uuid)["status"]["code"] == COMPLETED, 30, "completion")
        wait_for(lambda: console.read_text().endswith("Done.\n"), 20, "the final lines")


def test_running_tasks_are_polled_more_often_than_finished_ones(peer: Peer,
                                                                tmp_path: Path) -> None:
    done = peer.create_task({"a.jpg": b"1"}, name="done")
    peer.wait_status(done, COMPLETED)
    peer.timings(running=600)
    busy = peer.create_task({"a.jpg": b"1"}, name="busy")
    with mount_node(peer, tmp_path, poll_finished="30") as m:
        os.listdir(m.path)  # the top folder is watched (re-listed) from now on
        before = peer.info_calls()
        time.sleep(4)
        after = peer.info_calls()
        assert xattr(m.path / "busy", "status") in ("QUEUED", "RUNNING")
    assert after[busy] - before.get(busy, 0) >= 3  # every 0.5 s poll, 1 s apart at least
    assert after[done] - before.get(done, 0) == 0  # kept for poll_finished=30 s


def test_node_restart_loses_tasks_and_results_without_a_hang(peer: Peer,
                                                              tmp_path: Path) -> None:
    kept = peer.create_task({"a.jpg": b"1"}, name="kept")
    peer.wait_status(kept, COMPLETED)
    peer.restart(clean=True)
    lost = peer.create_task({"a.jpg": b"1"}, name="lost")
    peer.wait_status(lost, COMPLETED)
    with mount_node(peer, tmp_path) as m:
        member = m.path / "kept" / "results" / "cameras.json"
        with open(member, "rb") as held:
            start = held.read(100)
            peer.restart(clean=False, lose_results=(kept,))
            wait_for(lambda: not (m.path / "lost").exists(), 20, "the lost task to vanish")
            wait_for(lambda: "all.zip" not in os.listdir(m.path / "kept"), 20, "results gone")
            assert start + held.read() == member_bytes("cameras.json", ZIP_LAYOUT["cameras.json"])
        assert sorted(os.listdir(m.path)) == [".node", "kept"]


def test_node_restart_mid_upload_never_commits_with_images_missing(peer: Peer,
                                                                     tmp_path: Path) -> None:
    images = {f"{i}.jpg": os.urandom(64 << 10) for i in range(5)}
    with mount_node(peer, tmp_path) as m:
        task = m.path / "interrupted"
        task.mkdir()
        for name in ("0.jpg", "1.jpg", "2.jpg"):
            (task / name).write_bytes(images[name])
        wait_for(lambda: xattr(task, "images_count") == "3", 20, "the first uploads")
        peer.restart(clean=False)  # the node forgets the upload session
        for name in ("3.jpg", "4.jpg"):
            (task / name).write_bytes(images[name])
        wait_for(lambda: "copy these images again" in xattr(task, "error"), 20, "the loss")
        with pytest.raises(OSError) as refused:
            os.setxattr(task, "user.assetfs.commit", b"1")
        assert refused.value.errno == errno.EBUSY
        assert peer.uuids() == []
        for name in ("0.jpg", "1.jpg", "2.jpg"):
            (task / name).write_bytes(images[name])
        os.setxattr(task, "user.assetfs.commit", b"1")
        held = peer.task(peer.uuids()[0])
        import hashlib

        assert {i["name"]: i["sha256"] for i in held["images"]} == {
            n: hashlib.sha256(b).hexdigest() for n, b in images.items()}


def test_wrong_token_and_token_in_url_are_refused_in_one_line(peer: Peer,
                                                               tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, TOKEN_ENV: "wrong"}
    cmd = assetfs_command("mount", f"nodeodx://{peer.host}/", str(tmp_path / "mnt"),
                          "-o", f"cache_dir={tmp_path / 'c'},spool_dir={tmp_path / 's'}")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "token does not match" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    cmd = assetfs_command("mount", f"nodeodx://{peer.host}/?token={TOKEN}",
                          str(tmp_path / "mnt"))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "put no token" in result.stderr and TOKEN not in result.stderr


def test_an_unreachable_node_fails_the_mount_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "mnt").mkdir()
    cmd = assetfs_command("mount", f"nodeodx://127.0.0.1:{port}/", str(tmp_path / "mnt"),
                          "-o", f"timeout=2,cache_dir={tmp_path / 'c'},spool_dir={tmp_path / 's'}")
    result = subprocess.run(cmd, env={**os.environ, TOKEN_ENV: TOKEN}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "cannot connect" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_token_never_reaches_the_log(peer: Peer, tmp_path: Path) -> None:
    uuid = peer.create_task({"a.jpg": b"1"}, name="t")
    peer.wait_status(uuid, COMPLETED)
    with mount_node(peer, tmp_path, debug=None) as m:
        (m.path / "t" / "all.zip").read_bytes()
        log = m.output()
    assert "HTTP Request" in log and "?<redacted>" in log
    assert TOKEN not in log
