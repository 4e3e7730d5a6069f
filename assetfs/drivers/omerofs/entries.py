"""OMERO.fs ``FileStats`` as :class:`~assetfs.drivers.base.Entry`, with version strings that
catch changes the server's coarse mtimes hide (docs/omerofs.md)."""

from __future__ import annotations

import uuid
from typing import Any

from ..base import Entry, Kind
from .ice import float_ns, monitors


class Versions:
    """The ``version`` strings of one driver's entries.

    mtimes are Ice 32-bit floats (128 s steps at today's epoch), so a version is
    ``"<size>:<mtime_ns>:<ctime_ns>"`` plus, once this process saw an event for the path or
    lost events (a resync), ``":<session>.r<resyncs>.e<events>"`` with a per-process id: a
    change that keeps the size and lands in the same 128 s bucket is caught by its event.
    """

    def __init__(self) -> None:
        self._session = uuid.uuid4().hex[:8]
        self._events: dict[str, int] = {}
        self._resyncs = 0

    def of(self, path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
        """The version of file ``path`` with that size (bytes) and those times (ns)."""
        version = f"{size}:{mtime_ns}:{ctime_ns}"
        tags = []
        if self._resyncs:
            tags.append(f"r{self._resyncs}")
        events = self._events.get(path)
        if events:
            tags.append(f"e{events}")
        return f"{version}:{self._session}." + ".".join(tags) if tags else version

    def changed(self, path: str) -> None:
        """An event said ``path`` changed: its version moves on."""
        self._events[path] = self._events.get(path, 0) + 1

    def all_changed(self) -> None:
        """Events were lost: every version moves on (every cached one may be stale)."""
        self._resyncs += 1


def to_entry(path: str, name: str, stats: Any, versions: Versions) -> Entry:
    """The entry ``name`` at driver path ``path`` from a ``FileStats`` reply. Folders are
    read-only (``0o555``) with no version, files ``0o444``; the owner goes to metadata."""
    is_dir = stats.type == monitors.FileType.Dir
    size = int(stats.size)
    mtime_ns, ctime_ns = float_ns(stats.mTime), float_ns(stats.cTime)
    return Entry(
        name=name,
        kind=Kind.DIR if is_dir else Kind.FILE,
        size=0 if is_dir else size,
        mtime_ns=mtime_ns,
        version="" if is_dir else versions.of(path, size, mtime_ns, ctime_ns),
        mode=0o555 if is_dir else 0o444,
        metadata={"owner": str(stats.owner)} if stats.owner else {},
    )
