"""Declared mount options: each has a name, a type, a default and a help line.

The core declares its options in :mod:`assetfs.config`, each driver in its
``Driver.declared_options``; :func:`parse` checks a ``-o`` string against both in one place,
so a typo (``-o nosuchopt=1``) or a malformed value fails the mount with one line naming
it, and ``assetfs drivers`` prints every driver's options from the same declarations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def size(text: str) -> int:
    """``"10G"`` -> 10737418240 bytes (K, M, G, T are powers of 1024). Raises ValueError."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError("not a size (try 512M or 10G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def seconds(text: str) -> float:
    """A non-negative number of seconds. Raises ValueError."""
    value = float(text)
    if value < 0 or value != value:
        raise ValueError("not a number of seconds")
    return value


def boolean(text: str) -> bool:
    """A flag: bare (``-o insecure``), or ``1/true/yes/on`` and ``0/false/no/off``."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not yes or no")


def integer(text: str) -> int:
    """A non-negative whole number. Raises ValueError."""
    value = int(text)
    if value < 0:
        raise ValueError("not a non-negative number")
    return value


def text(value: str) -> str:
    """Any string, as given."""
    return value


def choice(*words: str) -> Callable[[str], str]:
    """A parser that accepts one of ``words``."""

    def parse(value: str) -> str:
        if value not in words:
            raise ValueError("one of " + "|".join(words))
        return value

    parse.__name__ = "|".join(words)
    return parse


_TYPE_NAMES = {size: "SIZE", seconds: "SECONDS", boolean: "yes|no", integer: "N", text: "TEXT"}


@dataclass(frozen=True)
class Option:
    """One ``-o`` option: ``parse`` turns its text into the value (ValueError when it
    cannot), ``default`` is the value when it is absent (None: not set)."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def metavar(self) -> str:
        """How the value is shown in help text (``SECONDS``, ``SIZE``...)."""
        return _TYPE_NAMES.get(self.parse, self.parse.__name__.upper())

    def usage(self) -> str:
        """``name=SECONDS (default 2)  help`` for ``assetfs drivers``."""
        shown = self.name if self.parse is boolean else f"{self.name}={self.metavar}"
        default = "" if self.default in (None, False, "") else f" (default {self.default})"
        return f"{shown}{default}: {self.help}"


def parse(raw: Mapping[str, str], *declared: Iterable[Option]) -> dict[str, Any]:
    """The values of every declared option: parsed from ``raw`` (``-o`` text split into
    ``{name: text}``, ``""`` for a bare name) or the default. A declared name ending in
    ``*`` (``Ice.*``) takes every option with that prefix, each under its own name.

    Raises :class:`~assetfs.errors.BadOption` naming the first option nobody declared, or
    whose value does not parse.
    """
    known = {option.name: option for group in declared for option in group}
    prefixes = {name[:-1]: option for name, option in known.items() if name.endswith("*")}
    values: dict[str, Any] = {
        name: option.default for name, option in known.items() if not name.endswith("*")
    }
    for name, value in raw.items():
        option = known.get(name) or next(
            (o for prefix, o in prefixes.items() if name.startswith(prefix)), None)
        if option is None:
            raise errors.BadOption(f"unknown option -o {name} (see: assetfs drivers)")
        try:
            values[name] = option.parse(value)
        except ValueError as exc:
            raise errors.BadOption(f"-o {name}={value}: {exc}") from None
    return values


def split(text: str | None) -> dict[str, str]:
    """``"ro,cache_max=10G"`` -> ``{"ro": "", "cache_max": "10G"}``."""
    options: dict[str, str] = {}
    for part in (text or "").split(","):
        if part.strip():
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
    return options
