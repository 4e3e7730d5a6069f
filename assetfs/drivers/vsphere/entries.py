"""vSphere Content Library objects as :class:`~assetfs.drivers.base.Entry`: libraries and
items are folders, an item's files are files (see the package docstring for why versions
are made as they are)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from ..base import Entry, Kind
from .catalog import File


def parse_time_ns(text: str | None) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time such as
    ``2026-11-22T03:10:13.493902606Z`` (nanosecond digits kept); 0 when absent or bad."""
    if not text:
        return 0
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text)
    if not match:
        return 0
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        when = dt.datetime.fromisoformat(base + zone)
    except ValueError:
        return 0
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(when.timestamp()) * 1_000_000_000 + nanos


def _metadata(**values: Any) -> dict[str, str]:
    """The values given, as strings, leaving out those absent or empty."""
    return {k: str(v) for k, v in values.items() if v not in (None, "")}


def library_entry(name: str, info: dict[str, Any]) -> Entry:
    """The folder entry of a library shown as ``name`` (``info``: its REST ``get``)."""
    return Entry(
        name=name,
        kind=Kind.DIR,
        mtime_ns=parse_time_ns(info.get("last_modified_time")),
        version=f"{info.get('id')}:{info.get('version') or ''}",
        mode=0o755,
        metadata=_metadata(
            id=info.get("id"),
            type=info.get("type"),
            description=info.get("description"),
            version=info.get("version"),
        ),
    )


def item_entry(info: dict[str, Any]) -> Entry:
    """The folder entry of an item (``info``: its REST ``get``)."""
    return Entry(
        name=str(info.get("name")),
        kind=Kind.DIR,
        mtime_ns=parse_time_ns(info.get("last_modified_time")),
        version=f"{info.get('id')}:{info.get('content_version') or ''}:"
        f"{info.get('metadata_version') or ''}",
        mode=0o755,
        metadata=_metadata(
            id=info.get("id"),
            type=info.get("type"),
            content_version=info.get("content_version"),
            metadata_version=info.get("metadata_version"),
            description=info.get("description"),
            size=info.get("size"),
        ),
    )


def file_entry(item: dict[str, Any], file: File) -> Entry:
    """A file's entry. There is no per-file time, so ``mtime`` is the item's; the
    version is the file's own ``version``, size, checksum and copy count. Not the item
    id: the vcsim rebuild gives every file of the item a new one, and a sibling's
    changed version would look like a remote change to the core's write-back (a false
    conflict copy)."""
    return Entry(
        name=file.name,
        kind=Kind.FILE,
        size=file.size,
        mtime_ns=parse_time_ns(item.get("last_modified_time")),
        version=f"{file.version}:{file.size}:{file.checksum}:{file.copies}",
        mode=0o644,
        metadata=_metadata(
            type=item.get("type"),
            content_version=item.get("content_version"),
            checksum=file.checksum,
            description=item.get("description"),
            version=file.version,
            item_id=item.get("id"),
        ),
    )


def root_entry() -> Entry:
    """The entry of the mounted root (no server object behind it)."""
    return Entry(name="", kind=Kind.DIR, mode=0o755)
