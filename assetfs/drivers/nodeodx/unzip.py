"""Members of a zip archive extracted while the archive is still arriving.

The node sends ``all.zip`` whole and ignores Range (docs/backends/nodeodx.md, The result
archive), and the zip index (central directory) is at its end: :mod:`zipfile` can open
the archive only once it is complete. But each member is preceded by a *local header*
(APPNOTE.TXT 4.3.7: name, method, CRC-32 and sizes, or bit 3 set when the sizes follow the
data in a *data descriptor*, 4.3.9, as streaming zip writers do), so the members can be
inflated in order as the bytes come, and a reader of a member need not wait for the rest
of the archive. :func:`extract` does that in a worker thread, over a file another task is
still writing; what it cannot handle (encryption, methods other than stored and deflate,
a stored member with a data descriptor) it leaves to :mod:`zipfile` once the archive is
complete. Every member it finishes is checked against its CRC-32 and size.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOCAL_HEADER = b"PK\x03\x04"
DESCRIPTOR = b"PK\x07\x08"
PIECE = 1 << 20
"""Bytes read from the archive per step."""


def dos_time_ns(date: int, clock: int) -> int:
    """Nanoseconds since the epoch of an MS-DOS date and time (as :mod:`zipfile` reads
    them, taken as UTC); 0 when invalid."""
    try:
        when = dt.datetime((date >> 9) + 1980, (date >> 5) & 0xF, date & 0x1F,
                           clock >> 11, (clock >> 5) & 0x3F, (clock & 0x1F) * 2, tzinfo=dt.UTC)
    except ValueError:
        return 0
    return int(when.timestamp()) * 1_000_000_000


def member_name(raw: str) -> str:
    """A member's path as the tree shows it (normalized, no leading ``/``)."""
    return posixpath.normpath(raw.lstrip("/"))


@dataclass
class Extracted:
    """One member being extracted to ``path``: ``size`` and ``crc`` (None until known:
    from the local header, or from the data descriptor at its end), ``written`` bytes so
    far, ``done`` once complete and checked, ``failed`` when left to :mod:`zipfile`."""

    name: str
    path: Path
    mtime_ns: int
    size: int | None
    crc: int | None
    written: int = 0
    done: bool = False
    failed: bool = False


class Growing:
    """Reads a file that another task is still appending to: ``available()`` gives how
    many bytes are there, ``ended()`` whether no more will come; ``stop`` ends reading."""

    def __init__(self, path: Path, available: Callable[[], int], ended: Callable[[], bool],
                 stop: threading.Event) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._offset = 0
        self._pushed = b""
        self._available = available
        self._ended = ended
        self._stop = stop

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what :meth:`read` returns next."""
        self._pushed = data + self._pushed

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes: fewer only when the file ended (or ``stop`` was set)."""
        out = self._pushed[:size]
        self._pushed = self._pushed[size:]
        while len(out) < size and not self._stop.is_set():
            there = self._available() - self._offset
            if there <= 0:
                if self._ended() and self._available() <= self._offset:
                    break
                time.sleep(0.002)
                continue
            piece = os.pread(self._fd, min(size - len(out), there), self._offset)
            self._offset += len(piece)
            out += piece
        return out


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int, bool]:
    """(uncompressed, compressed, has zip64 field) from a local header's extra field."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4:at + 4 + length]
        if tag == 1:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            return usize, csize, True
        at += 4 + length
    return usize, csize, False


def extract(feed: Growing, out: Path, found: Callable[[Extracted], None],
            progress: Callable[[], None]) -> None:
    """Extract members from ``feed`` into files ``out/<n>`` in archive order until the
    central directory (or something this code leaves to zipfile): ``found`` is called
    with each new member, ``progress`` after each piece written (from this thread)."""
    index = 0
    while True:
        if feed.read(4) != LOCAL_HEADER:
            return
        header = feed.read(26)
        if len(header) < 26:
            return
        (_, flags, method, clock, date, crc, csize, usize, name_len,
         extra_len) = struct.unpack("<HHHHHIIIHH", header)
        raw_name = feed.read(name_len).decode("utf-8" if flags & 0x800 else "cp437", "replace")
        usize, csize, zip64 = _zip64_sizes(feed.read(extra_len), usize, csize)
        trailing = bool(flags & 0x8)
        if flags & 0x1 or method not in (0, 8) or (method == 0 and trailing):
            return  # encrypted, another method, or no way to find the end: zipfile's job
        member = Extracted(member_name(raw_name), out / str(index), dos_time_ns(date, clock),
                           None if trailing else usize, None if trailing else crc)
        index += 1
        directory = raw_name.endswith("/")
        if not directory:
            found(member)
        computed = _copy(feed, member, method, None if trailing else csize, progress)
        if computed is None:
            member.failed = True
            progress()
            return
        if trailing:
            first = feed.read(4)
            rest = feed.read(20 if zip64 else 12) if first == DESCRIPTOR else (
                first + feed.read(16 if zip64 else 8))
            fmt = "<IQQ" if zip64 else "<III"
            if len(rest) < struct.calcsize(fmt):
                member.failed = True
                progress()
                return
            crc, _, usize = struct.unpack_from(fmt, rest)
            member.crc, member.size = crc, usize
        member.done = member.written == member.size and member.crc == computed
        member.failed = not member.done
        progress()
        if member.failed:
            return


def _copy(feed: Growing, member: Extracted, method: int, compressed: int | None,
          progress: Callable[[], None]) -> int | None:
    """Write the member's data to its file; its CRC-32, or None when the archive ended
    too soon or the data is not valid deflate."""
    crc = 0
    inflater = zlib.decompressobj(-15) if method == 8 else None
    left = compressed
    with open(member.path, "wb", buffering=0) as target:
        while left != 0 and not (inflater is not None and inflater.eof):
            piece = feed.read(PIECE if left is None else min(PIECE, left))
            if not piece:
                return None
            if left is not None:
                left -= len(piece)
            try:
                data = inflater.decompress(piece) if inflater is not None else piece
            except zlib.error:
                return None
            if data:
                target.write(data)
                crc = zlib.crc32(data, crc)
                member.written += len(data)
                progress()
        if inflater is not None:
            if not inflater.eof:
                return None
            feed.unread(inflater.unused_data)
    return crc
