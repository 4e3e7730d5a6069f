"""Remote changes (made directly in the backing ``file:`` tree, i.e. on the server
side) reach a real mount through the Nucleus driver's list subscriptions within seconds
(well under a second on an idle machine: scripts/bench_coherence.py measures it), even
for a process that has already listed the folder or opened the file, although the kernel
caches entries, attributes and negative lookups for minutes (push-event defaults).

The polling path (drivers/base.py) is exercised through the one real driver that polls,
vSphere, in tests/test_vsphere_mount.py (test_remote_change_visible_within_poll_interval).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import inotify_simple
import pytest
from mounting import Mount, mounted

VISIBLE_WITHIN = 5.0
"""Seconds a server-side change may take to show through the mount here: a bound that a
loaded CI machine keeps too (the latency itself is measured by scripts/bench_coherence.py,
not asserted)."""


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "folder" / "sub").mkdir(parents=True)
    (root / "folder" / "sub" / "child.txt").write_text("child\n")
    (root / "folder" / "a.txt").write_bytes(b"A" * 10_000)
    (root / "folder" / "gone.txt").write_text("delete me\n")
    (root / "folder" / "old name.txt").write_text("renamed content\n")
    (root / "folder" / "becomes file").mkdir()
    (root / "folder" / "becomes file" / "inside.txt").write_text("inside\n")
    return root


@pytest.fixture
def mount(store: Path, tmp_path: Path) -> Iterator[Mount]:
    """A mount with the push-event defaults (long kernel timeouts, negative entries)."""
    options = {"cache_dir": str(tmp_path / "cache"), "timeout": "10"}
    with mounted(f"file://{store}", tmp_path / "mnt", options) as running:
        yield running


def status(mount: Mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.assetfs.status"))


def eventually(check: Callable[[], object], seconds: float = VISIBLE_WITHIN) -> float:
    """Poll ``check`` until it returns truthy; return the seconds it took. Fails with the
    last value (or exception) seen after ``seconds``."""
    started = time.monotonic()
    last: object = None
    while True:
        try:
            last = check()
            if last:
                return time.monotonic() - started
        except OSError as exc:
            last = exc
        if time.monotonic() - started > seconds:
            pytest.fail(f"not visible within {seconds}s; last seen: {last!r}")
        time.sleep(0.02)


def exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def listing(fd: int) -> list[str]:
    """Re-list an already open folder (os.listdir on an fd rewinds it: rewinddir)."""
    return sorted(os.listdir(fd))


def prime(mount: Mount) -> int:
    """List and stat everything once, probe a few absent names (negative entries), and
    return an open descriptor of ``folder`` held like a file manager holds it."""
    folder = mount.path / "folder"
    for root, dirs, files in os.walk(mount.path):
        for name in dirs + files:
            os.lstat(os.path.join(root, name))
    for name in ("new.txt", "new folder", "new name.txt"):
        assert not exists(folder / name)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    assert "a.txt" in listing(fd)
    return fd


def test_new_file_and_new_folder(mount: Mount, store: Path) -> None:
    fd = prime(mount)
    try:
        (store / "folder" / "new.txt").write_text("hello\n")
        (store / "folder" / "new folder").mkdir()
        folder = mount.path / "folder"
        eventually(lambda: exists(folder / "new.txt"))
        eventually(lambda: "new.txt" in os.listdir(folder))
        eventually(lambda: {"new.txt", "new folder"} <= set(listing(fd)))
        eventually(lambda: (folder / "new.txt").read_text() == "hello\n")
        eventually(lambda: stat.S_ISDIR(os.stat(folder / "new folder").st_mode))
        assert os.listdir(folder / "new folder") == []
        (store / "folder" / "new folder" / "deeper.txt").write_text("x")
        eventually(lambda: os.listdir(folder / "new folder") == ["deeper.txt"])
    finally:
        os.close(fd)


def test_same_size_content_change_reaches_open_and_new_readers(
    mount: Mount, store: Path
) -> None:
    path = mount.path / "folder" / "a.txt"
    with open(path, "rb", buffering=0) as reader:
        assert reader.read() == b"A" * 10_000  # now in the kernel page cache
        assert path.read_bytes() == b"A" * 10_000
        before = os.stat(path).st_mtime_ns
        time.sleep(0.01)
        with open(store / "folder" / "a.txt", "r+b") as server:
            server.write(b"B" * 10_000)
        eventually(lambda: os.pread(reader.fileno(), 10_000, 0) == b"B" * 10_000)
        eventually(lambda: path.read_bytes() == b"B" * 10_000)
        assert os.stat(path).st_size == 10_000
        eventually(lambda: os.stat(path).st_mtime_ns != before)


def test_change_beside_a_file_read_by_its_path_only(mount: Mount, store: Path) -> None:
    """A program reads a file by its path again and again, never listing its folder (here
    the mount's root): the kernel caches that name, so the folder is watched all the same."""
    (store / "top.txt").write_bytes(b"version 1\n")
    path = mount.path / "top.txt"
    assert path.read_bytes() == b"version 1\n"
    (store / "top.txt").write_bytes(b"version 2, longer\n")
    eventually(lambda: path.read_bytes() == b"version 2, longer\n")


def test_size_change_reaches_open_and_new_readers(mount: Mount, store: Path) -> None:
    path = mount.path / "folder" / "a.txt"
    with open(path, "rb", buffering=0) as reader:
        assert reader.read() == b"A" * 10_000
        with open(store / "folder" / "a.txt", "ab") as server:
            server.write(b"C" * 5_000)
        eventually(lambda: os.fstat(reader.fileno()).st_size == 15_000)
        eventually(lambda: os.pread(reader.fileno(), 20_000, 0) == b"A" * 10_000 + b"C" * 5_000)
        eventually(lambda: path.read_bytes() == b"A" * 10_000 + b"C" * 5_000)
        os.truncate(store / "folder" / "a.txt", 100)
        eventually(lambda: os.stat(path).st_size == 100)
        eventually(lambda: path.read_bytes() == b"A" * 100)
        eventually(lambda: os.pread(reader.fileno(), 20_000, 0) == b"A" * 100)


def test_deletion(mount: Mount, store: Path) -> None:
    fd = prime(mount)
    try:
        gone = mount.path / "folder" / "gone.txt"
        assert gone.read_text() == "delete me\n"
        (store / "folder" / "gone.txt").unlink()
        eventually(lambda: not exists(gone))
        eventually(lambda: "gone.txt" not in listing(fd))
        with pytest.raises(FileNotFoundError):
            gone.read_text()
        shutil.rmtree(store / "folder" / "sub")
        eventually(lambda: not exists(mount.path / "folder" / "sub" / "child.txt"))
        eventually(lambda: not exists(mount.path / "folder" / "sub"))
    finally:
        os.close(fd)


def test_rename(mount: Mount, store: Path) -> None:
    fd = prime(mount)
    try:
        folder = mount.path / "folder"
        assert (folder / "old name.txt").read_text() == "renamed content\n"
        os.rename(store / "folder" / "old name.txt", store / "folder" / "new name.txt")
        eventually(lambda: not exists(folder / "old name.txt"))
        eventually(lambda: (folder / "new name.txt").read_text() == "renamed content\n")
        eventually(lambda: "new name.txt" in listing(fd) and "old name.txt" not in listing(fd))
        os.rename(store / "folder" / "sub", store / "moved sub")
        eventually(lambda: (mount.path / "moved sub" / "child.txt").read_text() == "child\n")
        eventually(lambda: not exists(folder / "sub"))
    finally:
        os.close(fd)


def test_folder_replaced_by_a_file(mount: Mount, store: Path) -> None:
    fd = prime(mount)
    try:
        target = mount.path / "folder" / "becomes file"
        assert os.listdir(target) == ["inside.txt"]
        shutil.rmtree(store / "folder" / "becomes file")
        (store / "folder" / "becomes file").write_text("now a file\n")
        eventually(lambda: stat.S_ISREG(os.stat(target).st_mode))
        eventually(lambda: target.read_text() == "now a file\n")
        assert not exists(target / "inside.txt")
        assert "becomes file" in listing(fd)
    finally:
        os.close(fd)


def test_change_made_while_a_subscription_starts(mount: Mount, store: Path) -> None:
    """A folder's subscription goes live some time after the kernel looks the folder up;
    omni.client reports what changed in between only in the subscription's initial list (a
    file made 0.3 ms after list_subscribe never gets an event). Here a folder is deleted
    and made again on the store, and a file is made in it right after the mount's first
    listing of the new folder, 20 times: each file must show up. (The gap is short: on an
    idle machine most runs pass even without the initial-list check.)"""
    folder = mount.path / "folder"
    assert os.listdir(folder / "sub") == ["child.txt"]
    for attempt in range(20):
        # setting up: omni.client finds deletions by polling (~1 s), slower under load
        shutil.rmtree(store / "folder" / "sub")
        eventually(lambda: not exists(folder / "sub"), seconds=10)
        (store / "folder" / "sub").mkdir()
        eventually(lambda: exists(folder / "sub") and os.listdir(folder / "sub") == [], 10)
        name = f"early {attempt}.txt"
        (store / "folder" / "sub" / name).write_text("early\n")
        eventually(lambda name=name: os.listdir(folder / "sub") == [name])


def test_inotify_watch_sees_a_remote_deletion(mount: Mount, store: Path) -> None:
    """The invalidator deletes with ``invalidate_entry(parent, name, deleted=inode)``
    (FUSE_NOTIFY_DELETE). The kernel turns that into ``d_delete`` of the dentry, which
    reports IN_DELETE_SELF to watches on the deleted file or folder itself; it reports no
    IN_DELETE to a watch on the parent folder (Linux 6.x fuse_reverse_inval_entry calls
    no fsnotify hook for the parent), so that is not asserted."""
    folder = mount.path / "folder"
    assert os.listdir(folder / "sub") == ["child.txt"]  # the kernel knows both entries
    assert (folder / "gone.txt").read_text() == "delete me\n"
    with inotify_simple.INotify() as watcher:
        mask = inotify_simple.flags.DELETE_SELF | inotify_simple.flags.DELETE
        watches = {
            watcher.add_watch(folder / "sub", mask): "sub",
            watcher.add_watch(folder / "gone.txt", mask): "gone.txt",
        }
        shutil.rmtree(store / "folder" / "sub")
        (store / "folder" / "gone.txt").unlink()
        started = time.monotonic()
        seen: set[str] = set()
        while time.monotonic() - started < VISIBLE_WITHIN and len(seen) < 2:
            for event in watcher.read(timeout=100):
                if event.mask & inotify_simple.flags.DELETE_SELF:
                    seen.add(watches[event.wd])
        assert seen == {"sub", "gone.txt"}
    assert not exists(folder / "sub") and not exists(folder / "gone.txt")
    (store / "folder" / "sub").mkdir()  # made again: a new subscription reports its files
    eventually(lambda: os.listdir(folder / "sub") == [])
    (store / "folder" / "sub" / "again.txt").write_text("again\n")
    eventually(lambda: os.listdir(folder / "sub") == ["again.txt"])


# --- an event storm must not starve a reader -------------------------------------------
BIG = 256 << 20

STORM = """
import os, sys
from pathlib import Path
folder = Path(sys.argv[1])
names = [folder / f"f{i:05d}" for i in range(2500)]
moved = [name.with_suffix(".moved") for name in names]
changes = 0
for name in names:
    name.write_bytes(b"x")
    changes += 1
for name in names:
    with open(name, "ab") as f:
        f.write(b"yy")
    changes += 1
for name, target in zip(names, moved):
    os.rename(name, target)
    changes += 1
for index, name in enumerate(moved):
    if index % 2:
        with open(name, "r+b") as f:
            f.write(b"xyz")
    else:
        name.unlink()
    changes += 1
print(changes)
"""
"""10,000 server-side changes in one folder (create, append, rename, overwrite or delete),
run as a process of its own."""


def test_second_ls_lr_asks_the_daemon_for_no_entry(mount: Mount, store: Path) -> None:
    """With push events the kernel keeps names and attributes; answering security.* and
    system.* xattrs with EOPNOTSUPP makes ls stop asking per entry. A second ls -lR then
    costs only requests per folder: an opendir, and (where the kernel keeps listings,
    FOPEN_CACHE_DIR) the folder's attributes once as it first lists it from its cache."""
    for d in range(3):
        (store / f"tree{d}").mkdir()
        for f in range(30):
            (store / f"tree{d}" / f"f{f}.usd").write_text("x")
    subprocess.run(["ls", "-lR", str(mount.path)], check=True, capture_output=True)
    before = dict(status(mount)["requests"])
    subprocess.run(["ls", "-lR", str(mount.path)], check=True, capture_output=True)
    after = status(mount)["requests"]
    per_entry = sum(after.get(op, 0) - before.get(op, 0) for op in ("lookup", "getattr",
                                                                      "getxattr", "listxattr"))
    # 93 entries in 7 folders; what remains is per run or per folder, not per entry: the
    # root's getattr, ls asking each xattr namespace once (then remembering EOPNOTSUPP),
    # this test's status reads, and a getattr per folder listed from the kernel's cache
    assert per_entry <= 8 + 7, (before, after)


def test_folders_the_kernel_forgets_are_unwatched(mount: Mount, store: Path) -> None:
    """Subscriptions follow what the kernel knows: listed folders are watched, and when the
    kernel forgets their inodes (dentry cache dropped) their subscriptions go too."""
    for d in range(5):
        (store / f"w{d}").mkdir()
    for d in range(5):
        os.listdir(mount.path / f"w{d}")
    watched = status(mount)["events"]["watched_folders"]
    assert watched >= 5  # the five folders listed
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2")  # reclaim dentries and inodes
    eventually(lambda: status(mount)["events"]["watched_folders"] < watched)


def read_until(path: Path, done: Callable[[], bool]) -> float:
    """Read ``path`` through the daemon in 1 MiB reads, over and over (its page cache
    dropped before each pass, so every byte is a FUSE read), until ``done()`` is true at
    the end of a pass; return MiB/s."""
    buffer = bytearray(1 << 20)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            f.seek(0)
            while n := f.readinto(buffer):
                total += n
            if done():
                return total / (1 << 20) / (time.perf_counter() - started)


def for_seconds(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() > deadline


def storm_read(mount: Mount, folder: Path) -> tuple[float, float]:
    """Run :data:`STORM` in ``folder`` while reading ``big.bin`` through the mount, until
    the storm is over and the daemon has taken every event (no new one for 0.3 s).
    Returns (MiB/s, seconds). The storm stands in for a remote server, whose work costs
    the client nothing: it runs at the lowest CPU priority, so on a small machine it
    takes idle CPU rather than the reader's (the daemon's work for the events, omni.client
    threads included, is what is measured)."""
    started = time.monotonic()
    storm = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", STORM, str(folder)],
                             stdout=subprocess.PIPE, text=True)
    quiet = {"received": -1, "since": time.monotonic()}

    def caught_up() -> bool:
        if storm.poll() is None:
            return False
        received = status(mount)["events"]["received"]
        if received != quiet["received"]:
            quiet.update(received=received, since=time.monotonic())
        return time.monotonic() - quiet["since"] > 0.3

    busy = read_until(mount.path / "big.bin", caught_up)
    out, _ = storm.communicate(timeout=60)
    assert storm.returncode == 0 and out.split() == ["10000"], out
    return busy, time.monotonic() - started


def test_event_storm_does_not_starve_a_reader(store: Path, tmp_path: Path) -> None:
    """10,000 remote changes while another process reads a large file through the mount:
    no hang, no error, the reader keeps going, and every change is applied. The reader's
    throughput against an idle mount (the issue's 2x bar) is a speed target, measured by
    scripts/bench_coherence.py, not asserted here."""
    with open(store / "big.bin", "wb") as f:
        f.truncate(BIG)
    # the reader's reads must come to the daemon, as the storm's events do: with passthrough
    # the kernel would read the store's file itself (and as a CPU hog on a small machine,
    # outrun the library's event delivery that "caught up" waits for)
    options = {"cache_dir": str(tmp_path / "cache"), "timeout": "10", "passthrough": "no"}
    with mounted(f"file://{store}", tmp_path / "mnt", options) as mount:
        read_until(mount.path / "big.bin", lambda: True)
        folder = store / "storm"
        folder.mkdir()
        assert os.listdir(mount.path / folder.name) == []  # watched from now on
        received = status(mount)["events"]["received"]
        idle = read_until(mount.path / "big.bin", for_seconds(1.5))
        busy, seconds = storm_read(mount, folder)
        print(f"storm: reader {busy:.0f} MiB/s vs {idle:.0f} idle, {seconds:.1f}s")
        assert seconds < 60 and busy > 0
        assert status(mount)["events"]["received"] - received >= 10_000
        left = sorted(f"f{i:05d}.moved" for i in range(1, 2500, 2))
        eventually(lambda: sorted(os.listdir(mount.path / folder.name)) == left)
        moved = mount.path / folder.name / "f00001.moved"
        eventually(lambda: moved.read_bytes() == b"xyz")
        assert status(mount)["events"]["state"] == "live"
        assert "Traceback" not in mount.output()
