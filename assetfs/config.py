"""Mount options (``-o key=value,...``): parsing, defaults, and the cache directory."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import errors

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_FALSE = {"0", "false", "no", "off"}


def parse_size(text: str) -> int:
    """``"10G"`` -> 10737418240 bytes (K, M, G, T are powers of 1024). Raises BadURL-style
    :class:`~assetfs.errors.InvalidName` on garbage."""
    match = _SIZE.match(text)
    if not match:
        raise errors.InvalidName(f"not a size: {text!r} (try 512M or 10G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def flag(options: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """Whether option ``name`` is on: given bare (``-o insecure``) or with any value but
    0/false/no/off; ``default`` when it is absent."""
    if name not in options:
        return default
    value = options[name]
    return value is None or str(value).strip().lower() not in _FALSE


def parse_options(text: str | None) -> dict[str, str]:
    """``"ro,cache_max=10G"`` -> ``{"ro": "", "cache_max": "10G"}``."""
    options: dict[str, str] = {}
    for part in (text or "").split(","):
        if part.strip():
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
    return options


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/assetfs`` (``~/.cache/assetfs``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "assetfs"


def mount_id(url: str) -> str:
    """A stable id for a mount of ``url``: its cache directory survives restarts, so the
    journal of a crashed daemon is found by the next mount of the same URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


CORE_OPTIONS = {
    "cache_dir", "cache_max", "write_back_delay", "entry_timeout", "attr_timeout",
    "negative_timeout", "timeout", "ro", "allow_other", "debug", "read_ahead_kb",
    "umount_timeout", "passthrough", "metrics", "trash",
}

TRASH_MODES = ("off", "server")
"""``-o trash=``: where a file manager's "Move to Trash" goes (vfs/trash.py)."""


@dataclass
class MountConfig:
    """Everything one daemon needs. Times are seconds, sizes bytes."""

    url: str
    mountpoint: Path
    options: dict[str, str] = field(default_factory=dict)

    def _float(self, key: str, default: float) -> float:
        try:
            return float(self.options.get(key, default))
        except ValueError:
            raise errors.InvalidName(f"-o {key}= needs a number of seconds") from None

    @property
    def cache_dir(self) -> Path:
        """Where this mount's cache files and journal live."""
        if "cache_dir" in self.options:
            return Path(self.options["cache_dir"])
        return default_cache_root() / mount_id(self.url)

    @property
    def cache_max(self) -> int:
        """Bound on cache bytes (default 10 GiB)."""
        return parse_size(self.options.get("cache_max", "10G"))

    @property
    def write_back_delay(self) -> float:
        """Seconds between the last close of a written file and its upload."""
        return self._float("write_back_delay", 2.0)

    @property
    def timeout(self) -> float:
        """Deadline of one remote request, seconds (past it: EIO/ETIMEDOUT)."""
        return self._float("timeout", 30.0)

    def kernel_timeout(self, key: str, push_events: bool, poll_interval: float) -> float:
        """Kernel entry/attr cache lifetime: long with push events (events invalidate),
        the poll interval otherwise."""
        return self._float(key, 300.0 if push_events else min(poll_interval, 60.0))

    @property
    def passthrough(self) -> bool:
        """Kernel FUSE passthrough for files whose whole content is cached (default on
        where the kernel and pyfuse3 allow it; ``-o passthrough=no`` turns it off)."""
        return flag(self.options, "passthrough", default=True)

    @property
    def metrics(self) -> tuple[str, int] | None:
        """``-o metrics=[HOST:]PORT``: where to serve Prometheus metrics (observe/metrics.py),
        as (host, port); the host is 127.0.0.1 unless given, port 0 picks a free one. None
        without the option. Raises InvalidName for anything else."""
        if "metrics" not in self.options:
            return None
        text = self.options["metrics"]
        host, _, port = text.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit() or int(port) > 65535:
            raise errors.InvalidName(
                f"-o metrics={text}: expected [HOST:]PORT, for example 127.0.0.1:9464")
        return host, int(port)

    @property
    def trash(self) -> str:
        """``-o trash=off|server`` (default ``off``): see vfs/trash.py. Raises InvalidName
        for another value."""
        mode = self.options.get("trash", "off").strip().lower()
        if mode not in TRASH_MODES:
            raise errors.InvalidName(
                f"-o trash={mode}: expected one of {', '.join(TRASH_MODES)} (docs/desktop.md)")
        return mode

    def check(self) -> None:
        """Raise :class:`~assetfs.errors.InvalidName` now for an option value the daemon
        would refuse (checked before ``assetfs mount`` forks)."""
        _ = self.cache_max, self.write_back_delay, self.timeout, self.metrics, self.trash

    @property
    def read_only(self) -> bool:
        """``-o ro``."""
        return "ro" in self.options

    @property
    def driver_options(self) -> dict[str, str]:
        """The options meant for the driver (everything that is not a core option)."""
        return {k: v for k, v in self.options.items() if k not in CORE_OPTIONS}
