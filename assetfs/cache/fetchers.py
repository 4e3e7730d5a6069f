"""How missing bytes of a clean file reach the block cache: one fetcher per
:class:`~assetfs.drivers.base.ReadMode`, all calling the store through the driver call layer
(assetfs/remote.py).

- :class:`LocalFetcher` (``LOCAL``, omni.client's ``file:``, Resonite): the library keeps
  a local copy (on ``file:`` the file itself; for Resonite a range of a pack of thumbnails);
  reads are served from it by range, with no second copy.
- :class:`RangedFetcher` (``RANGED``, OMERO.fs, memory://): blocks of ``block_size`` bytes
  are fetched on demand into the cache file; a sequential reader starts read-ahead of the
  next ``readahead`` blocks in the background.
- :class:`StreamFetcher` (``STREAM``, stores that ignore Range: vcsim, NodeODX, and
  omni.client's servers, which have no ranged read): one background stream fills the cache
  file from offset 0, written behind it in a worker thread, and a reader waits only until
  the bytes it asked for have arrived (served from memory until they are written). A
  stream the network cut off is opened again until the mount's deadline (``-o timeout``)
  has passed without a byte from the store.

Whatever the read mode, a clean file whose local copy the driver knows without I/O
(``Driver.known_local_range``: a NodeODX member once inflated in the spool) is read from
that copy in place (:meth:`Fetcher.known_copy`), with no second copy and no download.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from .. import errors
from ..drivers.base import LocalRange, ReadMode
from ..remote import Remote
from .item import CacheItem

log = logging.getLogger(__name__)


class CacheFiles(Protocol):
    """What a fetcher needs of the block cache (cache/blocks.py)."""

    def open_file(self, item: CacheItem, create: bool) -> int:
        """The item's cache file descriptor."""
        ...

    def make_room(self, incoming: int, for_dirty: bool) -> None:
        """Evict clean items until ``incoming`` more bytes fit."""
        ...

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Start a background task; False once the mount stopped serving."""
        ...


@dataclass
class FetchStats:
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

    def count(self, hit: bool) -> None:
        """Count one read as a hit or a miss."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1


class Fetcher(ABC):
    """Fills the cache file of a clean item that is not complete yet."""

    def __init__(self, remote: Remote, files: CacheFiles) -> None:
        self.remote = remote
        self.files = files
        self.stats = FetchStats()

    def stop(self, item: CacheItem) -> None:
        """The last handle on ``item`` closed: stop its stream if one is running
        (:class:`StreamFetcher`; other read modes run none). A file manager's thumbnailer
        or type sniffer reads a few KiB of each file and closes it, and each would
        otherwise download the whole file. What arrived stays cached; the next reader
        restarts from 0 (no Range). A stream that has all its bytes already (only their
        write into the cache file is left) goes on."""
        if item.stream_scope is not None and item.watermark < item.size:
            item.stream_scope.cancel()

    @abstractmethod
    async def read(self, item: CacheItem, offset: int, end: int) -> bytes | memoryview:
        """Bytes ``offset`` up to ``end`` of ``item`` (``end`` <= its size), or a view of
        them held in memory (:class:`StreamFetcher`). Raises
        AssetFSError (Unavailable, TimedOut, NotFound...)."""

    @abstractmethod
    async def fill(self, item: CacheItem) -> None:
        """Make the item's cache file (already open) hold its whole content."""

    def known_copy(self, item: CacheItem) -> tuple[int, LocalRange] | None:
        """The local copy of ``item`` the driver knows without any I/O
        (``Driver.known_local_range``: a store that is a local tree, a NodeODX member
        already inflated in the spool), opened read-only once and kept open until the
        last handle closes (so a driver that deletes or replaces the copy meanwhile does
        not change what an open file reads); None when the driver knows none, whatever
        the read mode. A whole copy whose size is not the item's is not this version's
        content and is not used. Raises OSError only for a copy that exists but cannot
        be opened."""
        if item.source_fd is not None and item.source is not None:
            return item.source_fd, item.source
        local = self.remote.known_local_range(item.path)
        if local is None:
            return None
        try:
            fd = self._adopt(item, local)
        except FileNotFoundError:
            return None
        if local.whole and os.fstat(fd).st_size != item.size:
            os.close(fd)
            item.source_fd = item.source = None
            return None
        return fd, local

    @staticmethod
    def _adopt(item: CacheItem, local: LocalRange) -> int:
        """Open ``local`` as the source of ``item``'s reads; its descriptor. Raises
        OSError."""
        fd = item.source_fd = os.open(local.path, os.O_RDONLY)
        item.source = local
        if local.whole:
            # readers through FUSE come in 1 MiB requests, one at a time: let the kernel
            # read ahead on the local copy in big steps meanwhile
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    async def local_copy(self, item: CacheItem) -> int | None:
        """The store's local copy of ``item``, opened read-only (the backing file of a
        read-only passthrough open), or None when there is none or it is a range of a
        bigger file. The default is the copy :meth:`known_copy` gives; ``ReadMode.LOCAL``
        also asks the driver (I/O). Raises AssetFSError."""
        copy = self.known_copy(item)
        return copy[0] if copy is not None and copy[1].whole else None

    def read_known(self, item: CacheItem, offset: int, end: int) -> bytes | None:
        """Bytes ``offset`` up to ``end`` of ``item`` from the copy :meth:`known_copy`
        gives, read in place whatever the read mode; None when the driver knows none.
        Raises OSError."""
        opened = item.source_fd is not None
        copy = self.known_copy(item)
        if copy is None:
            return None
        self.stats.count(opened)
        fd, source = copy
        return os.pread(fd, end - offset, source.offset + offset)

    def read_now(self, item: CacheItem) -> bytes | None:
        """The whole content of ``item`` when this read mode has it on local disk and can
        read it without waiting (no remote call, no lock held by another task), else None:
        the default reads the copy :meth:`known_copy` gives. Raises nothing: a local file
        that cannot be read means None (the reader's READ then meets the error)."""
        try:
            return self.read_known(item, 0, item.size)
        except OSError:
            return None

    def _cached(self, item: CacheItem, offset: int, end: int) -> bytes:
        return os.pread(self.files.open_file(item, create=False), end - offset, offset)


class LocalFetcher(Fetcher):
    """Reads the library's local copy in place (``ReadMode.LOCAL``): the whole local file,
    or the range of one that the driver names (drivers/base.py ``LocalRange``)."""

    async def local_copy(self, item: CacheItem) -> int | None:
        fd, source = await self._source(item)
        return fd if source.whole else None

    async def _source(self, item: CacheItem) -> tuple[int, LocalRange]:
        """The local copy of ``item``, opened by the first caller while later ones wait. The
        first takes the lock without a checkpoint, and a copy the driver knows without I/O
        (on ``file:``) is taken without the deadline and retry of a remote call: a small
        file's open costs ~25% less daemon CPU for it (scripts/bench_vs_rclone.py)."""
        while item.source_fd is None or item.source is None:
            if item.fill_lock.locked():
                async with item.fill_lock:
                    continue
            item.fill_lock.acquire_nowait()
            try:
                if self.known_copy(item) is None:
                    local = await self.remote.local_range(item.path)
                    if item.source_fd is None:  # not known without I/O meanwhile
                        self._adopt(item, local)
            finally:
                item.fill_lock.release()
        return item.source_fd, item.source

    async def read(self, item: CacheItem, offset: int, end: int) -> bytes:
        self.stats.count(item.source_fd is not None)
        fd, source = await self._source(item)
        return os.pread(fd, end - offset, source.offset + offset)

    def read_now(self, item: CacheItem) -> bytes | None:
        if item.source_fd is None and item.fill_lock.locked():  # another task opens it
            return None
        return super().read_now(item)

    async def fill(self, item: CacheItem) -> None:
        fd, source = await self._source(item)
        target = self.files.open_file(item, create=True)
        await trio.to_thread.run_sync(_copy_fd, fd, target, item.size, source.offset)


class RangedFetcher(Fetcher):
    """Fetches blocks on demand, with read-ahead (``ReadMode.RANGED``)."""

    def __init__(self, remote: Remote, files: CacheFiles, block_size: int,
                 readahead: int) -> None:
        super().__init__(remote, files)
        self.block_size = block_size
        self.readahead = readahead

    async def read(self, item: CacheItem, offset: int, end: int) -> bytes:
        self.stats.count(all(b in item.blocks for b in self._blocks(offset, end)))
        await self._fill_blocks(item, offset, end)
        if offset == item.next_offset or offset == 0:
            self._read_ahead(item, end)
        item.next_offset = end
        return self._cached(item, offset, end)

    async def fill(self, item: CacheItem) -> None:
        if item.size:
            await self._fill_blocks(item, 0, item.size)

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
            self.files.make_room(length, for_dirty=False)
            # A descriptor of our own: the item's may be closed (last handle released) and
            # its number reused while the driver writes.
            fd = os.dup(self.files.open_file(item, create=True))
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
        if end >= item.size:
            return
        first = end // self.block_size
        for block in range(first, first + self.readahead):
            if block * self.block_size >= item.size:
                break
            wanted = block not in item.blocks and block not in item.inflight
            if wanted and not self.files.spawn(self._background_fetch, item, block):
                return

    async def _background_fetch(self, item: CacheItem, block: int) -> None:
        with contextlib.suppress(errors.AssetFSError, OSError):
            await self._fetch_block(item, block)


STREAM_BACKLOG = 256 << 20
"""Bytes of a stream that may have arrived but not be written to the cache file yet; past
that the stream waits for the cache disk."""


class StreamFetcher(Fetcher):
    """One stream from offset 0 per item, readers waiting for their bytes
    (``ReadMode.STREAM``). Chunks are written to the cache file behind the stream, in a
    worker thread, and a reader is served from the chunks in memory until they are: a
    store whose whole file arrives at once (omni.client's ``read_file``) would otherwise
    make the first reader wait for the cache disk to take all of it (0.3-0.8 s for 256 MiB
    here, as long again as the download; docs/backends/nucleus.md, Reads)."""

    async def read(self, item: CacheItem, offset: int, end: int) -> bytes | memoryview:
        self.stats.count(item.watermark >= end)
        await self._wait_stream(item, end)
        return self._arrived(item, offset, end)

    async def fill(self, item: CacheItem) -> None:
        await self._wait_stream(item, item.size, written=True)

    def _arrived(self, item: CacheItem, offset: int, end: int) -> bytes | memoryview:
        """Bytes ``offset`` up to ``end`` that arrived: from the cache file below
        ``item.written``, from the chunks not written yet above it (a view of the chunk,
        not a copy, when one holds them all)."""
        if end <= item.written:
            return self._cached(item, offset, end)
        for start, chunk in item.unwritten:
            if start <= offset and end <= start + len(chunk):
                return memoryview(chunk)[offset - start:end - start]
            if start > offset:
                break
        parts = [self._cached(item, offset, item.written)] if offset < item.written else []
        position = max(offset, item.written)
        for start, chunk in item.unwritten:
            stop = min(start + len(chunk), end)
            if stop > position:
                parts.append(bytes(chunk[position - start:stop - start]))
                position = stop
            if position >= end:
                break
        return b"".join(parts)

    async def _wait_stream(self, item: CacheItem, end: int, written: bool = False) -> None:
        """Wait until the stream of ``item`` has passed offset ``end`` (and, if
        ``written``, written it to the cache file); start (or restart, after a failure)
        the stream if none is running. Every waiter of a failed stream gets its error; a
        stream stopped (:meth:`stop`) while someone still waits is started again."""
        waited = False
        while (item.written if written else item.watermark) < end and not item.complete:
            if not item.stream_running:
                if waited and item.stream_error is not None:
                    raise item.stream_error
                item.stream_error = None
                item.stream_running = item.stream_started = True
                if not self.files.spawn(self._stream, item):
                    item.stream_running = False
                    raise errors.Unavailable("the cache is not serving")
            await item.arrived.wait()
            waited = True

    @staticmethod
    def _signal(item: CacheItem) -> None:
        item.arrived.set()
        item.arrived = trio.Event()

    async def _stream(self, item: CacheItem) -> None:
        """Fill ``item`` from offset 0 with the store's stream. A restart after a failure
        downloads from 0 again (there is no range) but rewrites nothing below the
        watermark. The call layer's deadline is a stall timeout (assetfs/remote.py);
        :meth:`stop` ends it early. A stream cut off for want of the store is restarted
        by :meth:`_stream_until_deadline`; readers keep waiting meanwhile. What arrived
        but was not written when the stream ends early is dropped (the watermark goes back
        to what the cache file holds)."""
        fd = None
        try:
            self.files.make_room(item.size, for_dirty=False)
            # A descriptor of our own for the writing thread: the item's may be closed
            # (last handle released) and its number reused meanwhile.
            fd = os.dup(self.files.open_file(item, create=True))
            with trio.CancelScope() as item.stream_scope:
                await self._stream_and_write(item, fd)
            if item.stream_scope.cancelled_caught:
                self.stats.streams_stopped += 1
            else:
                item.complete = True
        except errors.AssetFSError as exc:
            item.stream_error = exc
        except OSError as exc:
            item.stream_error = errors.NoSpace(str(exc)) if exc.errno == errno.ENOSPC else \
                errors.AssetFSError(str(exc))
        finally:
            item.unwritten.clear()
            item.watermark = item.written
            if fd is not None:
                os.close(fd)
            item.stream_running = False
            item.stream_scope = None
            self._signal(item)

    async def _stream_and_write(self, item: CacheItem, fd: int) -> None:
        """The stream, and the task writing its chunks into ``fd`` behind it; returns when
        both are done. Raises the first error of either."""
        ended = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_behind, item, fd, ended)
                try:
                    await self._stream_until_deadline(item)
                finally:
                    ended.set()
                    self._signal(item)
        except BaseExceptionGroup as group:
            failed = group.subgroup((errors.AssetFSError, OSError))
            if failed is None:
                raise
            raise _leaf(failed) from None

    async def _write_behind(self, item: CacheItem, fd: int, ended: trio.Event) -> None:
        """Write ``item.unwritten`` into ``fd`` in order, in a worker thread, until the
        stream has ``ended`` and nothing is left. Stops the stream (as :meth:`stop`) once
        the item is dirty (a truncate needs no content first): the cache file then holds
        local content, which the store's must not overwrite. A writer that opened waits for
        the whole content before its first write (BlockCache.fill_all). Raises NoSpace,
        OSError."""
        while item.unwritten or not ended.is_set():
            if item.dirty:
                self.stop(item)
                return
            if not item.unwritten:
                await item.arrived.wait()
                continue
            start, chunk = item.unwritten[0]
            async with item.writing_behind:
                if item.dirty:  # changed while this waited: the change comes first
                    continue
                await trio.to_thread.run_sync(errors.pwrite_local, fd, chunk, start)
            item.unwritten.popleft()
            item.written = start + len(chunk)
            self._signal(item)

    async def _stream_until_deadline(self, item: CacheItem) -> None:
        """Stream ``item`` to its end. A stream that fails with Unavailable (connection
        reset or refused, body cut short) is opened again after the policy's backoff, as
        long as the store sent a byte, or the first attempt began, less than the policy's
        ``deadline`` (``-o timeout``, seconds) ago; past it, the last error is raised.
        Waits while more than :data:`STREAM_BACKLOG` bytes are not written yet."""
        policy = self.remote.policy
        attempt, last_byte = 0, trio.current_time()
        while True:
            position = 0
            try:
                async for chunk in self.remote.open_stream(item.path):
                    last_byte, attempt = trio.current_time(), 0
                    end = position + len(chunk)
                    self.stats.downloaded_bytes += len(chunk)
                    if end > item.watermark:
                        skip = max(0, item.watermark - position)
                        item.unwritten.append((position + skip, chunk[skip:]))
                        item.watermark = end
                        self._signal(item)
                    position = end
                    while item.watermark - item.written > STREAM_BACKLOG:
                        await item.arrived.wait()
                return
            except errors.Unavailable as exc:
                delay = policy.backoff(attempt)
                if trio.current_time() + delay - last_byte > policy.deadline:
                    raise
                attempt += 1
                log.info("stream of %s cut at byte %d (%s); again in %.2fs",
                         self.remote.describe(item.path), position, exc, delay)
                await trio.sleep(delay)


def fetcher_for(remote: Remote, files: CacheFiles, block_size: int, readahead: int) -> Fetcher:
    """The fetcher of the store's read mode; ``block_size`` in bytes and ``readahead`` in
    blocks apply to ranged reads."""
    if remote.read_mode is ReadMode.LOCAL:
        return LocalFetcher(remote, files)
    if remote.read_mode is ReadMode.RANGED:
        return RangedFetcher(remote, files, block_size, readahead)
    return StreamFetcher(remote, files)


def _leaf(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _copy_fd(source: int, target: int, size: int, start: int = 0) -> None:
    """Copy ``size`` bytes from fd ``source`` at byte ``start`` to fd ``target`` at 0
    (copy_file_range where the kernel can, a buffered copy otherwise)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(source, target, size - done, start + done, done)
            if n == 0:
                break
            done += n
    except OSError:
        with os.fdopen(os.dup(source), "rb") as src, os.fdopen(os.dup(target), "r+b") as dst:
            src.seek(start + done)
            dst.seek(done)
            left = size - done
            while left > 0 and (chunk := src.read(min(left, 1 << 20))):
                dst.write(chunk)
                left -= len(chunk)
    os.ftruncate(target, size)
