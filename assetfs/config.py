"""Mount options (``-o key=value,...``): the core's declarations, validation against the
driver's, and the cache directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import options as opt
from .drivers.base import POLL_INTERVAL, Driver
from .vfs.trash import MODES


def address(text: str) -> tuple[str, int]:
    """``"[HOST:]PORT"`` -> ``(host, port)``, host 127.0.0.1 when not given (``[::1]:9464``
    for IPv6). Raises ValueError."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("expected [HOST:]PORT, for example 127.0.0.1:9464")
    return host.strip("[]") or "127.0.0.1", int(port)


address.__name__ = "[host:]port"

CORE_OPTIONS: tuple[opt.Option, ...] = (
    opt.Option("cache_dir", opt.text, "",
               "cache files and the journal (default $XDG_CACHE_HOME/assetfs/<mount id>)"),
    opt.Option("cache_max", opt.size, 10 << 30, "bound on cached bytes"),
    opt.Option("write_back_delay", opt.seconds, 2.0,
               "upload a written file this long after its last close"),
    opt.Option("timeout", opt.seconds, 30.0, "deadline of one remote request"),
    opt.Option("entry_timeout", opt.seconds, None,
               "kernel name cache lifetime (300 with live events, else the poll interval)"),
    opt.Option("attr_timeout", opt.seconds, None,
               "kernel attribute cache lifetime (as entry_timeout)"),
    opt.Option("negative_timeout", opt.seconds, None,
               "how long the kernel remembers a missing name (attr_timeout with events, else 0)"),
    opt.Option("umount_timeout", opt.seconds, 30.0,
               "how long a daemon stopped by a signal keeps uploading"),
    opt.Option("read_ahead_kb", opt.integer, 1024, "the mount's kernel read-ahead (root only)"),
    opt.Option("passthrough", opt.passthrough_mode, "yes",
               "kernel FUSE passthrough for files whose whole content is cached, and for "
               "read-only opens of a file the mount cannot write whose local copy the "
               "driver holds; copies: also read-only opens of the library's local copies "
               "(writers then get ETXTBSY while such readers are open)"),
    opt.Option("ro", opt.boolean, False, "read-only mount"),
    opt.Option("allow_other", opt.boolean, False, "let other users see the mount"),
    opt.Option("debug", opt.boolean, False, "debug logging"),
    opt.Option("metrics", address, None,
               "serve Prometheus metrics at http://HOST:PORT/metrics (host 127.0.0.1 unless "
               "given; port 0: a free one)"),
    opt.Option("trash", opt.choice(*MODES), "off",
               "what a file manager's Move to Trash does: off (delete instead), server "
               "(a .Trash-UID folder on the store) or local (a trash on this machine, in "
               "the cache directory); docs/desktop.md"),
)


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/assetfs`` (``~/.cache/assetfs``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "assetfs"


def mount_id(url: str) -> str:
    """A stable id for a mount of ``url``: its cache directory survives restarts, so the
    journal of a crashed daemon is found by the next mount of the same URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass
class MountConfig:
    """Everything one daemon needs. Times are seconds, sizes bytes.

    ``options`` is the ``-o`` text split into ``{name: text}``; building the config checks
    it against :data:`CORE_OPTIONS` and ``driver``'s declarations (raises
    :class:`~assetfs.errors.BadOption`). ``values`` holds the parsed core options (defaults
    filled in), ``driver_options`` the text of the others, which the driver parses.
    """

    url: str
    mountpoint: Path
    driver: type[Driver]
    options: Mapping[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(init=False)
    driver_options: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        parsed = opt.parse(self.options, CORE_OPTIONS, (POLL_INTERVAL,),
                           self.driver.declared_options)
        core = {o.name for o in CORE_OPTIONS}
        self.values = {k: v for k, v in parsed.items() if k in core}
        self.driver_options = {k: v for k, v in self.options.items() if k not in core}

    def __getitem__(self, name: str) -> Any:
        """The parsed value of core option ``name``."""
        return self.values[name]

    @property
    def cache_dir(self) -> Path:
        """Where this mount's cache files and journal live."""
        if self.values["cache_dir"]:
            return Path(self.values["cache_dir"])
        return default_cache_root() / mount_id(self.url)

    @property
    def cache_max(self) -> int:
        """Bound on cache bytes (default 10 GiB)."""
        return int(self.values["cache_max"])

    @property
    def write_back_delay(self) -> float:
        """Seconds between the last close of a written file and its upload."""
        return float(self.values["write_back_delay"])

    @property
    def timeout(self) -> float:
        """Deadline of one remote request, seconds (past it: EIO/ETIMEDOUT)."""
        return float(self.values["timeout"])

    def kernel_timeout(self, key: str, push_events: bool, poll_interval: float) -> float:
        """Kernel entry/attr cache lifetime: long with push events (events invalidate),
        the poll interval otherwise."""
        value = self.values[key]
        return float(value) if value is not None else (
            300.0 if push_events else min(poll_interval, 60.0))

    @property
    def passthrough(self) -> bool:
        """Kernel FUSE passthrough for files whose whole content is cached (default on
        where the kernel and pyfuse3 allow it; ``-o passthrough=no`` turns it off)."""
        return bool(self.values["passthrough"] != "no")

    @property
    def passthrough_copies(self) -> bool:
        """``-o passthrough=copies``: read-only opens of a clean file whose store keeps a
        local copy (omni.client) pass through to that copy; an open for writing of such a
        file gets ETXTBSY while those readers are open (vfs/passthrough.py)."""
        return bool(self.values["passthrough"] == "copies")

    @property
    def metrics(self) -> tuple[str, int] | None:
        """``-o metrics=[HOST:]PORT``: where to serve Prometheus metrics (observe/metrics.py),
        as (host, port); None without the option."""
        value = self.values["metrics"]
        return value if value is None else (str(value[0]), int(value[1]))

    @property
    def trash(self) -> str:
        """``-o trash=off|server|local`` (default ``off``): see vfs/trash.py."""
        return str(self.values["trash"])

    @property
    def read_only(self) -> bool:
        """``-o ro``."""
        return bool(self.values["ro"])
