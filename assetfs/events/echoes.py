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
"""

from __future__ import annotations

import time

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

    def changed(self, *paths: str) -> None:
        """Record that this mount is about to change ``paths`` on the store (called before
        the store call, so an echo arriving while it runs is known too)."""
        for path in paths:
            self._when[path] = time.monotonic()

    def recent(self, path: str) -> bool:
        """True if ``path`` or a folder above it was changed here within the window."""
        while True:
            if path in self._when:
                return True
            if path == "/":
                return False
            path = path.rsplit("/", 1)[0] or "/"
