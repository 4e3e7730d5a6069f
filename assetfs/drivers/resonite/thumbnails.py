"""The on-disk thumbnail store: each item's file bytes, kept by record id and modification
time, shared by every mount on the machine.

A thumbnail is immutable for a given (record id, ``last_modified_unix_nanos``): the game
gives a changed record a new modification time. So a file named after a digest of the two
never needs revalidation, and a remount (or a second mount of another folder) finds it
without any FetchThumbnail call. Files are ``<key>.<ext>`` in one folder: ``<ext>`` is the
image type (``webp``, ``png``, ``jpg``, ``gif``, ``bin``), or ``json`` for an item with no
thumbnail, whose file is its record as JSON. Each file is written under a temporary name and
renamed into place, so two daemons filling the same store never see a partial file. Nothing
is evicted: a thumbnail is a few KiB; ``rm -r`` of the folder (``-o thumbnail_cache``) is
always safe.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

TYPES = {
    "image/webp": "webp",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/gif": "gif",
}
"""File extensions by content type."""
RECORD_EXT = "json"


def extension(content_type: str, data: bytes) -> str:
    """The file extension for a thumbnail: from ``content_type``, else from the image's
    magic bytes (the server may send ``""``), else ``bin``."""
    known = TYPES.get(content_type.split(";")[0].strip().lower())
    if known:
        return known
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"GIF8":
        return "gif"
    return "bin"


def key(record_id: str, mtime_ns: int, path: str, *detail: str) -> str:
    """The store key of an item: a digest of its record id and modification time (ns), or
    of its server path when the record has no id, and of ``detail`` (what else a generated
    file depends on: a record file's name and whether a path reaches it)."""
    ident = record_id or f"path:{path}"
    text = "\0".join((ident, str(mtime_ns), *detail))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Stored:
    """One stored file: ``path`` on local disk, ``size`` in bytes, ``ext`` its type."""

    path: str
    size: int
    ext: str

    @property
    def is_record(self) -> bool:
        """True for an item with no thumbnail (the file is its record as JSON)."""
        return self.ext == RECORD_EXT


class ThumbnailStore:
    """The folder ``root`` of stored thumbnails, indexed in memory after one scan."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, Stored] | None = None

    def _scan(self) -> dict[str, Stored]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        index: dict[str, Stored] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                name, dot, ext = entry.name.partition(".")
                if dot and not name.startswith("tmp") and entry.is_file():
                    index[name] = Stored(entry.path, entry.stat().st_size, ext)
        return index

    def get(self, key: str) -> Stored | None:
        """The stored file of ``key``, or None. The first call scans the folder."""
        if self._index is None:
            self._index = self._scan()
        return self._index.get(key)

    def put(self, key: str, data: bytes, ext: str) -> Stored:
        """Store ``data`` as ``<key>.<ext>`` (blocking: call from a worker thread).
        Raises OSError (a full disk: ENOSPC)."""
        if self._index is None:
            self._index = self._scan()
        target = self.root / f"{key}.{ext}"
        fd, scratch = tempfile.mkstemp(prefix="tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(scratch, target)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise
        stored = Stored(str(target), len(data), ext)
        self._index[key] = stored
        return stored
