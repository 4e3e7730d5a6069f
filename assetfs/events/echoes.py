"""Our own changes, remembered for a while, so that their late echoes are not taken as news.

A push-event store reports the changes this mount made as well as everyone else's, and it
reports them late: omni.client's ``file:`` provider delivered the CREATED event of a file
after the mount had already deleted it, and the DELETED event of a folder after the mount
had made a file of the same name. Applied as the truth, such an echo brings a deleted name
back (``stat`` succeeds, the listing does not show it) or hides one just made (a model test
over a handful of names saw 52 such divergences in 10,000 operations, tests/test_model.py).

An event about a path this mount changed on the store within :data:`ECHO_WINDOW` seconds
(the path itself, or a folder above it: a folder rename moves its children) is therefore
only a hint: the invalidator asks the store what the path holds now, which already
reflects our change, and applies that instead (events/invalidator.py). An event that
reports the file version the mount already holds at the path (the echo of its own upload)
is not re-checked: it cannot undo anything the mount did since.

While one of our changes is under way (:meth:`OwnChanges.changing`: from before its store
call until the mount's caches and inode table record its outcome), even the store's
answer is no help: it may already hold the change whose bookkeeping has not run yet. A
rename's old name then reads as deleted, and applying that detached the inode the rename
was moving, so that the new name answered ENOENT (the model test saw it about once in
10,000 operations). An event about such a path is dropped: the change records what the
store holds once it ends, which is newer than anything the event says.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator

import cachetools

ECHO_WINDOW = 10.0
"""Seconds after one of our store changes during which events about it are re-checked."""


class OwnChanges:
    """Paths this mount changed on the store, with when (monotonic seconds)."""

    def __init__(self, window: float = ECHO_WINDOW, max_paths: int = 100_000) -> None:
        self.window = window
        self._when: cachetools.TTLCache[str, float] = cachetools.TTLCache(
            max_paths, window, timer=time.monotonic
        )
        self._under_way: collections.Counter[str] = collections.Counter()
        """Path -> changes of it under way (:meth:`changing`)."""

    def changed(self, *paths: str) -> None:
        """Record that this mount is about to change ``paths`` on the store (called before
        the store call, so an echo arriving while it runs is known too)."""
        for path in paths:
            self._when[path] = time.monotonic()

    @contextlib.contextmanager
    def changing(self, *paths: str) -> Iterator[None]:
        """Around one of our changes of ``paths``: from before its store call until the
        caches hold its outcome. The echo window counts from the start and again from the
        end (an upload of a large file takes longer than the window)."""
        self.changed(*paths)
        self._under_way.update(paths)
        try:
            yield
        finally:
            self._under_way.subtract(paths)
            self._under_way = +self._under_way
            self.changed(*paths)

    def recent(self, path: str) -> bool:
        """True if ``path`` or a folder above it was changed here within the window."""
        return any(p in self._when for p in _self_and_above(path))

    def under_way(self, path: str) -> bool:
        """True while a change of ``path`` or of a folder above it is under way."""
        return any(self._under_way[p] for p in _self_and_above(path))


def _self_and_above(path: str) -> Iterator[str]:
    """``/a/b/c``, ``/a/b``, ``/a``, ``/``."""
    while True:
        yield path
        if path == "/":
            return
        path = path.rsplit("/", 1)[0] or "/"
