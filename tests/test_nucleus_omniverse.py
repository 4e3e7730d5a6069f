"""``omniverse://`` mounts through omni.client's Storage API provider against the project's
peer (tests/peers/nucleus_peer.py): a real gRPC server on 127.0.0.1 whose tree is a folder
the tests also change directly, as another client would. Faults are the peer's switches
and a SIGKILL of its process (docs/backends/nucleus.md)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import inotify_simple
import pytest
from mounting import Mount, assetfs_command, fsync, is_mounted, mounted
from nucleus_fixtures import NucleusPeer, mount_options, nucleus_peer

VISIBLE_WITHIN = 1.0
"""Seconds between a change on the server and its visibility through the mount."""
RECOVERY = 60.0
"""Upper bound, seconds, for a mount to notice a restarted server (supervisor backoff)."""


def eventually(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "Scenes" / "deep").mkdir(parents=True)
    (root / "Scenes" / "plain.txt").write_text("plain\n")
    (root / "Scenes" / "deep" / "mesh.usda").write_text("#usda 1.0\n")
    (root / "Textures").mkdir()
    (root / "Textures" / "big.bin").write_bytes(os.urandom(3 << 20))
    return root


@pytest.fixture
def peer(store: Path, tmp_path: Path) -> Iterator[NucleusPeer]:
    with nucleus_peer(store, tmp_path / "peer") as running:
        yield running


def mount_peer(peer: NucleusPeer, tmp_path: Path, name: str = "mnt",
               env: dict[str, str] | None = None, **options: str):
    defaults = {"write_back_delay": "0.2", "timeout": "5", **options}
    return mounted(peer.url, tmp_path / name, mount_options(peer, tmp_path / "cache", **defaults),
                   env=env)


@pytest.fixture
def mount(peer: NucleusPeer, tmp_path: Path) -> Iterator[Mount]:
    with mount_peer(peer, tmp_path) as running:
        yield running


def settle(mount: Mount) -> None:
    """Wait until every write through the mount is uploaded."""
    eventually(lambda: not json.loads(os.getxattr(mount.path, "user.assetfs.status"))
               ["dirty_files"])


def store_requests(mount: Mount) -> dict[str, int]:
    """The driver calls the daemon made so far, by kind (``assetfs status``)."""
    return dict(json.loads(os.getxattr(mount.path, "user.assetfs.status"))["store_requests"])


# --- end to end ------------------------------------------------------------------------
def test_omniverse_mount_lists_reads_and_writes(mount: Mount, store: Path,
                                                tmp_path: Path) -> None:
    m = mount.path
    assert sorted(os.listdir(m)) == ["Scenes", "Textures"]
    assert (m / "Scenes/deep/mesh.usda").read_text() == "#usda 1.0\n"
    assert (m / "Textures/big.bin").read_bytes() == (store / "Textures/big.bin").read_bytes()
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(200_000))
    subprocess.run(["cp", str(local), str(m / "Scenes/copied.bin")], check=True)
    subprocess.run(["mkdir", "-p", str(m / "New/inner")], check=True)
    (m / "New/inner/note.txt").write_text("note")
    subprocess.run(["mv", str(m / "Scenes/plain.txt"), str(m / "New/plain.txt")], check=True)
    subprocess.run(["rm", str(m / "Scenes/deep/mesh.usda")], check=True)
    os.rmdir(m / "Scenes/deep")
    settle(mount)
    assert (store / "Scenes/copied.bin").read_bytes() == local.read_bytes()
    assert (store / "New/inner/note.txt").read_text() == "note"
    assert (store / "New/plain.txt").read_text() == "plain\n"
    assert not (store / "Scenes/plain.txt").exists()
    assert not (store / "Scenes/deep").exists()
    assert sorted(os.listdir(m / "Scenes")) == ["copied.bin"]


# --- coherence ---------------------------------------------------------------------------
def test_omniverse_change_by_another_client_shows_within_a_second(mount: Mount,
                                                                  store: Path) -> None:
    scenes = mount.path / "Scenes"
    assert (scenes / "plain.txt").read_text() == "plain\n"
    assert "made.txt" not in os.listdir(scenes)
    with inotify_simple.INotify() as watcher:
        watcher.add_watch(scenes / "plain.txt", inotify_simple.flags.DELETE_SELF)
        (store / "Scenes/made.txt").write_text("by someone else\n")
        eventually(lambda: "made.txt" in os.listdir(scenes), VISIBLE_WITHIN)
        assert (scenes / "made.txt").read_text() == "by someone else\n"
        (store / "Scenes/plain.txt").unlink()
        started, seen = time.monotonic(), False
        while time.monotonic() - started < VISIBLE_WITHIN and not seen:
            seen = any(e.mask & inotify_simple.flags.DELETE_SELF
                       for e in watcher.read(timeout=100))
        assert seen, "no IN_DELETE_SELF for a file deleted on the server"
    assert not exists(scenes / "plain.txt")


def test_omniverse_change_behind_the_back_waits_for_a_resync(mount: Mount, peer: NucleusPeer,
                                                            store: Path) -> None:
    """A change that sends no event (the peer's ``quiet``) is not seen from the caches;
    a server restart (events were lost: RESYNC) re-validates and shows it."""
    scenes = mount.path / "Scenes"
    assert (scenes / "plain.txt").read_text() == "plain\n"
    peer.control(quiet=True)
    (store / "Scenes/plain.txt").write_text("changed quietly\n")
    time.sleep(2 * VISIBLE_WITHIN)
    assert (scenes / "plain.txt").read_text() == "plain\n"
    peer.restart()
    eventually(lambda: (scenes / "plain.txt").read_text() == "changed quietly\n", RECOVERY)


# --- reconnect and a server that is down ---------------------------------------------------
def test_omniverse_server_restart_recovers_without_remount(mount: Mount, peer: NucleusPeer,
                                                           store: Path) -> None:
    scenes = mount.path / "Scenes"
    assert (scenes / "plain.txt").read_text() == "plain\n"
    peer.kill()
    (store / "Scenes/plain.txt").write_text("changed while the server was away\n")
    peer.start()
    eventually(lambda: (scenes / "plain.txt").read_text()
               == "changed while the server was away\n", RECOVERY)
    (store / "Scenes/after.txt").write_text("after\n")  # events flow again
    eventually(lambda: "after.txt" in os.listdir(scenes), 10)


def test_omniverse_server_down_keeps_cached_answers(peer: NucleusPeer, store: Path,
                                                    tmp_path: Path) -> None:
    with mount_peer(peer, tmp_path, timeout="3") as mount:
        m = mount.path
        assert (m / "Scenes/plain.txt").read_text() == "plain\n"
        assert sorted(os.listdir(m / "Scenes")) == ["deep", "plain.txt"]
        peer.kill()
        assert (m / "Scenes/plain.txt").read_text() == "plain\n"
        assert sorted(os.listdir(m / "Scenes")) == ["deep", "plain.txt"]
        for uncached in (m / "Textures/big.bin", m / "Scenes/deep"):
            started = time.monotonic()
            with pytest.raises(OSError) as caught:
                os.listdir(uncached) if uncached.name == "deep" else uncached.read_bytes()
            assert caught.value.errno in (errno.EIO, errno.ETIMEDOUT)
            assert time.monotonic() - started < 30  # bounded by -o timeout, not hanging
        (m / "Scenes/offline.txt").write_text("written while the server was down\n")
        assert (m / "Scenes/offline.txt").read_text() == "written while the server was down\n"
        peer.start()  # the write-back retries by itself; an fsync at this very moment may
        # still meet the breaker (EIO at once while the store counts as down), so wait
        uploaded = store / "Scenes/offline.txt"
        eventually(lambda: uploaded.exists()
                   and uploaded.read_text() == "written while the server was down\n", RECOVERY)
        fsync(m / "Scenes/offline.txt")  # and fsync now answers: nothing left to upload


def test_omniverse_hung_server_never_blocks_the_mount(peer: NucleusPeer, tmp_path: Path) -> None:
    with mount_peer(peer, tmp_path, timeout="2") as mount:
        m = mount.path
        assert (m / "Scenes/plain.txt").read_text() == "plain\n"
        peer.control(hang=True)
        started = time.monotonic()
        with pytest.raises(OSError) as caught:
            os.listdir(m / "Scenes/deep")
        assert caught.value.errno in (errno.EIO, errno.ETIMEDOUT)
        assert time.monotonic() - started < 30
        assert os.statvfs(m).f_bsize > 0
        assert (m / "Scenes/plain.txt").read_text() == "plain\n"
    assert not is_mounted(tmp_path / "mnt")
    peer.control(hang=False)


# --- credentials -------------------------------------------------------------------------
def cli_mount(peer: NucleusPeer, tmp_path: Path, env: dict[str, str],
              **options: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cli").mkdir(exist_ok=True)
    opts = ",".join(f"{k}={v}" for k, v in mount_options(peer, tmp_path / "clicache",
                                                          timeout="5", **options).items())
    return subprocess.run(assetfs_command("mount", peer.url, str(tmp_path / "cli"), "-o", opts),
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_omniverse_token_from_the_environment(peer: NucleusPeer, tmp_path: Path) -> None:
    secret = "env-token-5d1c"
    peer.control(token=secret)
    env = {"ASSETFS_NUCLEUS_TOKEN": secret}
    with mount_peer(peer, tmp_path, env=env) as mount:
        assert (mount.path / "Scenes/plain.txt").read_text() == "plain\n"
        cmdline = Path(f"/proc/{mount.proc.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
    assert secret not in mount.output()


def test_omniverse_token_file_is_refreshed_without_remount(peer: NucleusPeer, store: Path,
                                                          tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    token.chmod(0o600)
    peer.control(token="first-token")
    with mount_peer(peer, tmp_path, token_file=str(token)) as mount:
        assert (mount.path / "Scenes/plain.txt").read_text() == "plain\n"
        token.write_text("second-token\n")
        peer.control(token="second-token")  # the old one is refused from now on
        assert sorted(os.listdir(mount.path / "Scenes/deep")) == ["mesh.usda"]
        (mount.path / "Scenes/new.txt").write_text("with the new token")
        fsync(mount.path / "Scenes/new.txt")
        assert (store / "Scenes/new.txt").read_text() == "with the new token"
    assert "first-token" not in mount.output() and "second-token" not in mount.output()


def test_omniverse_wrong_token_fails_the_mount_in_one_line(peer: NucleusPeer,
                                                           tmp_path: Path) -> None:
    peer.control(token="the-right-one")
    result = cli_mount(peer, tmp_path, {"ASSETFS_NUCLEUS_TOKEN": "a-wrong-one"})
    lines = result.stderr.strip().split("\n")
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "refused the token from $ASSETFS_NUCLEUS_TOKEN" in lines[0]
    assert "a-wrong-one" not in result.stderr + result.stdout
    assert not is_mounted(tmp_path / "cli")


def test_omniverse_token_file_readable_by_others_is_refused(peer: NucleusPeer,
                                                            tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o644)
    result = cli_mount(peer, tmp_path, {}, token_file=str(token))
    assert result.returncode == 1 and "chmod 600" in result.stderr, result.stderr
    assert len(result.stderr.strip().split("\n")) == 1


# --- checkpoints, and what the peer lacks ----------------------------------------------------
def test_omniverse_checkpoints_through_xattrs(mount: Mount) -> None:
    target = mount.path / "Scenes/versioned.txt"
    for text in ("one", "two", "three"):
        target.write_text(text)
        fsync(target)
    lines = os.getxattr(target, "user.assetfs.checkpoints").decode().splitlines()
    assert len(lines) == 3, lines
    os.setxattr(target, "user.assetfs.checkpoint", b"a note")
    for action in ("lock", "unlock"):
        with pytest.raises(OSError) as caught:
            os.setxattr(target, f"user.assetfs.{action}", b"")
        assert caught.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as caught:
        os.getxattr(target, "user.assetfs.acl")
    assert caught.value.errno == errno.EOPNOTSUPP


def test_omniverse_injected_status_is_retried_within_the_timeout(mount: Mount,
                                                                 peer: NucleusPeer) -> None:
    """Two UNAVAILABLE answers in a row: the call layer retries, the reader sees nothing;
    PERMISSION_DENIED is EACCES at once, and a refusal is not remembered."""
    peer.control(fail={"code": "UNAVAILABLE", "count": 2})
    assert (mount.path / "Scenes/deep/mesh.usda").read_text() == "#usda 1.0\n"
    peer.control(fail={"code": "PERMISSION_DENIED", "count": 100, "methods": ["ListStat"]})
    with pytest.raises(OSError) as caught:
        os.listdir(mount.path / "Textures")
    assert caught.value.errno == errno.EACCES
    peer.control(fail=None)
    assert os.listdir(mount.path / "Textures") == ["big.bin"]



# --- uploads ---------------------------------------------------------------------------------
def test_omniverse_uploads_go_eight_at_once_and_their_echoes_cost_no_call(
        peer: NucleusPeer, store: Path, tmp_path: Path) -> None:
    """Files closed together are uploaded 8 at once (the driver's declaration), the
    write's answer stands for the stat after it, and the upload's own event is recorded
    without asking the server again (docs/architecture.md, Echoes)."""
    files = 16
    source = tmp_path / "batch"
    source.mkdir()
    for i in range(files):
        (source / f"f{i:02d}.bin").write_bytes(os.urandom(20_000 + i))
    os.utime(source / "f00.bin", (1_000_000_000, 1_000_000_000))
    with mount_peer(peer, tmp_path, write_back_delay="2") as mount:
        os.listdir(mount.path / "Scenes")
        peer.control(latency=0.3)
        before = store_requests(mount)
        subprocess.run(["cp", "-rp", str(source), str(mount.path / "Scenes")], check=True)
        settle(mount)
        eventually(lambda: all((store / "Scenes/batch" / p.name).exists() for p in
                               source.iterdir()))
        time.sleep(2.0)  # the uploads' events arrive and are applied
        spent = {k: v - before.get(k, 0) for k, v in store_requests(mount).items()}
        assert peer.peak().get("Write") == 8
        assert spent.get("upload") == files
        assert spent.get("stat", 0) < files // 2, spent
        peer.control(latency=None)
        copied = mount.path / "Scenes/batch"
        for p in source.iterdir():
            assert (copied / p.name).read_bytes() == p.read_bytes()
            assert (store / "Scenes/batch" / p.name).read_bytes() == p.read_bytes()
        assert os.stat(copied / "f00.bin").st_mtime == 1_000_000_000
        assert os.getxattr(copied / "f01.bin", "user.assetfs.version")


def test_upload_content_lent_to_the_library_is_bounded(tmp_path: Path) -> None:
    """The library holds a small upload's buffer until its request is released: past the
    bound, the driver streams from the cache file instead (assetfs/drivers/nucleus.py)."""
    from assetfs.drivers.nucleus import _Lent

    source = tmp_path / "cached"
    source.write_bytes(b"x" * 60)
    lent = _Lent(limit=100)
    first = lent.read(str(source), 60)
    assert first == b"x" * 60 and lent.held == 60
    assert lent.read(str(source), 60) is None
    del first
    second = lent.read(str(source), 60)
    assert second is not None and lent.held == 60
    with pytest.raises(FileNotFoundError):
        lent.read(str(tmp_path / "gone"), 10)
    assert lent.held == 60
