"""File names for inventory records: the shown name of every child of a folder, so that each
record stays addressable even when names repeat or hold a ``/`` (docs/resonite.md, Names).

- A folder or link keeps its name; an item is its name plus the extension of its file's
  type (``Chair.webp``; ``Empty World.json`` when it has no thumbnail).
- A ``/`` in a name becomes U+2215 DIVISION SLASH, which looks the same.
- When several records share a name (the game allows repeated names in one folder), or
  would show the same file name, the first in listing order keeps it and each other one
  gets ``~<8 characters of its record id>`` before the extension (``Chair~0a1b2c3d.json``);
  the full id if that still collides. ``.``, ``..`` and the empty name are shown that way
  too.
- The server resolves a path segment by name, splitting on ``/``, and a repeated name to
  its first record (docs/backends/resonite.md): only a record that is the first of its name
  and has no ``/`` in it is *reachable* by a path. The others are shown with their record
  (no thumbnail can be fetched for them) and cannot be moved, removed, copied or spawned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SLASH = "\u2215"
RESERVED = {"", ".", ".."}


@dataclass(frozen=True)
class Named:
    """One record under its shown name: ``reachable`` tells whether its server path names
    it and only it."""

    shown: str
    record: Any
    reachable: bool


def reachable(records: Sequence[Any]) -> list[bool]:
    """For each record (``.name`` attributes, in listing order): whether a path reaches it."""
    seen: set[str] = set()
    flags = []
    for record in records:
        flags.append("/" not in record.name and record.name not in seen)
        seen.add(record.name)
    return flags


def _short_id(record: Any) -> str:
    ident: str = record.record_id or record.path
    return ident.removeprefix("R-")[:8]


def shown_names(records: Sequence[Any], suffix: Callable[[Any], str]) -> list[Named]:
    """Shown names for ``records`` in listing order; ``suffix(record)`` is ``""`` for a
    folder or ``".webp"``-style for an item. Names are unique."""
    flags = reachable(records)
    taken: set[str] = set()
    wanted = []
    for record in records:
        base = record.name.replace("/", SLASH)
        wanted.append((base, suffix(record)))
    plain = {f"{b}{s}" for (b, s), r in zip(wanted, records, strict=True) if b not in RESERVED}
    named = []
    seen: set[str] = set()
    for (base, ext), record, ok in zip(wanted, records, flags, strict=True):
        shown = f"{base}{ext}"
        if base in RESERVED or shown in taken or record.name in seen:
            shown = f"{base}~{_short_id(record)}{ext}"
            if shown in taken or shown in plain:
                shown = f"{base}~{record.record_id or record.path}{ext}".replace("/", SLASH)
        taken.add(shown)
        seen.add(record.name)
        named.append(Named(shown, record, ok))
    return named
