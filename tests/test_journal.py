"""Unit tests of the write-back journal (and of how the block cache replays it),
without FUSE: replay after a clean close, a journal left by a SIGKILLed process, a torn
write-ahead log, and rows for renamed, re-dirtied and deleted files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import trio

from assetfs import retry
from assetfs.cache.blocks import BlockCache
from assetfs.cache.item import CacheItem
from assetfs.cache.journal import Journal
from assetfs.drivers.nucleus import NucleusDriver
from assetfs.remote import Remote


def rows(journal: Journal) -> list[tuple[str, str, str]]:
    return [(r.key, r.path, r.base_version) for r in journal.records()]


async def test_replay_after_close_keeps_rows_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    for i in range(5):
        await journal.mark_dirty(f"k{i}", f"/f{i}", f"v{i}" if i % 2 else "")
    journal.mark_clean("k3")
    journal.close()
    again = Journal(tmp_path / "journal.sqlite")
    assert rows(again) == [("k0", "/f0", ""), ("k1", "/f1", "v1"), ("k2", "/f2", ""),
                           ("k4", "/f4", "")]
    again.close()


async def test_renamed_file_keeps_its_row_and_base_version(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    await journal.mark_dirty("k", "/a.txt", "10:123")
    await journal.moved("k", "/dir/b.txt")
    # written again after the rename: the path follows, the base version and age stay
    await journal.mark_dirty("k", "/dir/b.txt", "other")
    await journal.moved("unknown", "/nowhere")  # a clean file moved: no row appears
    [record] = journal.records()
    assert (record.key, record.path, record.base_version) == ("k", "/dir/b.txt", "10:123")
    journal.close()
    assert rows(Journal(tmp_path / "journal.sqlite")) == [("k", "/dir/b.txt", "10:123")]


CRASHER = textwrap.dedent("""
    import os, signal, sys, trio
    from pathlib import Path
    from assetfs.cache.journal import Journal
    async def main():
        j = Journal(Path(sys.argv[1]))
        for i in range(200):
            await j.mark_dirty(f"k{i}", f"/dir/f{i}", "")
        for i in range(0, 200, 4):
            j.mark_clean(f"k{i}")
        await j.moved("k1", "/renamed/f1")  # after the queued mark_clean calls
        os.kill(os.getpid(), signal.SIGKILL)
    trio.run(main)
""")


def crash_with_rows(path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_journal_left_by_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    crash_with_rows(path)
    assert Path(f"{path}-wal").stat().st_size > 0, "rows only in the WAL, never checkpointed"
    journal = Journal(path)
    found = {r.key: r.path for r in journal.records()}
    assert len(found) == 150
    assert found["k1"] == "/renamed/f1" and found["k2"] == "/dir/f2" and "k4" not in found
    journal.close()


async def test_torn_tail_of_the_wal_loses_nothing_committed(tmp_path: Path) -> None:
    """A power cut during the next commit leaves a partial frame (or garbage) at the end of
    the WAL; sqlite's frame checksums discard it and every committed row is still there."""
    path = tmp_path / "journal.sqlite"
    crash_with_rows(path)
    with open(f"{path}-wal", "ab") as wal:
        wal.write(os.urandom(3000))
    journal = Journal(path)
    assert len(journal.records()) == 150
    await journal.mark_dirty("new", "/after", "")
    journal.close()
    assert len(Journal(path).records()) == 151


def make_cache(root: Path) -> BlockCache:
    driver = NucleusDriver(f"file://{root / 'store'}", {})
    journal = Journal(root / "journal.sqlite")
    return BlockCache(root, Remote(driver, retry.RetryPolicy()), journal, max_bytes=1 << 30)


async def test_block_cache_replays_dirty_items_and_drops_strays(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    kept = await cache.new_file("/new.bin")
    os.pwrite(kept.fd, b"x" * 5000, 0)
    gone = await cache.new_file("/lost.bin")  # its cache file vanishes: nothing was acknowledged
    await cache.moved("/new.bin", "/sub/renamed.bin")
    (cache.data / "stray-clean-leftover").write_bytes(b"old")
    cache.close()
    (cache.data / gone.key).unlink()
    cache.journal.close()

    again = make_cache(tmp_path)
    adopted = [again.adopt(r.key, r.path, r.base_version) for r in again.journal.records()]
    again.remove_strays()
    [item] = [i for i in adopted if i is not None]
    assert (item.key, item.path, item.size, item.dirty) == (kept.key, "/sub/renamed.bin",
                                                            5000, True)
    assert sorted(p.name for p in again.data.iterdir()) == [kept.key]
    assert rows(again.journal) == [(kept.key, "/sub/renamed.bin", "")]
    again.unlinked("/sub/renamed.bin")  # deleted before it was uploaded: row and file go
    assert rows(again.journal) == [] and list(again.data.iterdir()) == []
    again.close()
    again.journal.close()


SYNC_TRACER = textwrap.dedent("""
    import os, sys, trio
    from pathlib import Path
    from assetfs.cache.journal import Journal
    async def main():
        j = Journal(Path(sys.argv[1]))
        for i in range(50):
            await j.mark_dirty(f"k{i}", f"/f{i}", "")
        os.getppid()  # marker: sync() starts
        await j.sync()
        os.getppid()  # marker: commits after a full checkpoint (the WAL restarts)
        for i in range(300):
            j.mark_clean(f"k{i}")
            await j.mark_dirty(f"n{i}", f"/g{i}", "")
        os.getppid()  # marker: done
        j.close()
    trio.run(main)
""")


def test_the_event_loop_never_waits_for_the_disk(tmp_path: Path) -> None:
    """Journal commits are awaited by the daemon's event loop, which must never itself sync
    the disk: ``synchronous=NORMAL`` syncs the WAL header in the first commit after each
    checkpoint, and on ext4 such an fsync waits for every big cache file being flushed
    (the whole daemon stood still 0.1 s per upload). The syncs happen on the journal's own
    thread. Counted with strace: fsync/fdatasync calls per thread, between markers the loop
    thread makes (getppid)."""
    strace = shutil.which("strace")
    assert strace, "strace comes with `make test` (Makefile: APT_PACKAGES)"
    log = tmp_path / "trace"
    subprocess.run(
        [strace, "-f", "-qq", "-o", str(log), "-e", "trace=getppid,fsync,fdatasync",
         sys.executable, "-c", SYNC_TRACER, str(tmp_path / "journal.sqlite")],
        check=True, capture_output=True,
    )
    calls = [(tid, rest.split("(")[0]) for tid, rest in
             (line.split(None, 1) for line in log.read_text().splitlines())
             if "(" in rest and "resumed" not in rest]
    markers = [i for i, (_, call) in enumerate(calls) if call == "getppid"]
    assert len(markers) == 3, calls
    loop = calls[markers[0]][0]
    in_sync = [call for _, call in calls[markers[0] + 1:markers[1]]]
    assert {"fsync", "fdatasync"} & set(in_sync), f"sync() made no disk sync: {in_sync}"
    by_loop = [call for tid, call in calls[markers[0]:markers[2] + 1] if tid == loop]
    assert by_loop == ["getppid"] * 3, f"the event loop thread synced the disk: {by_loop}"


class HeldJournal(Journal):
    """A journal whose next ``mark_dirty`` waits until the test lets it commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.waiting = trio.Event()
        self.release = trio.Event()

    async def mark_dirty(self, key: str, path: str, base_version: str) -> None:
        self.waiting.set()
        await self.release.wait()
        await super().mark_dirty(key, path, base_version)


@pytest.mark.parametrize("change", ["rename", "unlink"])
async def test_a_file_renamed_or_deleted_while_its_first_write_is_journaled(
    change: str, tmp_path: Path
) -> None:
    """The row of a clean file's first write is committed off the event loop; a rename or
    an unlink that lands meanwhile must not leave a row for the old name (a crash would then
    upload the content to a name it no longer has, or bring a deleted file back)."""
    driver = NucleusDriver(f"file://{tmp_path / 'store'}", {})
    cache = BlockCache(tmp_path, Remote(driver, retry.RetryPolicy()),
                       HeldJournal(tmp_path / "journal.sqlite"), max_bytes=1 << 30)
    journal = cache.journal
    assert isinstance(journal, HeldJournal)
    item = cache.items["/a.bin"] = CacheItem(key="k", path="/a.bin", base_version="v1",
                                             size=0, mtime_ns=0, complete=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.write, item, 0, b"new bytes")
        await journal.waiting.wait()
        if change == "rename":
            await cache.moved("/a.bin", "/b.bin")
        else:
            cache.unlinked("/a.bin")
        journal.release.set()
    expected = [("k", "/b.bin", "v1")] if change == "rename" else []
    assert rows(journal) == expected
    assert item.dirty == (change == "rename")
    cache.close()
    journal.close()


async def test_commits_keep_their_order_across_the_journal_thread(tmp_path: Path) -> None:
    """After a checkpoint commits go to the journal thread; once one has come back they are
    made in place again, but never ahead of a commit still queued there: a file cleaned
    (its upload done) and then written again must keep its row."""
    journal = Journal(tmp_path / "journal.sqlite")
    await journal.mark_dirty("k", "/f", "")
    await journal.sync()  # from here commits go to the thread
    first, second = threading.Event(), threading.Event()
    journal._put(first.wait)  # the journal thread is held: what follows queues up
    written = trio.Event()

    async def write_again() -> None:
        await journal.mark_dirty("k", "/f", "")
        written.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.mark_dirty, "other", "/g", "")
        await trio.sleep(0.05)
        journal._put(second.wait)
        journal.mark_clean("k")  # the upload of k is done: queued behind the second gate
        first.set()  # "other" comes back while the clean of k still waits
        await trio.sleep(0.05)
        nursery.start_soon(write_again)
        await trio.sleep(0.05)
        assert not written.is_set(), "committed ahead of the queued mark_clean"
        second.set()
    assert sorted(r.key for r in journal.records()) == ["k", "other"]
    journal.close()
