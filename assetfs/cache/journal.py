"""Crash-safe record of dirty files (sqlite in WAL mode), kept off the event loop.

A row exists for every cache file whose content is not yet on the store. It is committed
before the ``write``/``create``/``truncate`` that made the file dirty returns (and a dirty
file's new path before its ``rename`` returns), so after a SIGKILL the next mount of the same
cache directory knows what to upload. Commits use ``synchronous=NORMAL``: they reach the
operating system at once (a killed daemon loses nothing) and the disk at the next
:meth:`Journal.sync`, which the daemon runs every :data:`SYNC_INTERVAL` seconds and every
``fsync`` runs at once, so a machine crash loses at most the files closed in the last
fraction of a second, while a ``cp -r`` of many small files does not wait for one disk flush
per file (3000 files: 7 s with a flush each).

No sync of the disk happens on the event loop. Even ``synchronous=NORMAL`` syncs now and
then (each checkpoint, and the WAL header when the first commit after a checkpoint restarts
the log), and on ext4 with data=ordered such an fsync waits for the data of every file being
flushed: made on the event loop, it stood the whole daemon still for 0.09-0.11 s in each
upload's journal update while a 256 MiB cache file went to disk (``scripts/bench_vsphere.py``).
So checkpoints run on a thread of the journal's own (every :data:`CHECKPOINT_COMMITS`
commits, instead of sqlite's autocheckpoint, and at each :meth:`sync`), and after one the
commits go to that thread too, in call order, until one of them has restarted the log;
from then on commits are made on the calling thread at once (about 40 us each, where the
hand-off to the thread costs about 100 us more: 2000 small files created through the mount
took ~0.35 s longer with every commit handed off). Callers await the commits the daemon must
know are made (:meth:`mark_dirty`, :meth:`moved`, :meth:`sync`); the others (a file made
clean, a kept mtime) are not waited for when they go to the thread: losing one to a crash
means one more upload check, or a store mtime shown, at the next mount.

The bytes themselves live in the cache file ``data/<key>``; the journal holds only
``key -> (path, base_version)``, so writes after the first touch no row.

sqlite errors become project errors (a full disk is :class:`~assetfs.errors.NoSpace`, so the
writer gets ENOSPC; anything else EIO): a journal that cannot be written never takes the
daemon down. The WAL is checkpointed every :data:`CHECKPOINT_COMMITS` commits and every
:data:`SYNC_INTERVAL` seconds, so the room it needs on the cache disk stays under
:data:`RESERVE` bytes, which the block cache keeps free for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from .. import errors
from ..bridge import Handoff

log = logging.getLogger(__name__)

T = TypeVar("T")

SYNC_INTERVAL = 0.1
"""Seconds between journal flushes to disk (see :meth:`Journal.sync`)."""
CHECKPOINT_COMMITS = 50
"""Commits between two checkpoints at most (one to three 4 KiB pages of WAL each: about the
100 pages sqlite's own autocheckpoint allows)."""
RESERVE = 2 << 20
"""Bytes the block cache leaves free on the cache disk for the journal (the WAL, the
checkpoint) when it accepts dirty data."""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        if "full" in str(exc) or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise errors.NoSpace(f"the cache journal cannot grow: {exc}") from exc
        raise errors.AssetFSError(f"cache journal: {exc}") from exc


@dataclass(frozen=True)
class DirtyRecord:
    """One dirty file: cache file ``key``, remote ``path`` (driver path), and the remote
    ``base_version`` its content started from (``""`` for a file new on our side)."""

    key: str
    path: str
    base_version: str
    since: float


class Journal:
    """The dirty-file table of one cache directory, served by a thread of its own."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # ours run on the journal thread
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dirty ("
            " key TEXT PRIMARY KEY, path TEXT NOT NULL, base_version TEXT NOT NULL,"
            " since REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS mtimes ("
            " path TEXT PRIMARY KEY, version TEXT NOT NULL, mtime_ns INTEGER NOT NULL)"
        )
        self._unsynced = False
        """Rows committed since the last checkpoint."""
        self._inline = False
        """Commits may be made on the calling thread: no checkpoint since the last commit
        the journal thread made, and nothing queued behind it (so the order holds)."""
        self._queued = 0
        """Operations queued for the journal thread so far (the calling thread's count)."""
        self._since_checkpoint = 0
        """Commits made on the calling thread since the last checkpoint was queued."""
        self._ops: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="assetfs-journal", daemon=True)
        self._thread.start()

    # --- commits ------------------------------------------------------------------------
    async def mark_dirty(self, key: str, path: str, base_version: str) -> None:
        """Record (or update) that cache file ``key`` holds unsaved content for ``path``;
        returns once committed. Raises AssetFSError (NoSpace on a full disk)."""
        await self._commit(
            "INSERT INTO dirty (key, path, base_version, since) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET path=excluded.path",
            [(key, path, base_version, time.time())])

    async def rebased(self, key: str, base_version: str) -> None:
        """The dirty file ``key`` now replaces ``base_version`` at its path ("": whatever is
        there, a file moved in from the other side of the mount, vfs/crossing.py); returns
        once committed. Raises AssetFSError."""
        await self._commit("UPDATE dirty SET base_version=? WHERE key=?", [(base_version, key)])

    async def moved(self, key: str, path: str) -> None:
        """The dirty file ``key`` was renamed to ``path``; returns once committed. Raises
        AssetFSError."""
        await self._commit("UPDATE dirty SET path=? WHERE key=?", [(path, key)])

    def mark_clean(self, key: str) -> None:
        """The content of ``key`` is on the store (or the file was deleted). Not waited
        for."""
        self._post("DELETE FROM dirty WHERE key=?", [(key,)])

    def set_mtime(self, path: str, version: str, mtime_ns: int) -> None:
        """Keep ``mtime_ns`` for ``path`` while the store has ``version`` there. Not waited
        for."""
        self._post("INSERT OR REPLACE INTO mtimes (path, version, mtime_ns) VALUES (?, ?, ?)",
                   [(path, version, mtime_ns)])

    def drop_mtimes(self, paths: list[str]) -> None:
        """Forget the kept modification times of ``paths``. Not waited for."""
        self._post("DELETE FROM mtimes WHERE path=?", [(p,) for p in paths])

    async def sync(self) -> None:
        """Flush every row committed or queued before this call to disk (a WAL checkpoint,
        which syncs the WAL first), on the journal thread. Raises AssetFSError."""
        self._inline = False
        self._since_checkpoint = 0
        await self._call(self._checkpoint)

    # --- reads at start-up (they wait for the queue, blocking the caller) ----------------
    def records(self) -> list[DirtyRecord]:
        """Every dirty file, oldest first (replayed at start)."""
        query = "SELECT key, path, base_version, since FROM dirty ORDER BY since"
        return self._wait(lambda: [DirtyRecord(*row) for row in self._db.execute(query)])

    def mtimes(self) -> dict[str, tuple[str, int]]:
        """path -> (remote version, mtime in ns) of every modification time kept locally."""
        query = "SELECT path, version, mtime_ns FROM mtimes"
        return self._wait(lambda: {p: (v, m) for p, v, m in self._db.execute(query)})

    def close(self) -> None:
        """Finish what is queued, checkpoint and close the database."""
        self._ops.put(None)
        self._thread.join()
        self._db.close()

    # --- the journal thread -------------------------------------------------------------
    def _serve(self) -> None:
        while (op := self._ops.get()) is not None:
            try:
                op()
            except Exception:  # a bug in an op must not stop the thread every commit waits on
                log.exception("cache journal operation failed")

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._unsynced = True
        with _translated():
            self._db.executemany(sql, rows)

    def _checkpoint(self) -> None:
        if self._unsynced:
            self._unsynced = False
            try:
                with _translated():
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except errors.AssetFSError:
                self._unsynced = True
                raise

    async def _commit(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Commit ``rows`` (awaited), on the calling thread when :attr:`_inline` allows."""
        if self._inline:
            self._write_inline(sql, rows)
            return
        queued = self._queued
        await self._call(lambda: self._write(sql, rows))
        if self._queued == queued + 1:  # nothing queued behind it, no checkpoint after it
            self._inline = True

    def _post(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Commit ``rows`` without waiting for it when it goes to the journal thread; a
        failure is logged."""
        lost = "a later mount may upload a file again or show its store mtime"
        if self._inline:
            _logged(lambda: self._write_inline(sql, rows), lost)
        else:
            self._put(lambda: _logged(lambda: self._write(sql, rows), lost))

    def _write_inline(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Commit on the calling thread (no sync can happen: see :attr:`_inline`); after
        :data:`CHECKPOINT_COMMITS` of them, queue a checkpoint."""
        self._write(sql, rows)
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_COMMITS:
            self._inline = False
            self._since_checkpoint = 0
            self._put(lambda: _logged(self._checkpoint, "the next sync tries again"))

    def _put(self, op: Callable[[], None]) -> None:
        self._queued += 1
        self._ops.put(op)

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn`` for the journal thread, behind everything queued; its result (or
        error) comes in the returned future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def op() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)

        self._put(op)
        return future

    def _wait(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the journal thread after everything queued; block until done."""
        return self._submit(fn).result()

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the journal thread after everything queued and return its result
        (or raise its error). Not cancellable: a commit that was queued happens, and its
        caller must learn how it went."""
        done: Handoff[T] = Handoff()
        self._submit(fn).add_done_callback(lambda future: done.set(outcome.capture(future.result)))
        with trio.CancelScope(shield=True):
            result = await done.wait()
        return result


def _logged(fn: Callable[[], None], consequence: str) -> None:
    """Run ``fn``; an AssetFSError is logged with its ``consequence``, not raised."""
    try:
        fn()
    except errors.AssetFSError as exc:
        log.warning("cache journal: %s; %s", exc, consequence)
