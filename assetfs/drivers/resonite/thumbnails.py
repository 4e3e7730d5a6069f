"""The on-disk thumbnail store: each item's file bytes, kept by record id and modification
time, shared by every mount on the machine.

A thumbnail is immutable for a given (record id, ``last_modified_unix_nanos``): the game
gives a changed record a new modification time. So a file named after a digest of the two
never needs revalidation, and a remount (or a second mount of another folder) finds it
without any FetchThumbnail call. Files are ``<key>.<size>.<ext>`` in one folder: ``<ext>``
is the image type (``webp``, ``png``, ``jpg``, ``gif``, ``bin``), ``json`` for an item with
no thumbnail, whose file is its record as JSON, or ``none`` (empty) for "the server has no
thumbnail". Nothing is evicted: a thumbnail is a few KiB; ``rm -r`` of the folder
(``-o thumbnail_cache``) is always safe while no mount runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
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


PENDING_MAX = 64 << 20
"""Bytes of thumbnails kept in memory waiting to be written; past it, writes are made at
once by the caller."""


@dataclass(frozen=True)
class Stored:
    """One stored file: ``path`` on local disk, ``size`` in bytes, ``ext`` its type,
    ``key`` its store key."""

    key: str
    path: str
    size: int
    ext: str

    @property
    def is_record(self) -> bool:
        """True for an item with no thumbnail (the file is its record as JSON)."""
        return self.ext == RECORD_EXT


class ThumbnailStore:
    """The folder ``root`` of stored files, indexed in memory after one scan.

    Files are ``<key>.<size>.<ext>``: the size in the name lets the scan drop a file whose
    write was cut short (a crash), so no temporary file and rename are needed (on the VM
    here a create+rename cost ~1.5 ms per file, a plain create ~0.4 ms). :meth:`put`
    indexes a file at once and leaves the write to :meth:`flush` (a worker thread), so a
    listing never waits for the disk; whoever needs the bytes on disk flushes that key
    first. Thread-safe.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, Stored] | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._writing: dict[str, threading.Event] = {}

    def _scan(self) -> dict[str, Stored]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        index: dict[str, Stored] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                parts = entry.name.split(".")
                if len(parts) != 3 or not parts[1].isdigit() or not entry.is_file():
                    continue
                if entry.stat().st_size != int(parts[1]):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                    continue
                index[parts[0]] = Stored(parts[0], entry.path, int(parts[1]), parts[2])
        return index

    def get(self, key: str) -> Stored | None:
        """The stored file of ``key``, or None. The first call scans the folder (blocking:
        make it from a worker thread)."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._scan()
        return self._index.get(key)

    @property
    def pending(self) -> bool:
        """True while some files are indexed but not written yet."""
        return bool(self._pending)

    def unwritten(self, key: str) -> bool:
        """True while the file of ``key`` is not completely on disk yet."""
        return key in self._pending or key in self._writing

    def put(self, key: str, data: bytes, ext: str) -> Stored:
        """Index ``data`` as ``<key>.<size>.<ext>``; the file is written by :meth:`flush`,
        or here (blocking) when :data:`PENDING_MAX` bytes already wait. Raises OSError."""
        self.get(key)
        stored = Stored(key, os.path.join(self.root, f"{key}.{len(data)}.{ext}"), len(data),
                        ext)
        with self._lock:
            assert self._index is not None
            self._index[key] = stored
            if self._pending_bytes + len(data) <= PENDING_MAX:
                self._pending[key] = data
                self._pending_bytes += len(data)
                return stored
        self._write(stored.path, data)
        return stored

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # same key, same bytes: another mount wrote it
            return
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def flush(self, key: str | None = None) -> None:
        """Write pending files (blocking): only ``key`` (waiting if another thread is
        writing it), or all of them. Raises OSError (a full disk: ENOSPC)."""
        while True:
            with self._lock:
                if key is not None and key not in self._pending:
                    busy = self._writing.get(key)
                    if busy is None:
                        return
                    self._lock.release()
                    try:
                        busy.wait()
                    finally:
                        self._lock.acquire()
                    return
                if not self._pending:
                    return
                name = key if key is not None else next(iter(self._pending))
                data = self._pending.pop(name)
                self._pending_bytes -= len(data)
                done = self._writing[name] = threading.Event()
                assert self._index is not None
                path = self._index[name].path
            try:
                self._write(path, data)
            finally:
                with self._lock:
                    del self._writing[name]
                done.set()
            if key is not None:
                return
