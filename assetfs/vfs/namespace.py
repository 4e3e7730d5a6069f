"""Name resolution: what exists at a path, from the metadata cache, the dirty files of the
block cache, and (on a miss) the store, through the driver call layer (assetfs/remote.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from .. import errors
from ..cache.blocks import BlockCache
from ..drivers.base import Entry, join, split
from ..remote import Remote
from .metadata import MISSING, MetadataCache
from .mtimes import MtimeOverlay
from .trash import TrashPolicy

T = TypeVar("T")
R = TypeVar("R")

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
        self.metadata = metadata
        self.cache = cache

    async def remote(self, path: str) -> Entry | None:
        """The store's entry at ``path`` (cached), or None if it does not exist there."""
        cached = self.metadata.entry(path)
        if cached is MISSING:

            def fill(found: Entry | None) -> Entry | None:
                self.metadata.fill(path, found)
                return found

            try:
                cached = await self._filled(
                    split(path)[0], lambda: self.store_entry(path), fill,
                    lambda: self.metadata.entry(path), lambda found: found,
                )
            except errors.Unavailable:
                cached = self.metadata.stale_entry(path)
                if cached is MISSING:
                    raise
                return cached  # type: ignore[return-value]  # the store is down: last known
        assert cached is None or isinstance(cached, Entry)
        return cached

    async def store_entry(self, path: str) -> Entry | None:
        """What the store has at ``path`` now (None: nothing), asked under the retry
        policy, bypassing the cache. Raises Unavailable and the driver's other errors."""
        try:
            return await self.store.stat(path)
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
        return None if remote is None else self.mtimes.apply(path, remote)

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
            try:
                filled: dict[str, Entry] = await self._filled(
                    folder,
                    lambda: self.store.list(folder),
                    lambda entries: self.metadata.put_listing(folder, entries),
                    lambda: MISSING if (left := self.metadata.listing(folder)) is None else left,
                    lambda entries: {e.name: e for e in entries},
                )
                listing = filled
            except errors.Unavailable:
                listing = self.metadata.stale_listing(folder)
                if listing is None:
                    raise
        merged = {name: self.mtimes.apply(join(folder, name), e) for name, e in listing.items()
                  if not self.trash.hides(join(folder, name))}
        for name, item in self.cache.shadowing_children(folder):
            merged[name] = item.entry(listing.get(name), name)
        return merged
