"""The metadata cache: entries (positive and negative) and folder listings.

Entries and listings expire after ``ttl`` seconds (cachetools TTL+LRU). With a push-event
store the TTL is long, because the invalidator drops what changes; with a polling store it
follows the poll interval. A negative entry (``None``) records that a name does not exist,
because file managers and shells probe many names that are not there.

What expired is kept aside (``stale_entry``/``stale_listing``, LRU-bounded) until an event
or a change of ours says it changed: while the store cannot be reached, folders already
listed stay listable and files already seen keep their attributes (stale-if-error, as
HTTP caches do, and as docs/architecture.md asks of a mount whose backend is down).

File managers look for the same few names in every folder they show (:data:`PROBE_NAMES`:
GIO's ``.hidden``, KDE's ``.directory``, Windows' ``desktop.ini`` and ``Thumbs.db``, macOS's
``.DS_Store``...). Their absence is kept as long as the stale layer keeps it, not only for
the TTL: once a folder was listed or a probe name looked up in it, a revisit asks the store
nothing more about them; an event or a change of ours (or a poll that finds one) drops the
answer like any other (tests/test_desktop.py).

A remote lookup can race with an event: a listing fetched before a deletion, stored after
the invalidator applied it, would bring the deleted name back until the TTL ends. Every
change bumps a counter of the folder it happened in (:meth:`stamp`); a fill that saw the
stamp move while it waited for the store does not store what it fetched
(:class:`~.namespace.Namespace`; tests/test_namespace.py).
"""

from __future__ import annotations

import cachetools

from ..drivers.base import Entry, join, split

_MISSING = object()

PROBE_NAMES = frozenset({
    ".hidden", ".directory", "desktop.ini", "Desktop.ini", "Thumbs.db", "thumbs.db",
    "ehthumbs.db", ".DS_Store", "._.DS_Store", "autorun.inf", "AutoRun.inf", "AUTORUN.INF",
    ".xdg-volume-info", ".localized", ".Trash", ".comments", ".thumbnails",
})
"""Names file managers and desktop libraries look up in folders they show, which asset
stores almost never hold."""


class _Counters(cachetools.LRUCache[str, int]):
    """Folder -> change count, LRU-bounded; ``evicted`` counts the counters dropped, so that
    a stamp taken before an eviction never equals one taken after it."""

    evicted = 0

    def popitem(self) -> tuple[str, int]:
        self.evicted += 1
        return super().popitem()


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
        self._changes = _Counters(max_entries // 10 or 1)
        self._names: cachetools.LRUCache[str, set[str]] = cachetools.LRUCache(
            max_entries // 10 or 1
        )
        """Folder -> names that got an entry here (a superset: pruned in :meth:`children`)."""
        self._epoch = 0
        """Bumped when whole trees are dropped (:meth:`forget_tree`, :meth:`clear`)."""

    def stamp(self, folder: str) -> tuple[int, int]:
        """The change stamp of ``folder``: it moves whenever an entry in ``folder``, its
        listing, or a tree holding it changes here. Compare one taken before a remote fetch
        with one taken after: if it moved, what was fetched may predate the change."""
        return self._epoch + self._changes.evicted, self._changes.get(folder, 0)

    def children(self, folder: str) -> set[str]:
        """The names in ``folder`` given an entry one by one (:meth:`put`, :meth:`fill`)
        that still have one, positive or negative; the listed ones are in
        :meth:`stale_listing`."""
        names = self._names.get(folder, set())
        names -= {n for n in names if self.entry(join(folder, n)) is _MISSING}
        return set(names)

    def _named(self, path: str) -> None:
        if path != "/":
            parent, name = split(path)
            names = self._names.get(parent)
            if names is None:
                names = self._names[parent] = set()
            names.add(name)

    def _bump(self, folder: str) -> None:
        self._changes[folder] = self._changes.get(folder, 0) + 1

    def _changed(self, path: str) -> None:
        """Move the stamps that ``path`` changing concerns: its folder's and its own (it
        may be a folder)."""
        for folder in {split(path)[0], path}:
            self._bump(folder)

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
        if name in PROBE_NAMES and self.stale_entry(path) is None:
            return None
        return _MISSING

    def listing(self, folder: str) -> dict[str, Entry] | None:
        """The cached children of ``folder``, or None."""
        return self._listings.get(folder)

    def put(self, path: str, entry: Entry | None) -> None:
        """Record a change: ``entry`` at ``path`` (``None``: absent), keeping the parent
        listing true; the stamps concerned move."""
        self._changed(path)
        self.fill(path, entry)

    def fill(self, path: str, entry: Entry | None) -> None:
        """Record what the store said about ``path`` (a lookup's fill, not a change: no stamp
        moves), keeping the parent listing true."""
        self._named(path)
        self._entries[path] = self._stale_entries[path] = entry
        parent, name = split(path)
        listing = self._stale_listings.get(parent)
        if listing is not None and path != "/":
            if entry is None:
                listing.pop(name, None)
            else:
                listing[name] = entry

    def put_listing(self, folder: str, entries: list[Entry]) -> dict[str, Entry]:
        """Record the children of ``folder`` (and each child's entry), as the store listed
        them (a fill: no stamp moves)."""
        listing = {e.name: e for e in entries}
        self._listings[folder] = self._stale_listings[folder] = listing
        for e in entries:
            self._entries[join(folder, e.name)] = self._stale_entries[join(folder, e.name)] = e
        return listing

    def forget(self, path: str, children: bool = True) -> None:
        """Drop what is known about ``path`` and, if it is a folder and ``children``, its
        listing (a store action on a folder changes its metadata, not its children)."""
        self._changed(path)
        parent, name = split(path)
        for entries, listings in self._layers:
            entries.pop(path, None)
            if children:
                listings.pop(path, None)
            listing = listings.get(parent)
            if listing is not None:
                listing.pop(name, None)

    def forget_tree(self, path: str) -> None:
        """Drop ``path`` and everything cached under it (rename or delete of a folder)."""
        self._epoch += 1
        prefix = path.rstrip("/") + "/"
        for layer in self._layers:
            for cache in layer:
                for key in [k for k in cache if k == path or k.startswith(prefix)]:
                    cache.pop(key, None)
        self.forget(path)

    def forget_listing(self, folder: str) -> None:
        """Drop the listing of ``folder`` only (its children changed)."""
        self._bump(folder)
        self._listings.pop(folder, None)
        self._stale_listings.pop(folder, None)

    def clear(self) -> None:
        """Drop everything (events were lost)."""
        self._epoch += 1
        for layer in self._layers:
            for cache in layer:
                cache.clear()

    @property
    def _layers(self) -> tuple[tuple[cachetools.Cache, cachetools.Cache], ...]:  # type: ignore[type-arg]
        return ((self._entries, self._listings), (self._stale_entries, self._stale_listings))


MISSING = _MISSING
