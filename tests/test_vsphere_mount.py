"""Real mounts of a vSphere content library served by vcsim.

Arrange and check through the REST API (peers/vcsim_peer.py), act through the mount.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mounting import assetfs_command, fsync, mounted, wait_for
from peers.vcsim_peer import CL, PASSWORD, USER, Vcsim, running

from assetfs.drivers.vsphere import PASSWORD_ENV

POLL = 1.0
"""``-o poll_interval`` of every mount here, seconds."""


@pytest.fixture
def sim() -> Iterator[Vcsim]:
    with running() as peer:
        yield peer


@pytest.fixture
def library(sim: Vcsim) -> str:
    """Library ``lib`` with item ``iso`` holding ``a.txt`` and an empty item ``empty``."""
    lid = sim.create_library("lib")
    sim.upload(sim.create_item(lid, "iso"), "a.txt", b"hello world")
    sim.create_item(lid, "empty", "ovf")
    return lid


def mount_vsphere(
    sim: Vcsim, tmp_path: Path, name: str = "mnt", url_path: str = "/", **extra: Any
) -> Any:
    """``mounted()`` for the simulator, with a cache of its own per mount ``name``."""
    options: dict[str, str | None] = {
        "http": None,
        "poll_interval": str(POLL),
        "cache_dir": str(tmp_path / f"{name}-cache"),
        "write_back_delay": "0",
    }
    options.update(extra)
    env = {PASSWORD_ENV: PASSWORD}
    return mounted(f"vsphere://{USER}@{sim.host}{url_path}", tmp_path / name, options, env)


def file_sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def remote_file(sim: Vcsim, library: str, item: str, name: str) -> dict[str, Any] | None:
    item_id = sim.find_item(library, item)
    if item_id is None:
        return None
    return next((f for f in sim.files(item_id) if f["name"] == name), None)


def test_browse_read_and_xattrs(sim: Vcsim, library: str, tmp_path: Path) -> None:
    with mount_vsphere(sim, tmp_path) as m:
        root: Path = m.path
        assert os.listdir(root) == ["lib"]
        assert sorted(os.listdir(root / "lib")) == ["empty", "iso"]
        assert os.listdir(root / "lib" / "iso") == ["a.txt"]
        assert os.stat(root / "lib" / "iso" / "a.txt").st_size == 11
        assert (root / "lib" / "iso" / "a.txt").read_bytes() == b"hello world"
        assert os.getxattr(root / "lib" / "iso", "user.assetfs.type") == b"iso"
        assert os.getxattr(root / "lib" / "empty", "user.assetfs.type") == b"ovf"


def test_description_set_through_the_mount(sim: Vcsim, library: str, tmp_path: Path) -> None:
    """``setfattr -n user.assetfs.description`` on an item or a library folder changes the
    description on the server; the mount shows the new value at once."""
    item = sim.find_item(library, "iso")
    with mount_vsphere(sim, tmp_path) as m:
        folder = m.path / "lib" / "iso"
        os.setxattr(folder, "user.assetfs.description", "install media ü".encode())
        assert os.getxattr(folder, "user.assetfs.description").decode() == "install media ü"
        os.setxattr(m.path / "lib", "user.assetfs.description", b"team library")
        assert os.getxattr(m.path / "lib", "user.assetfs.description") == b"team library"
    assert sim.call("GET", f"{CL}/library/item/id:{item}")["description"] == "install media ü"
    assert sim.call("GET", f"{CL}/library/id:{library}")["description"] == "team library"


def test_cp_64mib_then_check_through_rest_and_fresh_mount(
    sim: Vcsim, library: str, tmp_path: Path
) -> None:
    data = os.urandom(64 * 1024 * 1024)
    src = tmp_path / "big.iso"
    src.write_bytes(data)
    expected = (len(data), hashlib.sha256(data).hexdigest())
    with mount_vsphere(sim, tmp_path, "first") as m:
        subprocess.run(["cp", str(src), str(m.path / "lib" / "iso") + "/"], check=True)
        fsync(m.path / "lib" / "iso" / "big.iso")  # returns once the upload has finished
        listed = remote_file(sim, library, "iso", "big.iso")
        assert listed is not None and listed["size"] == len(data)
    item = sim.find_item(library, "iso")
    assert item is not None
    assert [f["name"] for f in sim.files(item)].count("big.iso") == 1
    assert sim.download_sha256(item, "big.iso") == expected
    with mount_vsphere(sim, tmp_path, "second") as m:
        assert file_sha256(m.path / "lib" / "iso" / "big.iso") == expected


def test_fsync_on_the_writing_handle_uploads_what_was_written(
    sim: Vcsim, library: str, tmp_path: Path
) -> None:
    """A program that writes, fsyncs and goes on writing before it closes: the fsync's
    upload carries every byte written so far (the kernel writes them straight into the
    cache file, passthrough), and the close uploads the rest."""
    def stored() -> tuple[int, str]:
        item = sim.find_item(library, "iso")  # vcsim may rebuild the item on an update
        assert item is not None
        return sim.download_sha256(item, "log.bin")

    first, rest = os.urandom(3 * 1024 * 1024 + 5), os.urandom(1000)
    with mount_vsphere(sim, tmp_path) as m, open(m.path / "lib" / "iso" / "log.bin", "wb") as f:
        f.write(first)
        f.flush()
        os.fsync(f.fileno())
        assert stored() == (len(first), hashlib.sha256(first).hexdigest())
        f.write(rest)
    wait_for(lambda: (remote_file(sim, library, "iso", "log.bin") or {}).get("size")
             == len(first + rest), 30, "the upload at close")
    assert stored() == (len(first + rest), hashlib.sha256(first + rest).hexdigest())


def test_overwrite_through_mount_leaves_one_file(sim: Vcsim, library: str, tmp_path: Path) -> None:
    item = sim.find_item(library, "iso")
    assert item is not None
    sim.upload(item, "b.txt", b"bee")
    with mount_vsphere(sim, tmp_path) as m:
        folder = m.path / "lib" / "iso"
        assert sorted(os.listdir(folder)) == ["a.txt", "b.txt"]
        # two overwrites in one item: on vcsim each rebuilds the item, which must not make
        # the other look changed remotely (that would end in a conflict copy)
        with open(folder / "b.txt", "r+b") as b:  # b's copy starts from the listed version
            (folder / "a.txt").write_bytes(b"second version")
            fsync(folder / "a.txt")  # a's upload (a rebuild on vcsim) ends before b's starts
            b.write(b"bee, second version")
        fsync(folder / "b.txt")
        assert sorted(os.listdir(folder)) == ["a.txt", "b.txt"]
    item = sim.find_item(library, "iso")
    assert item is not None
    assert sorted(f["name"] for f in sim.files(item)) == ["a.txt", "b.txt"]
    assert sim.download_sha256(item, "a.txt")[1] == hashlib.sha256(b"second version").hexdigest()
    assert (
        sim.download_sha256(item, "b.txt")[1] == hashlib.sha256(b"bee, second version").hexdigest()
    )


def test_remote_change_visible_within_poll_interval(
    sim: Vcsim, library: str, tmp_path: Path
) -> None:
    with mount_vsphere(sim, tmp_path) as m:
        folder = m.path / "lib" / "iso"
        assert os.listdir(folder) == ["a.txt"]
        item = sim.find_item(library, "iso")
        assert item is not None
        sim.upload(item, "remote.txt", b"from REST")
        started = time.monotonic()
        wait_for(lambda: "remote.txt" in os.listdir(folder), 3 * POLL, "new remote file")
        seen_after = time.monotonic() - started
        assert (folder / "remote.txt").read_bytes() == b"from REST"
        sim.create_item(library, "new-item")
        wait_for(lambda: "new-item" in os.listdir(m.path / "lib"), 3 * POLL, "new remote item")
    assert seen_after <= 3 * POLL


def test_folders_remove_and_rename(sim: Vcsim, library: str, tmp_path: Path) -> None:
    with mount_vsphere(sim, tmp_path) as m:
        lib = m.path / "lib"
        os.mkdir(lib / "made")
        assert sim.find_item(library, "made")
        with pytest.raises(OSError) as info:
            os.mkdir(lib / "made" / "sub")
        assert info.value.errno in (errno.EOPNOTSUPP, errno.EPERM)
        os.rename(lib / "made", lib / "renamed")
        assert sim.find_item(library, "renamed") and not sim.find_item(library, "made")
        with pytest.raises(OSError) as info:
            os.rename(lib / "iso" / "a.txt", lib / "iso" / "b.txt")
        assert info.value.errno in (errno.EOPNOTSUPP, errno.EXDEV)
        for place in (m.path / "top.txt", lib / "loose.txt"):  # files live in items only
            with pytest.raises(OSError) as info:
                place.write_bytes(b"x")
            assert info.value.errno == errno.EOPNOTSUPP
        assert "loose.txt" not in os.listdir(lib) and "top.txt" not in os.listdir(m.path)
        os.remove(lib / "iso" / "a.txt")
        wait_for(lambda: remote_file(sim, library, "iso", "a.txt") is None, 30, "file removal")
        subprocess.run(["rm", "-r", str(lib / "iso")], check=True)
        wait_for(lambda: sim.find_item(library, "iso") is None, 30, "item removal")
        os.rmdir(lib / "renamed")
        assert sim.find_item(library, "renamed") is None


def _mount_fails(sim: Vcsim, tmp_path: Path, url_path: str = "/", **env: str) -> str:
    """Run ``assetfs mount`` (daemonizing) expecting failure; its one-line stderr."""
    (tmp_path / "mp").mkdir(exist_ok=True)
    proc = subprocess.run(
        assetfs_command(
            "mount",
            f"vsphere://{USER}@{sim.host}{url_path}",
            str(tmp_path / "mp"),
            "-o",
            f"http,cache_dir={tmp_path / 'c'}",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_mount_time_errors_are_one_line(sim: Vcsim, library: str, tmp_path: Path) -> None:
    assert "login refused" in _mount_fails(sim, tmp_path, **{PASSWORD_ENV: "wrong"})
    assert "no content library named 'nolib'" in _mount_fails(
        sim, tmp_path, "/nolib", **{PASSWORD_ENV: PASSWORD}
    )


READER = """
import sys
with open(sys.argv[1], "rb", buffering=0) as f:
    got = len(f.read(1 << 20))
    sys.stdout.write("started\\n")
    sys.stdout.flush()
    sys.stdin.readline()
    try:
        while chunk := f.read(1 << 20):
            got += len(chunk)
    except OSError as exc:
        print(exc.errno, got)
    else:
        print(0, got)
"""


def test_server_killed_mid_read_gives_eio_and_cached_data_stays(
    sim: Vcsim, library: str, tmp_path: Path
) -> None:
    data = os.urandom(128 * 1024 * 1024)
    item = sim.find_item(library, "iso")
    assert item is not None
    sim.upload(item, "big.iso", data)
    with mount_vsphere(sim, tmp_path, timeout="5") as m:
        folder = m.path / "lib" / "iso"
        assert (folder / "a.txt").read_bytes() == b"hello world"
        assert sorted(os.listdir(folder)) == ["a.txt", "big.iso"]  # listed: stays listable
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(folder / "big.iso")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout is not None and reader.stdin is not None
            assert reader.stdout.readline() == "started\n"
            os.kill(sim.proc.pid, signal.SIGKILL)  # the store dies mid-transfer
            sim.proc.wait()
            reader.stdin.write("go\n")
            reader.stdin.flush()
            try:
                out, _ = reader.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                m.kill()  # the daemon's death fails the stuck request; else the reader hangs
                reader.kill()
                reader.wait(timeout=10)
                pytest.fail("a read was still waiting 10 s after the store died")
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait(timeout=10)
        code, got = map(int, out.split())
        assert (code, got < len(data)) == (errno.EIO, True)
        # what is cached keeps answering while the store is down
        assert sorted(os.listdir(folder)) == ["a.txt", "big.iso"]
        assert (folder / "a.txt").read_bytes() == b"hello world"
