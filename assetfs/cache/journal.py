"""Crash-safe record of dirty files (sqlite in WAL mode, ``synchronous=FULL``).

A row exists for every cache file whose content is not yet on the store. It is committed
before the ``write``/``create``/``truncate`` that made the file dirty returns, so after a
SIGKILL or a power cut the next mount of the same cache directory knows what to upload.
The bytes themselves live in the cache file ``data/<key>``; the journal holds only
``key -> (path, base_version)``, so writes after the first touch no row.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DirtyRecord:
    """One dirty file: cache file ``key``, remote ``path`` (driver path), and the remote
    ``base_version`` its content started from (``""`` for a file new on our side)."""

    key: str
    path: str
    base_version: str
    since: float


class Journal:
    """The dirty-file table of one cache directory."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dirty ("
            " key TEXT PRIMARY KEY, path TEXT NOT NULL, base_version TEXT NOT NULL,"
            " since REAL NOT NULL)"
        )

    def mark_dirty(self, key: str, path: str, base_version: str) -> None:
        """Record (or update) that cache file ``key`` holds unsaved content for ``path``."""
        self._db.execute(
            "INSERT INTO dirty (key, path, base_version, since) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET path=excluded.path",
            (key, path, base_version, time.time()),
        )

    def moved(self, key: str, path: str) -> None:
        """The dirty file ``key`` was renamed to ``path``."""
        self._db.execute("UPDATE dirty SET path=? WHERE key=?", (path, key))

    def mark_clean(self, key: str) -> None:
        """The content of ``key`` is on the store (or the file was deleted)."""
        self._db.execute("DELETE FROM dirty WHERE key=?", (key,))

    def records(self) -> list[DirtyRecord]:
        """Every dirty file, oldest first (replayed at start)."""
        rows = self._db.execute("SELECT key, path, base_version, since FROM dirty ORDER BY since")
        return [DirtyRecord(*row) for row in rows]

    def close(self) -> None:
        """Checkpoint and close the database."""
        self._db.close()
