"""One cached file: its local view, its place in the upload cycle, and the state its fetcher
keeps (blocks present, the stream's watermark, the library's local copy)."""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field

import trio

from .. import errors
from ..drivers.base import Entry, Kind, LocalRange


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
    """Bytes of the stream that have arrived (ReadMode.STREAM), written or not yet."""
    written: int = 0
    """Bytes of the stream already in the cache file; ``unwritten`` holds the rest up to
    ``watermark``, in order, while a worker thread writes them (cache/fetchers.py)."""
    unwritten: collections.deque[tuple[int, bytes | memoryview]] = field(
        default_factory=collections.deque)
    source: LocalRange | None = None
    """Where the content lies on local disk once its local copy is open (ReadMode.LOCAL)."""
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
    """Cancels the running stream (cache/fetchers.py: the last handle closed first)."""
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
    writing_behind: trio.Lock = field(default_factory=trio.Lock)
    """Held while a chunk of the stream is written into the cache file by a worker thread
    (cache/fetchers.py), and by a change that needs no content first (a truncate), so
    that no chunk of the store's content lands on top of it."""

    @property
    def shadows(self) -> bool:
        """Whether the local content stands in for the store's: dirty, or being written."""
        return self.dirty or bool(self.writers)

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
