"""The metadata cache: entries (positive and negative) and folder listings.

Entries and listings expire after ``ttl`` seconds (cachetools TTL+LRU). With a push-event
store the TTL is long, because the invalidator drops what changes; with a polling store it
follows the poll interval. A negative entry (``None``) records that a name does not exist,
because file managers and shells probe many names that are not there.

What expired is kept aside (``stale_entry``/``stale_listing``, LRU-bounded) until an event
or a change of ours says it changed: while the store cannot be reached, folders already
listed stay listable and files already seen keep their attributes (stale-if-error, as
HTTP caches do, and as design.md asks of a mount whose backend is down).
"""

from __future__ import annotations

import cachetools

from ..drivers.base import Entry, join, split

_MISSING = object()


class MetadataCache:
    """Path -> Entry (or ``None`` for a known-absent name) and folder -> {name: Entry}."""

    def __init__(self, ttl: float, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self._entries: cachetools.TTLCache[str, Entry | None] = cachetools.TTLCache(
            max_entries, ttl
        )
        self._listings: cachetools.TTLCache[str, dict[str, Entry]] = cachetools.TTLCache(
            max_entries // 10 or 1, ttl
        )
        self._stale_entries: cachetools.LRUCache[str, Entry | None] = cachetools.LRUCache(
            max_entries
        )
        self._stale_listings: cachetools.LRUCache[str, dict[str, Entry]] = cachetools.LRUCache(
            max_entries // 10 or 1
        )

    def stale_entry(self, path: str) -> Entry | object | None:
        """The last entry known for ``path`` even if expired (``MISSING`` if none)."""
        found = self._stale_entries.get(path, _MISSING)
        if found is _MISSING and path != "/":
            parent, name = split(path)
            listing = self._stale_listings.get(parent)
            if listing is not None:
                return listing.get(name)
        return found

    def stale_listing(self, folder: str) -> dict[str, Entry] | None:
        """The last listing known for ``folder`` even if expired."""
        return self._stale_listings.get(folder)

    def entry(self, path: str) -> Entry | object | None:
        """The cached entry, ``None`` if known absent, or :data:`MISSING` if unknown."""
        found = self._entries.get(path, _MISSING)
        if found is not _MISSING:
            return found
        parent, name = split(path)
        listing = self._listings.get(parent)
        if listing is not None and path != "/":
            return listing.get(name)
        return _MISSING

    def listing(self, folder: str) -> dict[str, Entry] | None:
        """The cached children of ``folder``, or None."""
        return self._listings.get(folder)

    def put(self, path: str, entry: Entry | None) -> None:
        """Record ``entry`` at ``path`` (``None``: absent), keeping the parent listing true."""
        self._entries[path] = self._stale_entries[path] = entry
        parent, name = split(path)
        listing = self._stale_listings.get(parent)
        if listing is not None and path != "/":
            if entry is None:
                listing.pop(name, None)
            else:
                listing[name] = entry

    def put_listing(self, folder: str, entries: list[Entry]) -> dict[str, Entry]:
        """Record the children of ``folder`` (and each child's entry)."""
        listing = {e.name: e for e in entries}
        self._listings[folder] = self._stale_listings[folder] = listing
        for e in entries:
            self._entries[join(folder, e.name)] = self._stale_entries[join(folder, e.name)] = e
        return listing

    def forget(self, path: str) -> None:
        """Drop what is known about ``path`` and, if it is a folder, its listing."""
        parent, name = split(path)
        for entries, listings in self._layers:
            entries.pop(path, None)
            listings.pop(path, None)
            listing = listings.get(parent)
            if listing is not None:
                listing.pop(name, None)

    def forget_tree(self, path: str) -> None:
        """Drop ``path`` and everything cached under it (rename or delete of a folder)."""
        prefix = path.rstrip("/") + "/"
        for layer in self._layers:
            for cache in layer:
                for key in [k for k in cache if k == path or k.startswith(prefix)]:
                    cache.pop(key, None)
        self.forget(path)

    def forget_listing(self, folder: str) -> None:
        """Drop the listing of ``folder`` only (its children changed)."""
        self._listings.pop(folder, None)
        self._stale_listings.pop(folder, None)

    def clear(self) -> None:
        """Drop everything (events were lost)."""
        for layer in self._layers:
            for cache in layer:
                cache.clear()

    @property
    def _layers(self) -> tuple[tuple[cachetools.Cache, cachetools.Cache], ...]:  # type: ignore[type-arg]
        return ((self._entries, self._listings), (self._stale_entries, self._stale_listings))


MISSING = _MISSING
