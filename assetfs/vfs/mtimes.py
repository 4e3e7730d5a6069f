"""Modification times the store cannot keep.

omni.client (Nucleus and ``file:``) and the other stores set a file's mtime themselves, to
the time of the upload; ``touch -d``, ``cp -p`` and ``rsync -a`` set it explicitly, and an
``rsync -a`` run again would copy everything once more if the mount then showed the upload
time. Like rclone's modtime metadata, assetfs keeps the local mtime of each file it wrote or
touched, with the remote version it belongs to, in the journal database: while the store
still has that version, the kept mtime is shown; a remote change (a new version) makes the
store's own mtime visible again.
"""

from __future__ import annotations

import dataclasses

from ..cache.journal import Journal
from ..drivers.base import Entry


class MtimeOverlay:
    """path -> (version, mtime ns), persisted in the journal database."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._rows = journal.mtimes()

    def apply(self, path: str, entry: Entry) -> Entry:
        """``entry`` with the kept mtime if one is kept for its current version."""
        row = self._rows.get(path)
        if row is None or entry.is_dir:
            return entry
        version, mtime_ns = row
        if version != entry.version:
            self.drop(path)
            return entry
        return dataclasses.replace(entry, mtime_ns=mtime_ns)

    def keep(self, path: str, version: str, mtime_ns: int) -> None:
        """Show ``mtime_ns`` (ns) for ``path`` while the store has ``version`` there."""
        if self._rows.get(path) != (version, mtime_ns):
            self._rows[path] = (version, mtime_ns)
            self._journal.set_mtime(path, version, mtime_ns)

    def drop(self, path: str) -> None:
        """Forget what is kept for ``path`` and below (deleted)."""
        prefix = path.rstrip("/") + "/"
        gone = [p for p in self._rows if p == path or p.startswith(prefix)]
        if gone:
            for p in gone:
                del self._rows[p]
            self._journal.drop_mtimes(gone)

    def moved(self, old: str, new: str) -> None:
        """``old`` (and what is below it) is now ``new``."""
        prefix = old.rstrip("/") + "/"
        moving = {p: r for p, r in self._rows.items() if p == old or p.startswith(prefix)}
        self.drop(new)
        self.drop(old)
        for p, (version, mtime_ns) in moving.items():
            self.keep(new + p[len(old):], version, mtime_ns)
