"""The core daemon with the Nucleus driver, used through a real FUSE mount by ordinary tools:
on omni.client's file: provider and on omniverse:// through the Storage API peer
(tests/peers/nucleus_peer.py), which serves the same folder (test ids end in [file] or
[omniverse])."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mounting import Mount, is_mounted, mounted
from nucleus_fixtures import nucleus_peer

NAMES = ["plain.txt", "with space.usd", "ünïcödé ✓.mdl", "hash#percent%q.txt", "empty"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """relative path -> (kind, size, sha256) for everything under root."""
    found: dict[str, tuple[str, int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = ("dir", 0, "")
        for name in files:
            path = Path(folder, name)
            found[os.path.relpath(path, root)] = ("file", path.stat().st_size, sha256(path))
    return found


def make_tree(root: Path) -> None:
    (root / "Scenes" / "Küche" / "deep").mkdir(parents=True)
    (root / "Textures").mkdir()
    (root / "empty folder").mkdir()
    for i, name in enumerate(NAMES):
        (root / "Scenes" / name).write_bytes(os.urandom(i * 1000))
    (root / "Scenes" / "Küche" / "deep" / "mesh.usda").write_text("#usda 1.0\n")
    (root / "Textures" / "big.exr").write_bytes(os.urandom(5 * (1 << 20) + 123))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    make_tree(root)
    return root


@dataclass
class Served:
    """How ``store`` is mounted: its URL and the options that reach it."""

    provider: str
    url: str
    options: dict[str, str] = field(default_factory=dict)


@pytest.fixture(params=["file", "omniverse"])
def served(request: pytest.FixtureRequest, store: Path, tmp_path: Path) -> Iterator[Served]:
    """``store`` through omni.client's file: provider, or served by the Storage API peer."""
    if request.param == "file":
        yield Served("file", f"file://{store}")
        return
    with nucleus_peer(store, tmp_path / "peer") as peer:
        yield Served("omniverse", peer.url, {"discovery": peer.discovery})


@pytest.fixture
def mount(served: Served, tmp_path: Path) -> Iterator[Mount]:
    options = {"cache_dir": str(tmp_path / "cache"), "write_back_delay": "0.2", "timeout": "10",
               **served.options}
    with mounted(served.url, tmp_path / "mnt", options) as running:
        yield running


def wait_for(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def settle(mount: Mount) -> None:
    """Wait until every write through the mount is uploaded."""
    wait_for(lambda: not status(mount)["dirty_files"], 20)


def status(mount: Mount) -> dict:
    import json

    return json.loads(os.getxattr(mount.path, "user.assetfs.status"))


# --- reading ------------------------------------------------------------------------
def test_listing_and_content_match_the_store(mount: Mount, store: Path) -> None:
    assert snapshot(mount.path) == snapshot(store)


def test_stat_shows_sizes_mtimes_kinds_and_modes(mount: Mount, store: Path) -> None:
    for rel in ["Scenes/with space.usd", "Textures/big.exr", "Scenes/empty"]:
        ours, theirs = (mount.path / rel).stat(), (store / rel).stat()
        assert ours.st_size == theirs.st_size
        assert abs(ours.st_mtime_ns - theirs.st_mtime_ns) < 1_000  # omni.client gives µs
        assert oct(ours.st_mode) == "0o100644"
    folder = (mount.path / "Scenes").stat()
    assert oct(folder.st_mode) == "0o40755"
    assert sorted(os.listdir(mount.path / "Scenes")) == sorted([*NAMES, "Küche"])


def test_ordinary_tools_read_the_mount(mount: Mount, store: Path, tmp_path: Path) -> None:
    out = subprocess.run(["find", ".", "-type", "f"], cwd=mount.path, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert "./Scenes/Küche/deep/mesh.usda" in out
    sums = subprocess.run(["sha256sum", "Textures/big.exr"], cwd=mount.path, check=True,
                          capture_output=True, text=True).stdout.split()[0]
    assert sums == sha256(store / "Textures/big.exr")
    subprocess.run(["cp", "-r", str(mount.path / "Scenes"), str(tmp_path / "copy")], check=True)
    assert snapshot(tmp_path / "copy") == snapshot(store / "Scenes")
    subprocess.run(["rsync", "-a", f"{mount.path}/", str(tmp_path / "rsynced")], check=True)
    assert snapshot(tmp_path / "rsynced") == snapshot(store)
    tar = subprocess.run(["tar", "c", "."], cwd=mount.path, capture_output=True, check=True)
    names = subprocess.run(["tar", "t"], input=tar.stdout, capture_output=True, check=True)
    assert b"./Textures/big.exr" in names.stdout


def test_partial_reads_at_any_offset(mount: Mount, store: Path) -> None:
    data = (store / "Textures/big.exr").read_bytes()
    with open(mount.path / "Textures/big.exr", "rb") as f:
        for offset in (0, 1, 4095, 131071, 1 << 20, len(data) - 10, len(data), len(data) + 5):
            f.seek(offset)
            assert f.read(70000) == data[offset : offset + 70000]


# --- writing ------------------------------------------------------------------------
def test_create_overwrite_append_truncate(mount: Mount, store: Path) -> None:
    target = mount.path / "Scenes" / "new ü.txt"
    target.write_bytes(b"first version\n")
    assert target.read_bytes() == b"first version\n"
    target.write_bytes(b"second\n")
    with open(target, "ab") as f:
        f.write(b"appended\n")
    assert target.read_bytes() == b"second\nappended\n"
    os.truncate(target, 3)
    assert target.read_bytes() == b"sec"
    with open(mount.path / "Textures/big.exr", "r+b") as f:
        f.seek(1000)
        f.write(b"PATCH")
    settle(mount)
    assert (store / "Scenes" / "new ü.txt").read_bytes() == b"sec"
    patched = (store / "Textures/big.exr").read_bytes()
    assert patched[1000:1005] == b"PATCH" and len(patched) == 5 * (1 << 20) + 123


def test_fsync_uploads_before_returning(mount: Mount, store: Path) -> None:
    payload = os.urandom(300_000)
    with open(mount.path / "fsynced.bin", "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
        assert (store / "fsynced.bin").read_bytes() == payload
    # not private to the daemon's user (omni.client's copy derives the mode from ours)
    assert (store / "fsynced.bin").stat().st_mode & 0o640 == 0o640


def test_tools_write_through_the_mount(mount: Mount, store: Path, tmp_path: Path) -> None:
    source = tmp_path / "local"
    make_tree(source)
    subprocess.run(["cp", "-r", str(source), str(mount.path / "copied")], check=True)
    subprocess.run(["rsync", "-a", f"{source}/", str(mount.path / "rsynced")], check=True)
    subprocess.run(["mkdir", "-p", str(mount.path / "a/b/c")], check=True)
    subprocess.run(["touch", str(mount.path / "a/b/c/touched")], check=True)
    subprocess.run(["truncate", "-s", "12345", str(mount.path / "a/b/c/sized")], check=True)
    settle(mount)
    assert snapshot(store / "copied") == snapshot(source)
    assert snapshot(store / "rsynced") == snapshot(source)
    assert (store / "a/b/c/touched").stat().st_size == 0
    assert (store / "a/b/c/sized").read_bytes() == b"\0" * 12345


def test_rename_and_delete(mount: Mount, store: Path) -> None:
    subprocess.run(["mv", str(mount.path / "Scenes/plain.txt"),
                    str(mount.path / "Textures/moved.txt")], check=True)
    subprocess.run(["mv", str(mount.path / "Scenes"), str(mount.path / "Renamed Scenes")],
                   check=True)
    (mount.path / "fresh.txt").write_text("not yet uploaded")
    os.rename(mount.path / "fresh.txt", mount.path / "Textures/fresh.txt")
    assert (mount.path / "Textures/fresh.txt").read_text() == "not yet uploaded"
    settle(mount)
    assert not (store / "Scenes").exists()
    assert (store / "Renamed Scenes/Küche/deep/mesh.usda").read_text() == "#usda 1.0\n"
    assert (store / "Textures/moved.txt").stat().st_size == 0
    assert (store / "Textures/fresh.txt").read_text() == "not yet uploaded"
    assert not (store / "fresh.txt").exists()
    os.unlink(mount.path / "Textures/moved.txt")
    subprocess.run(["rm", "-r", str(mount.path / "Renamed Scenes")], check=True)
    os.rmdir(mount.path / "empty folder")
    assert sorted(os.listdir(mount.path)) == ["Textures"]
    assert sorted(os.listdir(store)) == ["Textures"]
    assert not (store / "Textures/moved.txt").exists()


def test_rename_replaces_an_existing_file(mount: Mount, store: Path) -> None:
    (mount.path / "doc.tmp").write_text("new content")
    (mount.path / "doc.txt").write_text("old content")
    settle(mount)
    os.rename(mount.path / "doc.tmp", mount.path / "doc.txt")  # an editor's save
    assert (mount.path / "doc.txt").read_text() == "new content"
    settle(mount)
    assert (store / "doc.txt").read_text() == "new content"
    assert not (store / "doc.tmp").exists()


# --- errors exactly where POSIX puts them ---------------------------------------------
def expect(code: int, fn, *args) -> None:
    with pytest.raises(OSError) as caught:
        fn(*args)
    assert caught.value.errno == code, os.strerror(caught.value.errno or 0)


def test_posix_errors(mount: Mount) -> None:
    m = mount.path
    expect(errno.ENOENT, open, m / "missing.txt")
    expect(errno.ENOENT, os.stat, m / "no/such/dir")
    expect(errno.ENOENT, os.unlink, m / "missing.txt")
    expect(errno.ENOTDIR, os.stat, m / "Scenes/plain.txt/x")
    expect(errno.ENOTDIR, os.mkdir, m / "Scenes/plain.txt/x")
    expect(errno.ENOTDIR, os.listdir, m / "Scenes/plain.txt")
    expect(errno.ENOTDIR, os.rmdir, m / "Scenes/plain.txt")
    expect(errno.EISDIR, open, m / "Scenes", "w")
    expect(errno.EISDIR, os.unlink, m / "Scenes")
    expect(errno.EISDIR, os.rename, m / "Scenes/plain.txt", m / "Textures")
    expect(errno.ENOTDIR, os.rename, m / "empty folder", m / "Scenes/plain.txt")
    expect(errno.ENOTEMPTY, os.rmdir, m / "Scenes")
    expect(errno.ENOTEMPTY, os.rename, m / "empty folder", m / "Textures")
    expect(errno.EEXIST, os.mkdir, m / "Scenes")
    expect(errno.EEXIST, os.open, m / "Scenes/plain.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect(errno.EINVAL, os.rename, m / "Scenes", m / "Scenes/Küche/inside")


def test_permission_denied_for_other_users(store: Path, tmp_path: Path) -> None:
    """With allow_other, the kernel checks the modes the mount shows (default_permissions):
    a user who is not the owner cannot write a 0644 file or create in a 0755 folder."""
    import tempfile

    options = {"cache_dir": str(tmp_path / "cache"), "allow_other": None}
    reachable = Path(tempfile.mkdtemp(prefix="assetfs-perm-"))  # pytest's tmp is 0700
    reachable.chmod(0o755)
    with mounted(f"file://{store}", reachable / "mnt", options) as m:
        script = (
            "import errno, os, sys\n"
            "codes = []\n"
            "for fn in (lambda: open(sys.argv[1] + '/Scenes/plain.txt', 'a'),\n"
            "           lambda: open(sys.argv[1] + '/Scenes/new.txt', 'w')):\n"
            "    try: fn(); codes.append(0)\n"
            "    except OSError as e: codes.append(e.errno)\n"
            "print(open(sys.argv[1] + '/Scenes/Küche/deep/mesh.usda').read().strip())\n"
            "print(codes)\n"
        )
        result = subprocess.run(
            ["python3", "-c", script, str(m.path)], capture_output=True, text=True,
            user=65534, group=65534,
        )
    shutil.rmtree(reachable)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["#usda 1.0", f"[{errno.EACCES}, {errno.EACCES}]"]


def test_store_metadata_and_unsupported_actions(mount: Mount, served: Served) -> None:
    """The file: provider has no checkpoints, locks or ACLs; the Storage API peer has
    checkpoints (its versioning service) and neither locks nor ACLs."""
    target = mount.path / "Scenes/with space.usd"
    assert os.getxattr(target, "user.assetfs.version").decode() != ""
    assert "user.assetfs.version" in os.listxattr(target)
    expect(errno.ENODATA, os.getxattr, target, "user.assetfs.nope")
    checkpoints = served.provider == "omniverse"
    for action in ("lock", "unlock", *(() if checkpoints else ("checkpoint",))):
        expect(errno.EOPNOTSUPP, os.setxattr, target, f"user.assetfs.{action}", b"note")
    expect(errno.EOPNOTSUPP, os.getxattr, target, "user.assetfs.acl")
    if checkpoints:
        os.setxattr(target, "user.assetfs.checkpoint", b"note")
        assert os.getxattr(target, "user.assetfs.checkpoints").decode().count("\n") == 1
    else:
        for nucleus_only in ("acl", "checkpoints"):
            expect(errno.EOPNOTSUPP, os.getxattr, target, f"user.assetfs.{nucleus_only}")
            assert f"user.assetfs.{nucleus_only}" not in os.listxattr(target)


def test_fsync_reports_upload_errors(mount: Mount, store: Path) -> None:
    (mount.path / "will break").mkdir()
    with open(mount.path / "will break/file.bin", "wb") as f:
        f.write(b"x" * 1000)
        shutil.rmtree(store / "will break")
        (store / "will break").write_text("a file where the folder was")
        with pytest.raises(OSError):
            os.fsync(f.fileno())
    # it can never be uploaded: leave it in the journal at exit (as umount --no-flush does)
    os.setxattr(mount.path, "user.assetfs.umount_timeout", b"0")


# --- the command line ----------------------------------------------------------------
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    from mounting import assetfs_command

    return subprocess.run(assetfs_command(*args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def assert_clean_failure(result: subprocess.CompletedProcess[str], words: str,
                         mountpoint: Path) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "not a URL"),
        ("gopher://host/x", "unknown URL scheme 'gopher'"),
        ("file://relative/path", "absolute path"),
        ("omniverse:///Projects", "no server"),
        ("file:///nonexistent/assetfs/path", "ERROR_NOT_FOUND"),
    ],
)
def test_bad_urls_fail_cleanly(url: str, words: str, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    result = cli("mount", url, str(tmp_path / "mnt"), "-o", f"cache_dir={tmp_path}/cache")
    assert_clean_failure(result, words, tmp_path / "mnt")


def test_bad_mountpoints_fail_cleanly(store: Path, tmp_path: Path) -> None:
    url = f"file://{store}"
    result = cli("mount", url, str(tmp_path / "missing"))
    assert_clean_failure(result, "does not exist", tmp_path / "missing")
    (tmp_path / "a file").write_text("x")
    result = cli("mount", url, str(tmp_path / "a file"))
    assert_clean_failure(result, "not a directory", tmp_path / "a file")
    with mounted(url, tmp_path / "mnt", {"cache_dir": str(tmp_path / "c1")}) as m:
        result = cli("mount", url, str(m.path), "-o", f"cache_dir={tmp_path}/c2")
        assert result.returncode == 1 and "already a mount point" in result.stderr
        assert sorted(os.listdir(m.path)) == sorted(os.listdir(store))


def test_missing_fuse_device_fails_cleanly(store: Path, tmp_path: Path) -> None:
    from mounting import assetfs_command

    (tmp_path / "mnt").mkdir()
    command = " ".join(f"'{a}'" for a in assetfs_command("mount", f"file://{store}",
                                                          str(tmp_path / "mnt")))
    result = subprocess.run(["unshare", "--mount", "sh", "-c",
                             f"mount -t tmpfs none /dev && exec {command}"],
                            capture_output=True, text=True, timeout=60)
    assert_clean_failure(result, "/dev/fuse does not exist", tmp_path / "mnt")


def test_missing_omni_client_library_fails_cleanly(store: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    code = ("import sys; sys.modules['omni'] = None; from assetfs.cli import main; "
            f"sys.exit(main(['mount', 'file://{store}', '{tmp_path / 'mnt'}']))")
    result = subprocess.run([sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=60)
    assert_clean_failure(result, "pip install 'assetfs[nucleus]'", tmp_path / "mnt")


def test_background_mount_status_and_umount(store: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = cli("mount", f"file://{store}", str(mnt), "-o",
                 f"cache_dir={tmp_path}/cache,write_back_delay=30")
    assert result.returncode == 0, result.stderr
    try:
        assert is_mounted(mnt)
        (mnt / "queued.txt").write_text("uploaded by umount")
        shown = cli("status", str(mnt))
        assert "dirty files: 1" in shown.stdout and f"file://{store}" in shown.stdout
        assert "event loop: longest step" in shown.stdout
        pid = int(shown.stdout.split("pid ")[1].split(")")[0])
        done = cli("umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert "waiting for 1 uploads" in done.stdout
        assert not is_mounted(mnt)
        assert (store / "queued.txt").read_text() == "uploaded by umount"
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_fusermount_unmount_stops_the_daemon(store: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = cli("mount", f"file://{store}", str(mnt), "-o", f"cache_dir={tmp_path}/cache")
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split("pid ")[1].split(",")[0])
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    assert not is_mounted(mnt)


def test_unreachable_server_fails_within_the_timeout(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    started = time.monotonic()
    result = cli("mount", "omniverse://127.0.0.1:9/Projects", str(tmp_path / "mnt"),
                 "-o", f"timeout=2,cache_dir={tmp_path}/cache")
    assert time.monotonic() - started < 30
    assert_clean_failure(result, "no answer in 2s", tmp_path / "mnt")


def test_fstab_mount_helper(store: Path, tmp_path: Path) -> None:
    """What `mount -t fuse.assetfs URL MP -o ...` runs: fstab-only and systemd options are
    dropped (the mount refuses options nobody declared)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    helper = Path(sys.executable).parent / "mount.fuse.assetfs"
    result = subprocess.run([str(helper), f"file://{store}", str(mnt), "-o",
                             f"rw,noauto,_netdev,x-systemd.automount,comment=systemd.x,"
                             f"cache_dir={tmp_path}/cache"],
                            capture_output=True, text=True, timeout=60)
    try:
        assert result.returncode == 0, result.stderr
        assert (mnt / "Scenes/Küche/deep/mesh.usda").read_text() == "#usda 1.0\n"
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    wait_for(lambda: not is_mounted(mnt))


def test_mtimes_set_by_tools_are_kept(mount: Mount, store: Path, served: Served,
                                      tmp_path: Path) -> None:
    """The store sets its own mtime on upload; what touch -d / rsync -a set is shown, so a
    second rsync -a transfers nothing; it survives a remount, until the store changes."""
    source = tmp_path / "local"
    make_tree(source)
    subprocess.run(["rsync", "-a", f"{source}/", str(mount.path / "synced")], check=True)
    settle(mount)
    rerun = subprocess.run(["rsync", "-a", "--stats", f"{source}/", str(mount.path / "synced")],
                           check=True, capture_output=True, text=True).stdout
    assert "Number of regular files transferred: 0" in rerun, rerun
    for rel in ("Scenes/with space.usd", "Textures/big.exr"):
        assert (mount.path / "synced" / rel).stat().st_mtime_ns // 1000 == \
            (source / rel).stat().st_mtime_ns // 1000
    clean = mount.path / "Scenes/plain.txt"
    os.utime(clean, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    assert clean.stat().st_mtime_ns == 1_600_000_000_000_000_000
    subprocess.run(["fusermount3", "-u", str(mount.path)], check=True)
    mount.proc.wait(timeout=30)
    options = {"cache_dir": str(tmp_path / "cache"), **served.options}
    with mounted(served.url, tmp_path / "again", options) as again:  # kept on disk
        assert (again.path / "Scenes/plain.txt").stat().st_mtime_ns == 1_600_000_000_000_000_000
        assert (again.path / "synced/Textures/big.exr").stat().st_mtime_ns // 1000 == \
            (source / "Textures/big.exr").stat().st_mtime_ns // 1000
        clean = again.path / "Scenes/plain.txt"
        (store / "Scenes/plain.txt").write_text("changed on the store")
        wait_for(lambda: clean.stat().st_mtime_ns != 1_600_000_000_000_000_000)


def test_unchanged_files_are_reread_from_the_page_cache(mount: Mount) -> None:
    """open() keeps the kernel page cache while the version is unchanged (keep_cache): a
    second read of a file sends no read request to the daemon; a change on our side does."""
    big = mount.path / "Textures/big.exr"
    first = big.read_bytes()
    reads = status(mount)["requests"].get("read", 0)
    assert big.read_bytes() == first
    assert status(mount)["requests"].get("read", 0) == reads
    with open(big, "r+b") as f:
        f.write(b"NEW")
    assert big.read_bytes()[:3] == b"NEW"
