"""Name resolution: what exists at a path, from the metadata cache, the dirty files of the
block cache, and (on a miss) the store, through the driver call layer (assetfs/remote.py).

Stale-if-error (vfs/metadata.py): an expired entry or listing is refreshed with a single
attempt, and when that fails for want of the store the last known answer is given at once
instead of after ``-o timeout`` of retries; only what was never seen waits for the
store's deadline."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import cachetools

from .. import errors
from ..cache.blocks import BlockCache
from ..drivers.base import Entry, join, split
from ..remote import Remote
from .metadata import MISSING, MetadataCache
from .mtimes import MtimeOverlay
from .trash import TrashPolicy

T = TypeVar("T")
R = TypeVar("R")

TOUCHED_FOLDERS = 10_000
"""Folders whose last change through the mount is remembered (LRU)."""
FILL_TRIES = 3
"""Remote lookups of one name or folder, when changes keep arriving while they wait: the
last answer is used without being cached (metadata.py, stamps)."""


class Namespace:
    """The merged view the kernel sees: remote entries overlaid by local unsaved files."""

    def __init__(
        self,
        remote: Remote,
        metadata: MetadataCache,
        cache: BlockCache,
        mtimes: MtimeOverlay,
        trash: TrashPolicy | None = None,
    ) -> None:
        self.mtimes = mtimes
        self.trash = trash or TrashPolicy("server")
        """Which trash folders the view hides (vfs/trash.py)."""
        self.store = remote
        self._touched: cachetools.LRUCache[str, int] = cachetools.LRUCache(TOUCHED_FOLDERS)
        """Folder -> when names in it last changed through the mount (ns)."""
        self.metadata = metadata
        self.cache = cache

    async def remote(self, path: str) -> Entry | None:
        """The store's entry at ``path`` (cached), or None if it does not exist there."""
        cached = self.metadata.entry(path)
        if cached is MISSING:

            def fill(found: Entry | None) -> Entry | None:
                self.metadata.fill(path, found)
                return found

            once = self.metadata.stale_entry(path) is not MISSING
            try:
                cached = await self._filled(
                    split(path)[0], lambda: self.store_entry(path, once), fill,
                    lambda: self.metadata.entry(path), lambda found: found,
                )
            except errors.Unavailable:
                cached = self.metadata.stale_entry(path)
                if cached is MISSING:
                    raise
                return cached  # type: ignore[return-value]  # the store is down: last known
        assert cached is None or isinstance(cached, Entry)
        return cached

    async def store_entry(self, path: str, once: bool = False) -> Entry | None:
        """What the store has at ``path`` now (None: nothing), asked under the retry
        policy (``once``: one attempt), bypassing the cache. Raises Unavailable and the
        driver's other errors."""
        try:
            return await self.store.stat(path, once)
        except errors.NotFound:
            return None

    async def _filled(
        self,
        folder: str,
        fetch: Callable[[], Awaitable[T]],
        store: Callable[[T], R],
        cached: Callable[[], R | object],
        uncached: Callable[[T], R],
    ) -> R:
        """``store(fetch())``, unless a change in ``folder`` landed while the store was
        asked (metadata.py, stamps): then what the change left in the cache (``cached()``
        when not MISSING), or the store is asked again; after :data:`FILL_TRIES` raced
        answers, ``uncached(last answer)``. Raises what ``fetch`` raises."""
        for _ in range(FILL_TRIES):
            stamp = self.metadata.stamp(folder)
            answer = await fetch()
            if self.metadata.stamp(folder) == stamp:
                return store(answer)
            if (left := cached()) is not MISSING:
                return left  # type: ignore[return-value]  # not MISSING: an R
        return uncached(answer)

    async def find(self, path: str) -> Entry | None:
        """The entry the kernel sees at ``path`` (local size/mtime for files being written),
        or None."""
        if self.trash.hides(path):
            return None
        remote = await self.remote(path)
        item = self.cache.shadowing(path)
        if item is not None:
            return item.entry(remote, split(path)[1])
        return None if remote is None else self._shown(path, remote)

    def touched(self, *folders: str) -> None:
        """Names in ``folders`` changed through the mount: from now on each shows a
        modification time of at least now, as a folder on a local disk would (POSIX), also
        before the store's answer says so. gvfs, GIO's trash, looks again at a trash's
        ``files/`` only when that time moved (docs/desktop.md, Trash)."""
        now = time.time_ns()
        for folder in folders:
            self._touched[folder] = now

    def _shown(self, path: str, entry: Entry) -> Entry:
        """``entry`` with the modification times set or caused through the mount."""
        if entry.is_dir:
            touched = self._touched.get(path, 0)
            return dataclasses.replace(entry, mtime_ns=touched) \
                if touched > entry.mtime_ns else entry
        return self.mtimes.apply(path, entry)

    async def entry(self, path: str) -> Entry:
        """Like :meth:`find`, raising NotFound."""
        found = await self.find(path)
        if found is None:
            raise errors.NotFound(url=self.store.describe(path))
        return found

    async def folder(self, path: str) -> Entry:
        """The entry at ``path``, which must be a folder (NotFound, NotADirectory)."""
        found = await self.entry(path)
        if not found.is_dir:
            raise errors.NotADirectory(url=self.store.describe(path))
        return found

    async def listing(self, folder: str) -> dict[str, Entry]:
        """The children of ``folder``, with local unsaved files merged in."""
        listing = self.metadata.listing(folder)
        if listing is None:
            once = self.metadata.stale_listing(folder) is not None
            try:
                filled: dict[str, Entry] = await self._filled(
                    folder,
                    lambda: self.store.list(folder, once),
                    lambda entries: self.metadata.put_listing(folder, entries),
                    lambda: MISSING if (left := self.metadata.listing(folder)) is None else left,
                    lambda entries: {e.name: e for e in entries},
                )
                listing = filled
            except errors.Unavailable:
                listing = self.metadata.stale_listing(folder)
                if listing is None:
                    raise
        merged = {name: self._shown(path, e) for name, e in listing.items()
                  if not self.trash.hides(path := join(folder, name))}
        for name, item in self.cache.shadowing_children(folder):
            merged[name] = item.entry(listing.get(name), name)
        return merged
