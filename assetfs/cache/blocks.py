"""The block cache: file content on local disk, read-through, read-ahead, LRU by bytes.

Each file the VFS touches is a :class:`CacheItem`; its bytes live in ``data/<key>``, a
sparse local file. How missing bytes arrive depends on the store's
:class:`~assetfs.drivers.base.ReadMode`, and every fetch goes through the driver call layer
(assetfs/remote.py), which gives it the mount's deadline:

- ``LOCAL`` (omni.client): the library already keeps a local copy (on ``file:`` the
  file itself), so clean reads are served from that file by range, with no second copy;
- ``RANGED``: missing blocks of ``block_size`` bytes are fetched on demand, and a
  sequential reader triggers read-ahead of the next ``readahead`` blocks in the background;
- ``STREAM`` (vcsim, NodeODX): one background stream fills the file from offset 0, and a
  reader waits only until the bytes it asked for have arrived.

Writes go to the cache file and make the item dirty; dirty items are never evicted. Clean
items that no handle has open are evicted least-recently-used when the bytes on disk pass
``max_bytes``. When dirty data alone would pass the bound, or the disk is full, writers get
ENOSPC (:class:`~assetfs.errors.NoSpace`) and readers go on working.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import trio

from .. import errors
from ..drivers.base import Entry, ReadMode, split
from ..remote import Remote
from .fetchers import fetcher_for
from .item import CacheItem
from .journal import RESERVE, Journal

log = logging.getLogger(__name__)


class BlockCache:
    """All cached items of one mount, in ``root/data``, bounded by ``max_bytes``."""

    def __init__(
        self,
        root: Path,
        remote: Remote,
        journal: Journal,
        max_bytes: int,
        block_size: int = 1 << 20,
        readahead: int = 8,
    ) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.remote = remote
        self.journal = journal
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.readahead = readahead
        self.items: dict[str, CacheItem] = {}
        self._orphans: list[CacheItem] = []
        self._nursery: trio.Nursery | None = None
        self._sync_limiter = trio.CapacityLimiter(2)
        self._used_hint = max_bytes  # the first make_room counts exactly
        self._dirty_hint = max_bytes
        self.fetcher = fetcher_for(remote, self, block_size, readahead)
        """How missing bytes arrive: one fetcher per read mode (cache/fetchers.py)."""
        self.stats = self.fetcher.stats
        """Hits, misses, bytes downloaded (cache/fetchers.py, FetchStats)."""

    def start(self, nursery: trio.Nursery) -> None:
        """Give the cache a nursery for read-ahead, stream and sync tasks."""
        self._nursery = nursery

    def stop(self) -> None:
        """The nursery is gone (the mount stopped serving): no more background tasks."""
        self._nursery = None

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Run ``fn(*args)`` as a background task (read-ahead, a stream); False once the
        mount stopped serving (nothing started)."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    # --- bookkeeping -----------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes the cache files take on disk (allocated blocks, so sparse files count
        only what was fetched)."""
        return sum(self._allocated(item) for item in self._all_items())

    def _allocated(self, item: CacheItem) -> int:
        """Bytes the cache file of ``item`` takes on disk (0 if it has none)."""
        try:
            if item.fd is not None:
                return os.fstat(item.fd).st_blocks * 512
            return os.stat(self.data / item.key).st_blocks * 512
        except OSError:
            return 0

    def dirty_bytes(self) -> int:
        """Bytes of content not yet on the store."""
        total = 0
        for item in self._all_items():
            if item.dirty:
                item.observe()
                total += item.size
        return total

    def _all_items(self) -> Iterator[CacheItem]:
        yield from self.items.values()
        yield from self._orphans

    def item(self, path: str) -> CacheItem | None:
        """The item at ``path``, if the cache has one."""
        return self.items.get(path)

    def shadowing(self, path: str) -> CacheItem | None:
        """The item at ``path`` if its local content stands in for the store's."""
        item = self.items.get(path)
        return item if item is not None and item.shadows else None

    def shadowing_children(self, folder: str) -> Iterator[tuple[str, CacheItem]]:
        """``(name, item)`` of the children of ``folder`` whose local content stands in
        for the store's (unsaved files the store does not list yet, or lists stale)."""
        for path, item in self.items.items():
            parent, name = split(path)
            if parent == folder and path != "/" and item.shadows:
                yield name, item

    def under(self, *tops: str) -> list[CacheItem]:
        """The items at or under any of the paths ``tops``."""
        prefixes = tuple(top.rstrip("/") + "/" for top in tops)
        return [item for path, item in self.items.items()
                if path in tops or path.startswith(prefixes)]

    def dirty_items(self) -> list[CacheItem]:
        """Every item whose content is not on the store yet (detached ones included)."""
        return [item for item in self._all_items() if item.dirty]

    def get(self, path: str, entry: Entry) -> CacheItem:
        """The item for ``path`` at remote ``entry``: the existing one if it is dirty or its
        version is unchanged, else a fresh clean one (the old clean content is dropped)."""
        item = self.items.get(path)
        if item is not None and (item.dirty or item.writers or item.base_version == entry.version):
            item.last_used = time.monotonic()
            return item
        if item is not None:
            self.drop(path)
        item = CacheItem(
            key=uuid.uuid4().hex, path=path, base_version=entry.version, size=entry.size,
            mtime_ns=entry.mtime_ns,
        )
        self.items[path] = item
        return item

    async def new_file(self, path: str) -> CacheItem:
        """A new, empty, dirty file created on our side (journaled before returning; the
        kernel keeps other changes of ``path``'s folder waiting meanwhile). Raises
        AssetFSError (NoSpace when the cache disk or the journal is full)."""
        self.drop(path)
        self.disk_room(RESERVE)
        item = CacheItem(key=uuid.uuid4().hex, path=path, base_version="", size=0,
                         mtime_ns=time.time_ns(), complete=True, dirty=True, generation=1)
        self.open_file(item, create=True)
        try:
            await self.journal.mark_dirty(item.key, path, item.base_version)
        except BaseException:
            self._discard(item)
            raise
        self.items[path] = item
        return item

    def adopt(self, key: str, path: str, base_version: str) -> CacheItem | None:
        """Recreate a dirty item from a journal record at start-up (None if its cache file
        is gone: nothing was acknowledged for it)."""
        file = self.data / key
        if not file.exists():
            self.journal.mark_clean(key)
            return None
        st = file.stat()
        item = CacheItem(key=key, path=path, base_version=base_version, size=st.st_size,
                         mtime_ns=st.st_mtime_ns, dirty=True, complete=True)
        self.open_file(item, create=False)
        self.items[path] = item
        return item

    def remove_strays(self) -> None:
        """Delete cache files that no journal row and no item claims (clean leftovers of
        an earlier run; clean content is re-fetched on demand)."""
        known = {i.key for i in self._all_items()}
        for file in self.data.iterdir():
            if file.name not in known:
                file.unlink(missing_ok=True)

    def drop(self, path: str) -> None:
        """Forget the clean content of ``path`` (remote version changed, or deleted). A
        dirty item is kept alive for its open handles but detached from the path."""
        item = self.items.pop(path, None)
        if item is None:
            return
        if item.dirty or item.handles:
            self._orphans.append(item)
        else:
            self._discard(item)

    def rebase(self, item: CacheItem, entry: Entry) -> bool:
        """The store's content of clean ``item`` changed (a remote change event) while
        handles have it open. If the item holds no copied bytes (it is served from the
        library's local copy, or nothing was read yet), take the new version and size, so
        open handles read the new content to its new end; return True. Return False (the
        caller drops it: open handles keep the old content) when it holds copied bytes, or
        reads a local copy that the driver made of one version outside ``ReadMode.LOCAL``
        (``known_local_range``: never the store's file changed in place), unless the driver
        says the file only grows (:meth:`Driver.appends_only`, a console log): then the
        bytes held stay and a later read streams only what is new."""
        if (self.remote.read_mode is ReadMode.STREAM and not (item.dirty or item.writers)
                and entry.size >= item.size and self.remote.appends_only(item.path)):
            item.base_version, item.size, item.mtime_ns = entry.version, entry.size, entry.mtime_ns
            item.complete = False
            return True
        if item.dirty or item.writers or item.complete or item.blocks or item.stream_started:
            return False
        if item.source_fd is not None and self.remote.read_mode is not ReadMode.LOCAL:
            return False  # a copy of one version the driver made (a NodeODX spool file)
        item.base_version, item.size, item.mtime_ns = entry.version, entry.size, entry.mtime_ns
        if item.source_fd is not None:
            with contextlib.suppress(OSError):
                os.close(item.source_fd)
            item.source_fd = None  # reopened on the next read: the local copy may be new
        return True

    async def moved(self, old: str, new: str) -> None:
        """Paths under ``old`` are now under ``new`` (a rename on the store); dirty files'
        new paths are journaled before this returns."""
        prefix = old.rstrip("/") + "/"
        dirty = []
        for path in [p for p in self.items if p == old or p.startswith(prefix)]:
            item = self.items.pop(path)
            item.path = new + path[len(old):]
            self.unlinked(item.path)  # a rename replaces its target, unsaved content and all
            self.items[item.path] = item
            if item.dirty:
                dirty.append(item)
        for item in dirty:
            await self.journal.moved(item.key, item.path)

    def unlinked(self, path: str) -> None:
        """``path`` was deleted (or replaced by a rename) on our side: its content will not
        be uploaded, not even what open handles write to it later."""
        item = self.items.pop(path, None)
        if item is None:
            return
        item.unlinked = True
        if item.dirty:
            item.dirty = False
            self.journal.mark_clean(item.key)
        if item.handles:
            self._orphans.append(item)
        else:
            self._discard(item)

    def abandon(self, item: CacheItem) -> None:
        """Stop uploading ``item`` (its upload can never succeed and its bytes were saved
        elsewhere): clean, unlinked, off its path; open handles keep reading it."""
        if self.items.get(item.path) is item:
            self.unlinked(item.path)
            return
        item.unlinked = True
        if item.dirty:
            item.dirty = False
            self.journal.mark_clean(item.key)
        if not item.handles and item in self._orphans:
            self._orphans.remove(item)
            self._discard(item)

    def opened(self, item: CacheItem) -> None:
        """A handle on ``item`` opened (a FUSE open, or a move's own reader): the item is
        neither evicted nor forgotten until the matching :meth:`closed`."""
        item.handles += 1

    def closed(self, item: CacheItem) -> None:
        """A handle on ``item`` was released. The last close of a clean item closes its
        file descriptors (a tree walk must not pile them up) and stops a download only a
        reader needed (cache/fetchers.py, ``Fetcher.stop``); an item that holds no cached
        bytes (served from the library's local copy) is forgotten altogether."""
        item.handles -= 1
        if item.handles or item.dirty:
            return
        self.fetcher.stop(item)
        if item in self._orphans:
            self._orphans.remove(item)
            self._discard(item)
            return
        for fd in (item.fd, item.source_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        item.fd = item.source_fd = None
        cached_nothing = not (item.complete or item.blocks or item.stream_started)
        if cached_nothing and self.items.get(item.path) is item:
            del self.items[item.path]

    def mark_uploaded(self, item: CacheItem, generation: int, entry: Entry) -> None:
        """The upload of ``item`` at ``generation`` succeeded and the store now has
        ``entry``; the item is clean unless it was written again meanwhile."""
        item.base_version = entry.version
        item.stored_generation = max(item.stored_generation, generation)
        if generation == item.generation and item.dirty and not item.passthrough_writers:
            item.dirty = False
            self.journal.mark_clean(item.key)  # queued; lost, it means one more upload check
            if item in self._orphans and not item.handles:
                self._orphans.remove(item)
                self._discard(item)

    def _discard(self, item: CacheItem, at_once: bool = False) -> None:
        """Close the item's files and delete its cache file: in a worker thread while the
        mount serves, since freeing the pages of a big file that was just written blocked
        the event loop 0.15 s (256 MiB, unlink during upload: loopwatch), or ``at_once``
        when the caller needs the disk space back before it goes on (eviction)."""
        fds = [fd for fd in (item.fd, item.source_fd) if fd is not None]
        item.fd = item.source_fd = None
        file = self.data / item.key
        if at_once or self._nursery is None:
            _close_and_delete(fds, file)
        else:
            self._nursery.start_soon(trio.to_thread.run_sync, _close_and_delete, fds, file)

    def open_file(self, item: CacheItem, create: bool) -> int:
        """The item's cache file descriptor, opened (``create``: made) on first use."""
        if item.fd is None:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            # 0644, not 0600: omni.client's copy (the upload) carries the mode over to the
            # store's file; the cache directory itself is private (0700).
            item.fd = os.open(self.data / item.key, flags, 0o644)
        return item.fd

    def set_mtime(self, item: CacheItem, mtime_ns: int) -> None:
        """Set the local modification time (ns) of dirty ``item``; the cache file carries it,
        so a replay after a crash still knows it."""
        item.mtime_ns = mtime_ns
        with contextlib.suppress(OSError):
            os.utime(self.data / item.key, ns=(mtime_ns, mtime_ns))

    async def _mark_dirty(self, item: CacheItem) -> None:
        """Count a change of ``item`` that the caller makes right after, with no await in
        between (an upload must not see the new ``generation`` before the bytes). The first
        change of a clean item is journaled first."""
        if not item.dirty and not item.unlinked:
            async with item.dirtying:
                await self._journal_dirty(item)
        item.generation += 1
        item.mtime_ns = time.time_ns()

    async def _journal_dirty(self, item: CacheItem) -> None:
        """Journal clean ``item`` as dirty and mark it so (holding ``item.dirtying``, so a
        concurrent first change waits for this one). The item may be renamed or deleted
        while the row is written: the row follows it. Raises AssetFSError (NoSpace)."""
        if item.dirty or item.unlinked:
            return
        path = item.path
        await self.journal.mark_dirty(item.key, path, item.base_version)
        while item.path != path and not item.unlinked:
            path = item.path
            await self.journal.moved(item.key, path)
        if item.unlinked:  # deleted meanwhile: its content is never uploaded
            self.journal.mark_clean(item.key)
            return
        item.dirty = True
        self._dirty_hint += item.size

    # --- kernel passthrough ----------------------------------------------------------------
    def whole_fd(self, item: CacheItem) -> int | None:
        """The cache file of ``item`` if it holds the whole content (dirty, or complete),
        the backing file for a passthrough open; else None."""
        if not (item.complete or item.dirty):
            return None
        return self.open_file(item, create=False)

    async def local_copy_fd(self, item: CacheItem, known_only: bool = False) -> int | None:
        """The store's local copy of clean ``item`` (the library's, ``local_path``: on
        omni.client's ``file:`` provider the file itself; or one the driver knows without
        I/O, ``known_local_range``: a NodeODX member inflated in the spool), opened
        read-only, as the backing file of a read-only passthrough open; None when there is
        no whole local copy or the item is dirty or being written. ``known_only``: only a
        copy known without I/O. Raises AssetFSError (the copy cannot be had)."""
        if item.dirty or item.writers or item.complete:
            return None
        if known_only:
            copy = self.fetcher.known_copy(item)
            return copy[0] if copy is not None and copy[1].whole else None
        return await self.fetcher.local_copy(item)

    def passthrough_room(self, item: CacheItem) -> bool:
        """Whether a writer of ``item`` may write through the kernel (passthrough) rather
        than through :meth:`write`. The daemon cannot refuse those writes at ``max_bytes``,
        so a writer that opens an idle file gets passthrough only while dirty data stays
        under half the bound; past that, its writes come to :meth:`write`, which answers
        ENOSPC exactly at the bound. (A writer of a file already open in passthrough mode
        gets it all the same: the kernel wants one mode per inode. A full cache disk still
        gives passthrough writers ENOSPC, from the disk itself.)"""
        half = self.max_bytes // 2
        if self._dirty_hint + item.size <= half:
            return True
        self._dirty_hint = self.dirty_bytes()
        return self._dirty_hint + item.size <= half

    async def passthrough_writer_opened(self, item: CacheItem) -> None:
        """A handle that writes ``item``'s cache file through the kernel opened. The item is
        journaled as dirty now (before open returns), since its writes will not pass here;
        a clean item notes that its file holds the store's content, so that a close with
        nothing written makes it clean again (:meth:`passthrough_writer_closed`)."""
        async with item.dirtying:
            if item.passthrough_writers == 0:
                await self._first_passthrough_writer(item)
            item.passthrough_writers += 1

    async def _first_passthrough_writer(self, item: CacheItem) -> None:
        self.disk_room(RESERVE)
        clean = not item.dirty
        await self._journal_dirty(item)
        item.generation += 1
        item.mtime_ns = time.time_ns()
        item.passthrough_clean_generation = item.generation if clean else None
        item.passthrough_open_size = item.size
        fd = self.open_file(item, create=False)
        # a clean file shows the store's mtime until a write; a dirty one keeps its own
        mtime = item.mtime_ns if clean else os.fstat(fd).st_mtime_ns
        item.passthrough_stamp = self._stamp(fd, mtime)
        item.mtime_ns = item.passthrough_stamp[1]

    def count_passthrough_writes(self, item: CacheItem) -> None:
        """Count (``generation``) what passthrough writers wrote since the last count, if
        anything: an upload that starts after this call carries it, one that started before
        does not. Called by fsync (:meth:`WriteBack.flush`)."""
        if not item.passthrough_writers:
            return
        fd = self.open_file(item, create=False)
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != item.passthrough_stamp:
            item.generation += 1
            item.passthrough_stamp = self._stamp(fd, st.st_mtime_ns)

    def passthrough_writer_closed(self, item: CacheItem) -> None:
        """A passthrough writer of ``item`` closed. At the last one, count what the writers
        wrote since the last count (``generation``); if they wrote nothing since then and the
        store holds the content (it did at open, or an fsync's upload put it there), make
        the item clean again: nothing to upload. What the writers added counts against the
        bound now, evicting clean items if it passed."""
        item.observe()
        item.passthrough_writers -= 1
        if item.passthrough_writers:
            return
        st = os.fstat(self.open_file(item, create=False))
        if (st.st_size, st.st_mtime_ns) != item.passthrough_stamp:
            item.generation += 1
        elif item.dirty and item.generation in (item.stored_generation,
                                                item.passthrough_clean_generation):
            item.dirty = False
            self.journal.mark_clean(item.key)
        grown = max(0, st.st_size - item.passthrough_open_size)
        self._dirty_hint += grown
        self._used_hint += grown
        self.make_room(0, for_dirty=False)

    @staticmethod
    def _stamp(fd: int, mtime_ns: int) -> tuple[int, int]:
        """Set the file's mtime to ``mtime_ns - 1`` and return ``(st_size, that mtime)``.

        A later write through the kernel sets the mtime to the current time, which is never
        below ``mtime_ns`` when that was the file's mtime or a store's past one: so any write
        changes the stamp, even on a kernel whose timestamps move in jiffies (before the
        multigrain timestamps of Linux 6.13), where two writes a millisecond apart can share
        one mtime."""
        os.utime(fd, ns=(mtime_ns - 1, mtime_ns - 1))
        return os.fstat(fd).st_size, mtime_ns - 1

    # --- eviction ----------------------------------------------------------------------
    def make_room(self, incoming: int, for_dirty: bool) -> None:
        """Evict clean, unopened items (LRU) until ``incoming`` more bytes fit under the
        bound. Raises NoSpace if dirty data would pass it; clean fills just overshoot.

        Runs on every growing write, so it counts exactly (a walk over all items) only when
        running totals say the bound may be reached: ``_dirty_hint`` and ``_used_hint`` only
        ever over-estimate between exact counts."""
        if for_dirty:
            if self._dirty_hint + incoming > self.max_bytes:
                self._dirty_hint = self.dirty_bytes()
                if self._dirty_hint + incoming > self.max_bytes:
                    raise errors.NoSpace(
                        f"cache full: dirty data would pass {self.max_bytes} bytes")
            self._dirty_hint += incoming
            self.disk_room(incoming + RESERVE)  # and room for the journal
        if self._used_hint + incoming <= self.max_bytes:
            self._used_hint += incoming
            return
        used = self.used_bytes()
        used -= self._evict_until(lambda freed: used - freed + incoming <= self.max_bytes)
        self._used_hint = used + incoming

    def disk_room(self, needed: int) -> None:
        """Make ``needed`` bytes free on the cache disk, evicting clean, unopened items
        (LRU) if the disk is full; raise NoSpace if that is not enough. Dirty data written
        through passthrough can fill the disk past what :meth:`make_room` saw coming."""

        def free() -> int:
            disk = os.statvfs(self.data)
            return disk.f_bavail * disk.f_frsize

        self._evict_until(lambda _freed: free() >= needed)
        if free() < needed:
            raise errors.NoSpace(f"the cache disk is full ({self.data})")

    def _evict_until(self, enough: Callable[[int], bool]) -> int:
        """Evict clean, unopened items, least recently used first, until ``enough(freed)``
        holds (``freed``: bytes evicted so far); return the bytes evicted."""
        freed = 0
        if enough(freed):  # the usual case: no need to sort every clean item
            return freed
        for item in sorted((i for i in self.items.values() if not i.dirty and not i.handles),
                           key=lambda i: i.last_used):
            if enough(freed):
                break
            freed += self._allocated(item)
            self.items.pop(item.path, None)
            self._discard(item, at_once=True)
        return freed

    # --- reads ---------------------------------------------------------------------------
    async def read(self, item: CacheItem, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset`` of the local view of ``item`` (a view of
        bytes a stream holds in memory: cache/fetchers.py)."""
        item.last_used = time.monotonic()
        item.observe()
        end = min(offset + size, item.size)
        if offset >= end:
            return b""
        if item.complete or item.dirty:
            self.stats.hits += 1
            return os.pread(self.open_file(item, create=False), end - offset, offset)
        known = self.fetcher.read_known(item, offset, end)  # in place, any read mode
        if known is not None:
            return known
        return await self.fetcher.read(item, offset, end)

    def read_now(self, item: CacheItem) -> bytes | None:
        """The whole content of ``item`` if it lies on local disk already (its cache file
        holds it, or the store's local copy is known without I/O: ``Fetcher.read_now``),
        read without yielding to the event loop; else None (also when the local file no
        longer holds ``item.size`` bytes). For the open-time page fill (vfs/pagefill.py)."""
        if item.complete or item.dirty:
            fd = self.open_file(item, create=False)
            data = os.pread(fd, item.size, 0)
            self.stats.hits += 1
        else:
            found = self.fetcher.read_now(item)
            if found is None:
                return None
            data = found
        if len(data) != item.size:
            return None
        item.last_used = time.monotonic()
        item.observe()
        return data

    async def fill_all(self, item: CacheItem) -> None:
        """Make the cache file hold the whole content (before a partial overwrite)."""
        if item.complete or item.dirty:
            self.open_file(item, create=True)
            return
        self.make_room(item.size, for_dirty=True)
        self.open_file(item, create=True)
        await self.fetcher.fill(item)
        item.complete = True

    async def moved_version(self, item: CacheItem, base_version: str) -> None:
        """``item`` now holds or starts from ``base_version`` of the store (its file was
        moved and given a new version there); journaled before this returns when it is
        dirty. Raises AssetFSError."""
        async with item.dirtying:
            item.base_version = base_version
            if item.dirty:
                await self.journal.rebased(item.key, base_version)

    async def take_over(self, item: CacheItem) -> None:
        """Make ``item`` hold its whole content as a new file made here: complete, dirty,
        with no base version (its upload replaces whatever is at its path), journaled
        before this returns; its modification time stays. For a move whose source is about
        to be deleted (vfs/crossing.py): from then on the cache file is the only copy.
        Raises AssetFSError (NoSpace when the dirty data would pass the bound, and what
        fetching the content raises)."""
        await self.fill_all(item)
        async with item.dirtying:
            item.base_version = ""
            if item.dirty:
                await self.journal.rebased(item.key, "")
            else:
                await self._journal_dirty(item)
        item.generation += 1

    # --- writes --------------------------------------------------------------------------
    async def write(self, item: CacheItem, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; the item becomes dirty (journaled first)."""
        if not (item.complete or item.dirty):
            await self.fill_all(item)
        grow = max(0, offset + len(data) - item.size)
        if grow:
            self.make_room(grow, for_dirty=True)
        await self._mark_dirty(item)
        self.put_bytes(item, data, offset)
        item.size = max(item.size, offset + len(data))
        return len(data)

    async def truncate(self, item: CacheItem, size: int) -> None:
        """Set the local length to ``size`` bytes; the item becomes dirty."""
        item.observe()
        if size and not (item.complete or item.dirty):
            await self.fill_all(item)
        if size > item.size:
            self.make_room(size - item.size, for_dirty=True)
        fd = self.open_file(item, create=True)
        async with item.writing_behind:  # no chunk of a stream lands after the truncate
            await self._mark_dirty(item)
            os.ftruncate(fd, size)
        item.size = size
        item.complete = True

    def put_bytes(self, item: CacheItem, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset`` (bytes) into the item's cache file. Raises NoSpace
        when the disk is full."""
        errors.pwrite_local(self.open_file(item, create=True), data, offset)

    def cache_file(self, item: CacheItem) -> str:
        """The local path of the item's cache file (the upload source)."""
        return str(self.data / item.key)

    def sync_soon(self, item: CacheItem) -> None:
        """Start writing the closed dirty ``item``'s cache file to disk in a worker thread.

        close() returns before this (FUSE's release is asynchronous), so closing stays as
        fast as on a local disk, and a machine crash soon after close loses nothing the
        journal then promises (the journal row itself is already durable). Once the
        mount stopped serving (:meth:`stop`), it writes the file out before returning."""
        if item.fd is None:
            return
        if self._nursery is None:
            try:
                os.fdatasync(item.fd)
            except OSError as exc:
                log.warning("cannot flush a cache file to disk: %s", exc)
            return
        self._nursery.start_soon(self._sync, os.dup(item.fd))

    async def _sync(self, fd: int) -> None:
        """Flush and close ``fd`` (a cache file's, duplicated) in a worker thread: the close
        too, since it may be the last one of a file unlinked meanwhile, and freeing the pages
        of 256 MiB blocked the event loop 0.1 s (loopwatch, in the unlink-during-upload test)."""
        handed = False
        try:
            async with self._sync_limiter:
                handed = True
                await trio.to_thread.run_sync(_flush_and_close, fd)
        except OSError as exc:
            log.warning("cannot flush a cache file to disk: %s", exc)
        finally:
            if not handed:
                os.close(fd)

    async def fsync(self, item: CacheItem) -> None:
        """Flush the item's cache file and the journal to disk (fsync on the mount).

        The file is flushed in a worker thread, on a descriptor of its own: flushing a big
        file takes the disk's time (~0.1 s per 256 MiB here), and meanwhile the mount keeps
        answering and uploading, this file's upload included. Raises OSError."""
        if item.fd is not None:
            fd = os.dup(item.fd)
            try:
                await trio.to_thread.run_sync(os.fsync, fd)
            finally:
                os.close(fd)
        await self.journal.sync()

    def close(self) -> None:
        """Close every file descriptor."""
        for item in self._all_items():
            for fd in (item.fd, item.source_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            item.fd = item.source_fd = None


def _flush_and_close(fd: int) -> None:
    """fdatasync and close ``fd`` (closed even when the flush fails). Raises OSError."""
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _close_and_delete(fds: list[int], file: Path) -> None:
    """Close ``fds`` and delete ``file`` (errors ignored: it is cache, and a file left
    behind is removed at the next start as a stray)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(OSError):
        file.unlink(missing_ok=True)
