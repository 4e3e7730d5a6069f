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
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .. import errors
from ..drivers.base import Entry, Kind, ReadMode
from ..remote import Remote
from .journal import RESERVE, Journal

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    """Counters of the block cache (``assetfs status``, observe/metrics.py).

    A read is a hit when its bytes were all on the cache disk (or in the library's local
    copy already opened), a miss when it waited for the store. ``downloaded_bytes`` counts
    what ranged reads and streams brought from the store; a library's own local copy
    (omni.client) is the library's business and not counted. ``streams_stopped`` counts
    downloads of stores without ranged reads stopped because the last reader closed."""

    hits: int = 0
    misses: int = 0
    downloaded_bytes: int = 0
    streams_stopped: int = 0


@dataclass(eq=False)
class CacheItem:
    """The cached content of one remote file.

    ``size`` and ``mtime_ns`` are the local view (bytes, ns); ``base_version`` the remote
    version the content started from. ``generation`` counts writes, so an upload knows
    whether the file changed while it was being sent.
    """

    key: str
    path: str
    base_version: str
    size: int
    mtime_ns: int
    dirty: bool = False
    generation: int = 0
    stored_generation: int = -1
    """The newest ``generation`` an upload has put on the store."""
    complete: bool = False
    blocks: set[int] = field(default_factory=set)
    watermark: int = 0
    local_source: str | None = None
    fd: int | None = None
    source_fd: int | None = None
    handles: int = 0
    writers: int = 0
    last_used: float = field(default_factory=time.monotonic)
    next_offset: int = 0
    inflight: dict[int, trio.Event] = field(default_factory=dict)
    stream_started: bool = False
    stream_running: bool = False
    stream_error: errors.AssetFSError | None = None
    stream_scope: trio.CancelScope | None = None
    """Cancels the running stream (the last handle closed before it finished)."""
    unlinked: bool = False
    """Deleted or replaced by a rename on our side: open handles still read and write it,
    but its content is never uploaded again."""
    passthrough_writers: int = 0
    """Open handles the kernel writes through to the cache file itself (kernel FUSE
    passthrough): ``size`` and ``mtime_ns`` are then read from the file (:meth:`observe`)."""
    passthrough_stamp: tuple[int, int] = (0, 0)
    """``(st_size, st_mtime_ns)`` of the cache file when ``generation`` last counted the
    passthrough writers' writes (:meth:`BlockCache.count_passthrough_writes`)."""
    passthrough_clean_generation: int | None = None
    """The ``generation`` at which the cache file held the store's content when the first
    passthrough writer opened (None if it was dirty then)."""
    passthrough_open_size: int = 0
    """``size`` when the first passthrough writer opened (bytes)."""
    arrived: trio.Event = field(default_factory=trio.Event)
    fill_lock: trio.Lock = field(default_factory=trio.Lock)
    dirtying: trio.Lock = field(default_factory=trio.Lock)
    """Held while a clean item's first change is being journaled (BlockCache._journal_dirty)."""

    def observe(self) -> None:
        """Take ``size`` and ``mtime_ns`` from the cache file while passthrough writers have
        it open (their writes never reach the daemon)."""
        if self.passthrough_writers and self.fd is not None:
            st = os.fstat(self.fd)
            self.size, self.mtime_ns = st.st_size, st.st_mtime_ns

    def entry(self, base: Entry | None, name: str) -> Entry:
        """The entry the kernel sees: the remote one with the local size and mtime."""
        self.observe()
        if base is None:
            return Entry(name=name, kind=Kind.FILE, size=self.size, mtime_ns=self.mtime_ns,
                         version=self.base_version)
        return Entry(name=base.name, kind=base.kind, size=self.size, mtime_ns=self.mtime_ns,
                     version=base.version, mode=base.mode, metadata=base.metadata)


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
        self.mode = remote.read_mode
        self.stats = CacheStats()

    def start(self, nursery: trio.Nursery) -> None:
        """Give the cache a nursery for read-ahead, stream and sync tasks."""
        self._nursery = nursery

    def stop(self) -> None:
        """The nursery is gone (the mount stopped serving): no more background tasks."""
        self._nursery = None

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
        self._open_cache_file(item, create=True)
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
        self._open_cache_file(item, create=False)
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
        open handles read the new content to its new end; return True. Return False when
        it holds copied bytes (the caller drops it: open handles keep the old content)."""
        if item.dirty or item.writers or item.complete or item.blocks or item.stream_started:
            return False
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

    def closed(self, item: CacheItem) -> None:
        """A handle on ``item`` was released. The last close of a clean item closes its
        file descriptors (a tree walk must not pile them up) and stops its download if a
        stream is still bringing it (:meth:`_stream`); an item that holds no cached bytes
        (served from the library's local copy) is forgotten altogether."""
        item.handles -= 1
        if item.handles or item.dirty:
            return
        if item.stream_scope is not None:
            item.stream_scope.cancel()
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

    def _open_cache_file(self, item: CacheItem, create: bool) -> int:
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
        return self._open_cache_file(item, create=False)

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
        fd = self._open_cache_file(item, create=False)
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
        fd = self._open_cache_file(item, create=False)
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
        st = os.fstat(self._open_cache_file(item, create=False))
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
        for item in sorted((i for i in self.items.values() if not i.dirty and not i.handles),
                           key=lambda i: i.last_used):
            if enough(freed):
                break
            freed += self._allocated(item)
            self.items.pop(item.path, None)
            self._discard(item, at_once=True)
        return freed

    # --- reads ---------------------------------------------------------------------------
    async def read(self, item: CacheItem, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of the local view of ``item``."""
        item.last_used = time.monotonic()
        item.observe()
        end = min(offset + size, item.size)
        if offset >= end:
            return b""
        if item.complete or item.dirty:
            self.stats.hits += 1
            return os.pread(self._open_cache_file(item, create=False), end - offset, offset)
        if self.mode is ReadMode.LOCAL:
            self._count(item.source_fd is not None)
            return os.pread(await self._source_fd(item), end - offset, offset)
        if self.mode is ReadMode.RANGED:
            self._count(all(b in item.blocks for b in self._blocks(offset, end)))
            await self._fill_blocks(item, offset, end)
            if offset == item.next_offset or offset == 0:
                self._read_ahead(item, end)
            item.next_offset = end
        else:
            self._count(item.watermark >= end)
            await self._wait_stream(item, end)
        return os.pread(self._open_cache_file(item, create=False), end - offset, offset)

    def _count(self, hit: bool) -> None:
        if hit:
            self.stats.hits += 1
        else:
            self.stats.misses += 1

    async def _source_fd(self, item: CacheItem) -> int:
        if item.source_fd is None:
            async with item.fill_lock:
                if item.source_fd is None:
                    local = await self.remote.local_path(item.path)
                    item.local_source = local
                    item.source_fd = os.open(local, os.O_RDONLY)
                    # readers through FUSE come in 1 MiB requests, one at a time: let the
                    # kernel read ahead on the local copy in big steps meanwhile
                    os.posix_fadvise(item.source_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return item.source_fd

    def _blocks(self, start: int, end: int) -> range:
        return range(start // self.block_size, (end - 1) // self.block_size + 1)

    async def _fill_blocks(self, item: CacheItem, start: int, end: int) -> None:
        missing = [b for b in self._blocks(start, end) if b not in item.blocks]
        if not missing:
            return
        try:
            async with trio.open_nursery() as nursery:
                for block in missing:
                    nursery.start_soon(self._fetch_block, item, block)
        except BaseExceptionGroup as group:
            failed = group.subgroup(errors.AssetFSError)
            if failed is None:
                raise
            raise _leaf(failed) from None

    async def _fetch_block(self, item: CacheItem, block: int) -> None:
        if block in item.blocks:
            return
        pending = item.inflight.get(block)
        if pending is not None:
            await pending.wait()
            if block not in item.blocks:
                raise item.stream_error or errors.Unavailable(url=item.path)
            return
        done = item.inflight[block] = trio.Event()
        try:
            offset = block * self.block_size
            length = min(self.block_size, item.size - offset)
            self.make_room(length, for_dirty=False)
            # A descriptor of our own: the item's may be closed (last handle released) and
            # its number reused while the driver writes.
            fd = os.dup(self._open_cache_file(item, create=True))
            try:
                await self.remote.read_into(item.path, offset, length, fd)
            finally:
                os.close(fd)
            self.stats.downloaded_bytes += length
            item.blocks.add(block)
            if len(item.blocks) * self.block_size >= item.size:
                item.complete = True
        except errors.AssetFSError as exc:
            item.stream_error = exc
            raise
        finally:
            del item.inflight[block]
            done.set()

    def _read_ahead(self, item: CacheItem, end: int) -> None:
        if self._nursery is None or end >= item.size:
            return
        first = end // self.block_size
        for block in range(first, first + self.readahead):
            if block * self.block_size >= item.size:
                break
            if block not in item.blocks and block not in item.inflight:
                self._nursery.start_soon(self._background_fetch, item, block)

    async def _background_fetch(self, item: CacheItem, block: int) -> None:
        with contextlib.suppress(errors.AssetFSError, OSError):
            await self._fetch_block(item, block)

    async def _wait_stream(self, item: CacheItem, end: int) -> None:
        """Wait until the stream of ``item`` has passed offset ``end``; start (or restart,
        after a failure) the stream if none is running. Every waiter of a failed stream
        gets its error."""
        if not item.stream_running and not item.complete and item.watermark < end:
            if self._nursery is None:
                raise errors.Unavailable("cache not started")
            item.stream_error = None
            item.stream_running = item.stream_started = True
            self._nursery.start_soon(self._stream, item)
        while item.watermark < end and not item.complete:
            if not item.stream_running:
                raise item.stream_error or errors.Unavailable(url=item.path)
            await item.arrived.wait()

    def _signal(self, item: CacheItem) -> None:
        item.arrived.set()
        item.arrived = trio.Event()

    async def _stream(self, item: CacheItem) -> None:
        """Fill ``item`` from offset 0 with :meth:`Driver.open_stream` (stores that ignore
        HTTP Range: vcsim, NodeODX). A restart after a failure downloads from 0 again (there
        is no range) but rewrites nothing below the watermark. The call layer's deadline is
        a stall timeout (assetfs/remote.py). :meth:`closed` stops the stream when the last
        handle closes first: a file manager's thumbnailer or type sniffer reads a few KiB of
        each file, and each would otherwise download the whole file."""
        position = 0
        try:
            self.make_room(item.size, for_dirty=False)
            with trio.CancelScope() as item.stream_scope:
                async for chunk in self.remote.open_stream(item.path):
                    end = position + len(chunk)
                    self.stats.downloaded_bytes += len(chunk)
                    if end > item.watermark:
                        skip = max(0, item.watermark - position)
                        self._pwrite(item, chunk[skip:], position + skip)
                        item.watermark = end
                        self._signal(item)
                    position = end
            if item.stream_scope.cancelled_caught:
                self.stats.streams_stopped += 1
                log.debug("download of %s stopped at %d of %d bytes: no reader left",
                          item.path, item.watermark, item.size)
            else:
                item.complete = True
        except errors.AssetFSError as exc:
            item.stream_error = exc
        except OSError as exc:
            item.stream_error = errors.NoSpace(str(exc)) if exc.errno == errno.ENOSPC else \
                errors.AssetFSError(str(exc))
        finally:
            item.stream_running = False
            item.stream_scope = None
            self._signal(item)

    async def fill_all(self, item: CacheItem) -> None:
        """Make the cache file hold the whole content (before a partial overwrite)."""
        if item.complete or item.dirty:
            self._open_cache_file(item, create=True)
            return
        self.make_room(item.size, for_dirty=True)
        if self.mode is ReadMode.LOCAL:
            source = await self._source_fd(item)
            target = self._open_cache_file(item, create=True)
            await trio.to_thread.run_sync(_copy_fd, source, target, item.size)
        elif self.mode is ReadMode.RANGED:
            self._open_cache_file(item, create=True)
            if item.size:
                await self._fill_blocks(item, 0, item.size)
        else:
            self._open_cache_file(item, create=True)
            await self._wait_stream(item, item.size)
        item.complete = True

    # --- writes --------------------------------------------------------------------------
    async def write(self, item: CacheItem, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; the item becomes dirty (journaled first)."""
        if not (item.complete or item.dirty):
            await self.fill_all(item)
        grow = max(0, offset + len(data) - item.size)
        if grow:
            self.make_room(grow, for_dirty=True)
        await self._mark_dirty(item)
        self._pwrite(item, data, offset)
        item.size = max(item.size, offset + len(data))
        return len(data)

    async def truncate(self, item: CacheItem, size: int) -> None:
        """Set the local length to ``size`` bytes; the item becomes dirty."""
        item.observe()
        if size and not (item.complete or item.dirty):
            await self.fill_all(item)
        if size > item.size:
            self.make_room(size - item.size, for_dirty=True)
        fd = self._open_cache_file(item, create=True)
        await self._mark_dirty(item)
        os.ftruncate(fd, size)
        item.size = size
        item.complete = True

    def _pwrite(self, item: CacheItem, data: bytes, offset: int) -> None:
        errors.pwrite_local(self._open_cache_file(item, create=True), data, offset)

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


def _leaf(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _copy_fd(source: int, target: int, size: int) -> None:
    """Copy ``size`` bytes from fd ``source`` to fd ``target`` (copy_file_range where the
    kernel can, a buffered copy otherwise)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(source, target, size - done, done, done)
            if n == 0:
                break
            done += n
    except OSError:
        with os.fdopen(os.dup(source), "rb") as src, os.fdopen(os.dup(target), "r+b") as dst:
            src.seek(done)
            dst.seek(done)
            shutil.copyfileobj(src, dst, 1 << 20)
    os.ftruncate(target, size)


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
