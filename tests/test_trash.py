"""``-o trash=local`` through real mounts and GIO's own trash: ``gio trash`` moves files and
folders into a trash on this machine, ``gio trash --list/--restore/--empty`` (gvfs' trash
backend, on a private D-Bus session bus) see and act on it, and no ``.Trash*`` name ever
reaches the store (docs/desktop.md). Stores: omni.client's ``file:`` provider (its read
mode is the library's local copy) and memory:// (ranged reads), the latter refusing every
``.Trash*`` name, so that any call for one that reached it would fail the test."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from mounting import fsync, mounted, stop_process, wait_for
from peers.vcsim_peer import PASSWORD, USER, running

from assetfs import errors
from assetfs.drivers.base import ChangeEvent

UID = os.getuid()
TRASH = f".Trash-{UID}"


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid`` and by them (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a desktop session of its own: home, runtime folder and a private
    D-Bus session bus (gvfs' daemons start on it when ``gio`` asks for ``trash:``). The bus
    and what it started are stopped by pid."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    (home / ".cache").mkdir(parents=True)
    runtime.mkdir(mode=0o700)
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address",
                            f"--address=unix:path={runtime}/bus"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        assert address.startswith("unix:"), "dbus-daemon did not start"
        yield {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime),
               "XDG_DATA_HOME": str(home / ".local" / "share"),
               "DBUS_SESSION_BUS_ADDRESS": address, "GIO_USE_VFS": "gvfs"}
    finally:
        started = descendants(bus.pid)
        stop_process(bus)  # type: ignore[arg-type]
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def gio(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["gio", *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"gio {' '.join(args)}: {done.stderr}"
    return done.stdout


def trash_list(env: dict[str, str]) -> dict[str, str]:
    """``gio trash --list``: original path -> the item's trash: URI."""
    items = {}
    for line in gio(env, "trash", "--list").splitlines():
        uri, original = line.split("\t")
        items[original] = uri
    return items


def trash_names(store: Path) -> list[str]:
    """The paths on the store that are or are under a ``.Trash*`` name."""
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*")
                  if ".Trash" in p.relative_to(store).as_posix())


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> content (None for a folder), below ``root``."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


def local_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def flush(mountpoint: Path) -> None:
    """Start every pending upload now (the mount's ``user.assetfs.flush``)."""
    os.setxattr(mountpoint, "user.assetfs.flush", b"1")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "Project" / "shots").mkdir(parents=True)
    (root / "Project" / "scene.usd").write_bytes(os.urandom(200_000))
    (root / "Project" / "shots" / "sh010.exr").write_bytes(os.urandom(1_500_000))
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "keep.txt").write_text("stays\n")
    return root


def test_gio_trash_and_restore_with_a_local_trash(store: Path, tmp_path: Path,
                                                  desktop: dict[str, str]) -> None:
    """A file of the store, a folder and a file written but not uploaded yet go to the
    trash: gone from the mount and the store, listed by ``gio trash --list``, kept in the
    cache directory (and still there after a remount), restored with the same bytes (and
    uploaded again), and ``--empty`` frees the local space. The store never holds a
    ``.Trash*`` name, and its own old ``.Trash-$uid`` stays unseen."""
    original = tree(store)
    (store / TRASH / "files").mkdir(parents=True)  # the store's own, from trash=server days
    (store / TRASH / "files" / "old.txt").write_text("from the server days\n")
    (store / ".Trash-1234").mkdir()  # someone else's
    before = trash_names(store)
    cache = tmp_path / "cache"
    local_trash = cache / "trash" / TRASH
    opts = {"cache_dir": str(cache), "trash": "local", "write_back_delay": "60",
            "timeout": "10"}
    mnt = tmp_path / "mnt"
    draft = os.urandom(700_000)
    with mounted(f"file://{store}", mnt, opts) as m:
        assert not (m.path / TRASH).exists() and ".Trash-1234" not in os.listdir(m.path)
        for other in (".Trash", ".Trash-1234"):
            with pytest.raises(PermissionError):
                (m.path / other).mkdir()
        (m.path / "draft.bin").write_bytes(draft)
        assert not (store / "draft.bin").exists()  # not uploaded (write_back_delay)
        for name in ("big.bin", "Project", "draft.bin"):
            gio(desktop, "trash", str(m.path / name))
            assert trash_names(store) == before
        assert sorted(os.listdir(m.path)) == [TRASH, "keep.txt"]
        assert sorted(p.name for p in store.iterdir()) == sorted([".Trash-1234", TRASH, "keep.txt"])
        listed = trash_list(desktop)
        assert sorted(listed) == sorted(str(m.path / n) for n in ("Project", "big.bin",
                                                                  "draft.bin")), listed
        assert (m.path / TRASH / "files" / "big.bin").read_bytes() == original["big.bin"]
        assert (m.path / TRASH / "files" / "draft.bin").read_bytes() == draft
        flush(m.path)  # the trashed content lands in the local trash folder
        wait_for(lambda: (local_trash / "files" / "draft.bin").exists()
                 and (local_trash / "files" / "Project" / "shots" / "sh010.exr").exists()
                 and (local_trash / "files" / "big.bin").exists(), 30, "the local trash")
        assert (local_trash / "files" / "big.bin").read_bytes() == original["big.bin"]
        assert trash_names(store) == before
    # a remount finds the trash where it was
    with mounted(f"file://{store}", mnt, opts) as m:
        listed = trash_list(desktop)
        assert sorted(listed) == sorted(str(m.path / n) for n in ("Project", "big.bin",
                                                                  "draft.bin")), listed
        assert "old.txt" not in os.listdir(m.path / TRASH / "files")
        for uri in listed.values():
            gio(desktop, "trash", "--restore", uri)
            assert trash_names(store) == before
        assert trash_list(desktop) == {}
        assert (m.path / "draft.bin").read_bytes() == draft
        assert tree(m.path / "Project") == {
            k.removeprefix("Project/"): v for k, v in original.items()
            if k.startswith("Project/")}
        assert (m.path / "big.bin").read_bytes() == original["big.bin"]
        flush(m.path)  # the restored files are uploaded like new ones
        wait_for(lambda: (store / "draft.bin").exists()
                 and (store / "Project" / "shots" / "sh010.exr").exists()
                 and (store / "big.bin").exists(), 30, "the uploads of the restored files")
        assert local_bytes(local_trash) == 0
        # empty the trash: its local space is freed, the store loses the file
        gio(desktop, "trash", str(m.path / "big.bin"))
        flush(m.path)
        wait_for(lambda: (local_trash / "files" / "big.bin").exists(), 30, "the trashed file")
        gio(desktop, "trash", "--empty")
        assert trash_list(desktop) == {}
        assert os.listdir(m.path / TRASH / "files") == []
        assert trash_names(store) == before
    assert local_bytes(local_trash) == 0
    wanted = {k: v for k, v in original.items() if k != "big.bin"}
    assert {k: v for k, v in tree(store).items() if k not in before} == \
        {**wanted, "draft.bin": draft}
    assert trash_names(store) == before


def test_local_trash_on_a_store_that_refuses_trash_names(tmp_path: Path,
                                                         desktop: dict[str, str]) -> None:
    """memory:// with ranged reads, refusing any ``.Trash*`` name: trashing a folder (one
    of its files changed through the mount and not uploaded yet) and a file read in part,
    restoring the folder and emptying the rest all work, and the store ends with the
    restored folder, the change included, and without the emptied file."""
    seed = tmp_path / "seed"
    (seed / "lib" / "tex").mkdir(parents=True)
    (seed / "lib" / "tex" / "wood.png").write_bytes(os.urandom(300_000))
    (seed / "lib" / "notes.txt").write_text("notes\n")
    (seed / "old.mov").write_bytes(os.urandom(2 << 20))
    dump = tmp_path / "dump"
    opts = {"cache_dir": str(tmp_path / "cache"), "trash": "local", "write_back_delay": "60",
            "timeout": "10", "seed": str(seed), "dump": str(dump), "reject": r"^\.Trash"}
    with mounted(f"memory://{tmp_path.name}/", tmp_path / "mnt", opts) as m:
        assert (m.path / "old.mov").read_bytes()[:4096] == (seed / "old.mov").read_bytes()[:4096]
        with open(m.path / "lib" / "notes.txt", "a") as notes:
            notes.write("more notes\n")
        gio(desktop, "trash", str(m.path / "lib"), str(m.path / "old.mov"))
        assert sorted(os.listdir(m.path)) == [TRASH]
        listed = trash_list(desktop)
        assert sorted(listed) == [str(m.path / "lib"), str(m.path / "old.mov")]
        gio(desktop, "trash", "--restore", listed[str(m.path / "lib")])
        (seed / "lib" / "notes.txt").write_text("notes\nmore notes\n")  # what is expected
        assert tree(m.path / "lib") == tree(seed / "lib")
        gio(desktop, "trash", "--empty")
        assert trash_list(desktop) == {}
        assert sorted(os.listdir(m.path)) == [TRASH, "lib"]
    assert tree(dump) == {"lib": None, **{f"lib/{k}": v for k, v in tree(seed / "lib").items()}}


def test_folders_changed_through_the_mount_show_a_newer_mtime(store: Path,
                                                              tmp_path: Path) -> None:
    """A folder's modification time moves when names in it change through the mount, as
    on a local disk (GIO's trash looks at a trash folder again only when it moved)."""
    opts = {"cache_dir": str(tmp_path / "cache"), "write_back_delay": "60", "timeout": "10"}
    with mounted(f"file://{store}", tmp_path / "mnt", opts) as m:
        folder = m.path / "Project"
        times = [folder.stat().st_mtime_ns]
        for change in (lambda: (folder / "new.txt").write_text("x"),
                       lambda: (folder / "new.txt").rename(folder / "renamed.txt"),
                       lambda: (folder / "renamed.txt").unlink(),
                       lambda: (folder / "sub").mkdir(),
                       lambda: (folder / "sub").rmdir()):
            time.sleep(0.01)
            change()
            times.append(folder.stat().st_mtime_ns)
        assert times == sorted(set(times)), times


async def test_the_routed_driver_keeps_local_paths_off_the_store(tmp_path: Path) -> None:
    """Below the VFS (assetfs/routing.py): calls for the local trash go to the local folder,
    the top listing shows the local trash and not a store folder of that name, and the
    store's change events about that name never come out."""
    from assetfs.drivers.localdir import LocalFolder
    from assetfs.drivers.memory import STORES, MemoryDriver, free_name
    from assetfs.routing import Routed
    from assetfs.vfs.trash import TrashPolicy

    name = free_name()
    store, other = MemoryDriver(f"memory://{name}/", {}), MemoryDriver(f"memory://{name}/", {})
    routed = Routed(store, LocalFolder(tmp_path / "t", tmp_path / "p"),
                    TrashPolicy("local", UID).local)
    send, receive = trio.open_memory_channel[ChangeEvent](100)
    try:
        await routed.connect()
        await routed.mkdir(f"/{TRASH}")
        assert (tmp_path / "t" / TRASH).is_dir() and await other.list("/") == []
        async with trio.open_nursery() as nursery:
            routed.watch("/")
            nursery.start_soon(routed.run_events, send)
            with trio.fail_after(30):
                await routed.events_ready.wait()
                await other.mkdir(f"/{TRASH}")  # another client makes one on the store
                await other.mkdir("/real")
                events = []
                while not any(e.path == "/real" for e in events):
                    events.append(await receive.receive())
            nursery.cancel_scope.cancel()
        assert not [e for e in events if e.path.startswith(f"/{TRASH}")
                    or any(x.name == TRASH for x in e.listing)], events
        top = {e.name: e for e in await routed.list("/")}
        assert sorted(top) == sorted(["real", TRASH]) and top[TRASH].mode == 0o700
        with pytest.raises(errors.CrossDevice):
            await routed.rename("/real", f"/{TRASH}/real")
    finally:
        await routed.close()
        STORES.pop(name, None)


def test_a_file_too_big_for_the_cache_is_not_half_trashed(store: Path, tmp_path: Path,
                                                          desktop: dict[str, str]) -> None:
    """A file larger than the cache may hold dirty (``cache_max``) cannot be moved into the
    local trash: ``gio trash`` fails with ENOSPC, and the file stays on the store and in
    the mount, with no trash entry left for it."""
    opts = {"cache_dir": str(tmp_path / "cache"), "trash": "local", "cache_max": "1M",
            "timeout": "10"}
    with mounted(f"file://{store}", tmp_path / "mnt", opts) as m:
        done = subprocess.run(["gio", "trash", str(m.path / "big.bin")], env=desktop,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "space" in done.stderr.lower(), done
        assert (m.path / "big.bin").stat().st_size == 3 << 20
        assert (store / "big.bin").stat().st_size == 3 << 20
        assert os.listdir(m.path / TRASH / "files") == []
        assert os.listdir(m.path / TRASH / "info") == []
        assert trash_list(desktop) == {}


@pytest.mark.vsphere
def test_local_trash_on_a_store_without_ranged_reads(tmp_path: Path,
                                                     desktop: dict[str, str]) -> None:
    """vcsim (a vSphere content library: whole-file downloads only): a file of an item goes
    to the local trash (downloaded by the move, then deleted from the item) and comes back
    with its bytes, uploaded again."""
    data = os.urandom(1_500_000)
    with running() as sim:
        lid = sim.create_library("lib")
        sim.upload(sim.create_item(lid, "iso"), "disk.iso", data)

        def item() -> str:  # vcsim rebuilds an item that loses a file: a new id
            found = sim.find_item(lid, "iso")
            assert found is not None
            return found

        opts = {"http": None, "cache_dir": str(tmp_path / "cache"), "trash": "local",
                "write_back_delay": "0", "timeout": "20"}
        with mounted(f"vsphere://{USER}@{sim.host}/", tmp_path / "mnt", opts,
                     {"ASSETFS_VSPHERE_PASSWORD": PASSWORD}) as m:
            gio(desktop, "trash", str(m.path / "lib" / "iso" / "disk.iso"))
            assert os.listdir(m.path / "lib" / "iso") == [] and sim.files(item()) == []
            assert (m.path / TRASH / "files" / "disk.iso").read_bytes() == data
            [uri] = trash_list(desktop).values()
            gio(desktop, "trash", "--restore", uri)
            assert (m.path / "lib" / "iso" / "disk.iso").read_bytes() == data
            fsync(m.path / "lib" / "iso" / "disk.iso")
            assert sim.download_sha256(item(), "disk.iso") == \
                (len(data), hashlib.sha256(data).hexdigest())
            assert sorted(os.listdir(m.path)) == sorted([TRASH, "lib"])
