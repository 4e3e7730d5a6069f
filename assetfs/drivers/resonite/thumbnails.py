"""The on-disk thumbnail store: each item's file bytes, kept by record id and modification
time, shared by every mount on the machine.

A thumbnail is immutable for a given (record id, ``last_modified_unix_nanos``): the game
gives a changed record a new modification time. So content keyed by a digest of the two
never needs revalidation, and a remount (or a second mount of another folder) finds it
without any FetchThumbnail call. Each stored file has a type ``<ext>``: the image type
(``webp``, ``png``, ``jpg``, ``gif``, ``bin``), ``json`` for an item with no thumbnail,
whose file is its record as JSON, or ``none`` (empty) for "the server has no thumbnail".

The files are kept in *packs*, many to a local file, each appended as it arrives, since
creating a file costs far more than appending a few KiB to an open one (0.4-1 ms against
~5 us on the test VM's loaded disk, docs/resonite.md). A pack ``<id>.pack`` is a sequence
of records::

    <key> <size> <ext>\n
    <size bytes>

An appended file is readable at once, by range (``ReadMode.LOCAL``), so nothing waits in
memory for a write. The scan that indexes the store at a mount's start stops at a record
cut short (a crash), which is dropped; every record before it stays. Nothing is evicted: a
thumbnail is a few KiB; ``rm -r`` of the folder (``-o thumbnail_cache``) is always safe
while no mount runs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import threading
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


PACK_EXT = "pack"
PACK_MAX = 64 << 20
"""Bytes past which a mount starts a new pack."""
RECORD = re.compile(rb"([0-9a-f]{32}) ([0-9]{1,12}) ([a-z]{1,8})\n")
"""A record's header line."""


@dataclass(frozen=True)
class Stored:
    """One stored file: ``key`` its store key, ``size`` in bytes, ``ext`` its type."""

    key: str
    size: int
    ext: str

    @property
    def is_record(self) -> bool:
        """True for an item with no thumbnail (the file is its record as JSON)."""
        return self.ext == RECORD_EXT

    @property
    def version(self) -> str:
        """A version string for the file: it changes when the content does."""
        return f"{self.key}.{self.size}.{self.ext}"


@dataclass(frozen=True)
class Place:
    """Where a stored file's bytes lie: ``size`` bytes at byte ``offset`` of pack ``path``."""

    path: str
    offset: int
    size: int


def read_pack(path: str) -> list[tuple[Stored, Place]]:
    """The whole records of the pack at ``path``, up to the first one cut short or
    malformed. Raises OSError."""
    found = []
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        while True:
            match = RECORD.fullmatch(f.readline(64))
            if match is None:
                break
            key, size, ext = match[1].decode(), int(match[2]), match[3].decode()
            offset = f.tell()
            if offset + size > end:
                break
            found.append((Stored(key, size, ext), Place(path, offset, size)))
            f.seek(size, os.SEEK_CUR)
    return found


class ThumbnailStore:
    """The folder ``root`` of packs, indexed in memory after one scan; this store appends to
    a pack of its own (made at the first :meth:`put`). Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, Stored] | None = None
        self._places: dict[str, Place] = {}
        self._lock = threading.Lock()
        self._pack: tuple[int, str] | None = None
        """The descriptor and path of the pack this store appends to."""
        self._end = 0

    def _scan(self) -> dict[str, Stored]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        index: dict[str, Stored] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.name.endswith("." + PACK_EXT) or not entry.is_file():
                    continue
                try:
                    files = read_pack(entry.path)
                except OSError:
                    continue
                for stored, place in files:
                    index[stored.key] = stored
                    self._places[stored.key] = place
        return index

    def get(self, key: str) -> Stored | None:
        """The stored file of ``key``, or None. The first call scans the folder (blocking:
        make it from a worker thread)."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._scan()
        return self._index.get(key)

    def place(self, key: str) -> Place | None:
        """Where the bytes of ``key`` lie on disk; None for a key not stored (the first call
        may scan, as :meth:`get`)."""
        if self._index is None:
            self.get(key)
        return self._places.get(key)

    def put(self, key: str, data: bytes, ext: str) -> Stored:
        """Append ``data`` to this store's pack as the file of ``key``, of type ``ext``
        (blocking: one ``write``; the first call also creates the pack). Raises OSError (a
        full disk: ENOSPC); the pack is then closed, and the next call starts another."""
        self.get(key)
        stored = Stored(key, len(data), ext)
        header = f"{key} {len(data)} {ext}\n".encode()
        with self._lock:
            assert self._index is not None
            if self._pack is None or self._end > PACK_MAX:
                self._close()
                name = f"{os.getpid():x}-{os.urandom(6).hex()}.{PACK_EXT}"
                path = os.path.join(self.root, name)
                self._pack = (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path)
                self._end = 0
            fd, path = self._pack
            record = header + data
            try:
                written = os.write(fd, record)
                if written != len(record):
                    raise OSError(errno.ENOSPC, f"short write to {path}")
            except OSError:
                self._close()  # a record cut short ends the pack (read_pack stops there)
                raise
            self._places[key] = Place(path, self._end + len(header), len(data))
            self._index[key] = stored
            self._end += len(record)
        return stored

    def _close(self) -> None:
        pack, self._pack = self._pack, None
        if pack is not None:
            with contextlib.suppress(OSError):
                os.close(pack[0])

    def close(self) -> None:
        """Close this store's pack (a later :meth:`put` starts another); never raises."""
        with self._lock:
            self._close()
