"""Name resolution: what exists at a path, from the metadata cache, the dirty files of the
block cache, and (on a miss) the driver, each remote call under the retry policy."""

from __future__ import annotations

from .. import errors, retry
from ..cache.blocks import BlockCache
from ..drivers.base import Driver, Entry, join, split
from .metadata import MISSING, MetadataCache
from .mtimes import MtimeOverlay

FILL_TRIES = 3
"""Remote lookups of one name or folder, when changes keep arriving while they wait: the
last answer is used without being cached (metadata.py, stamps)."""


class Namespace:
    """The merged view the kernel sees: remote entries overlaid by local unsaved files."""

    def __init__(
        self,
        driver: Driver,
        metadata: MetadataCache,
        cache: BlockCache,
        policy: retry.RetryPolicy,
        mtimes: MtimeOverlay,
    ) -> None:
        self.mtimes = mtimes
        self.driver = driver
        self.metadata = metadata
        self.cache = cache
        self.policy = policy

    async def remote(self, path: str) -> Entry | None:
        """The store's entry at ``path`` (cached), or None if it does not exist there."""
        cached = self.metadata.entry(path)
        for _ in range(FILL_TRIES):
            if cached is not MISSING:
                break
            stamp = self.metadata.stamp(split(path)[0])
            try:
                fetched = await retry.call(lambda: self.driver.stat(path), self.policy,
                                           f"stat of {self.driver.describe(path)}")
            except errors.NotFound:
                fetched = None
            except errors.Unavailable:
                cached = self.metadata.stale_entry(path)
                if cached is MISSING:
                    raise
                return cached  # type: ignore[return-value]  # the store is down: last known
            if self.metadata.stamp(split(path)[0]) == stamp:
                self.metadata.fill(path, fetched)
                cached = fetched
                break
            cached = self.metadata.entry(path)  # changed meanwhile: what the change left wins
        if cached is MISSING:
            cached = fetched  # changing faster than it can be asked: used, not cached
        assert cached is None or isinstance(cached, Entry)
        return cached

    async def find(self, path: str) -> Entry | None:
        """The entry the kernel sees at ``path`` (local size/mtime for files being written),
        or None."""
        remote = await self.remote(path)
        item = self.cache.items.get(path)
        if item is not None and (item.dirty or item.writers):
            return item.entry(remote, split(path)[1])
        return None if remote is None else self.mtimes.apply(path, remote)

    async def entry(self, path: str) -> Entry:
        """Like :meth:`find`, raising NotFound."""
        found = await self.find(path)
        if found is None:
            raise errors.NotFound(url=self.driver.describe(path))
        return found

    async def folder(self, path: str) -> Entry:
        """The entry at ``path``, which must be a folder (NotFound, NotADirectory)."""
        found = await self.entry(path)
        if not found.is_dir:
            raise errors.NotADirectory(url=self.driver.describe(path))
        return found

    async def listing(self, folder: str) -> dict[str, Entry]:
        """The children of ``folder``, with local unsaved files merged in."""
        listing = self.metadata.listing(folder)
        for _ in range(FILL_TRIES):
            if listing is not None:
                break
            stamp = self.metadata.stamp(folder)
            try:
                entries = await retry.call(lambda: self.driver.list(folder), self.policy,
                                           f"list of {self.driver.describe(folder)}")
            except errors.Unavailable:
                listing = self.metadata.stale_listing(folder)
                if listing is None:
                    raise
                break
            if self.metadata.stamp(folder) == stamp:
                listing = self.metadata.put_listing(folder, entries)
                break
            listing = self.metadata.listing(folder)  # changed meanwhile: the list may predate it
        if listing is None:
            listing = {e.name: e for e in entries}  # changing faster than it can be listed
        merged = {name: self.mtimes.apply(join(folder, name), e) for name, e in listing.items()}
        for path, item in self.cache.items.items():
            parent, name = split(path)
            if parent == folder and path != "/" and (item.dirty or item.writers):
                merged[name] = item.entry(listing.get(name), name)
        return merged
