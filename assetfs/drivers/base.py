"""The driver contract: what every remote store implements, and nothing about FUSE.

Paths handed to a driver are POSIX paths relative to the mounted root, always starting
with ``/`` (``/`` is the root itself), with no trailing slash and no ``.``/``..``.
Drivers raise only :mod:`assetfs.errors` types.
"""

from __future__ import annotations

import builtins
import enum
import logging
import posixpath
import random
import stat as stat_module
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import trio

from .. import errors
from .. import options as options_module
from ..options import Option

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    """What an entry is: a byte file or a folder."""

    FILE = "file"
    DIR = "dir"


@dataclass(frozen=True)
class Entry:
    """One item on the store.

    ``size`` is in bytes, ``mtime_ns`` in nanoseconds since the epoch (UTC). ``version`` is a
    string that changes whenever the content changes (an etag, a checksum, a version counter
    or, when the store gives none, ``"<size>:<mtime_ns>"``); the cache keys file content by
    it. ``mode`` holds permission bits only (``0o644``). ``metadata`` is shown as
    ``user.assetfs.<key>`` extended attributes.
    """

    name: str
    kind: Kind
    size: int = 0
    mtime_ns: int = 0
    version: str = ""
    mode: int = 0o644
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        """True for folders."""
        return self.kind is Kind.DIR

    @property
    def st_mode(self) -> int:
        """The full ``st_mode``: file type bits plus permission bits."""
        kind_bits = stat_module.S_IFDIR if self.is_dir else stat_module.S_IFREG
        return kind_bits | (self.mode & 0o7777)


class ReadMode(enum.Enum):
    """How the block cache gets a file's bytes from a store (cache/fetchers.py has one
    fetcher per mode)."""

    RANGED = "ranged"
    """:meth:`Driver.read_into` fetches any byte range cheaply (OMERO.fs, memory://)."""
    STREAM = "stream"
    """:meth:`Driver.open_stream` gives the whole content from offset 0 (stores that ignore
    Range: vcsim, NodeODX; omni.client's servers, whose library reads whole files)."""
    LOCAL = "local"
    """:meth:`Driver.local_range` gives where on local disk the current content lies (a
    whole file: omni.client's ``file:``, the file itself; or a range of one: the Resonite
    driver's packs of thumbnails), read by range in place."""


@dataclass(frozen=True)
class LocalRange:
    """Where one file's content lies on local disk (``ReadMode.LOCAL``): ``size`` bytes from
    byte ``offset`` of the local file ``path``, or (``size`` None) the whole of that file.
    Only a whole file can be handed to the kernel as a passthrough backing file."""

    path: str
    offset: int = 0
    size: int | None = None

    @property
    def whole(self) -> bool:
        """True when the content is the whole local file."""
        return self.offset == 0 and self.size is None


@dataclass(frozen=True)
class Capabilities:
    """What a store can do; the VFS asks these instead of guessing from exceptions.

    - ``writable``: create, write, mkdir, remove, rename are possible at all.
    - ``read_mode``: how content is fetched (:class:`ReadMode`).
    - ``push_events``: the store pushes change events; otherwise the base class polls.
    - ``rename``: the store renames in place (server side).
    - ``checkpoints``, ``locks``: the store has those Nucleus-style features.
    - ``uploads``: how many uploads the write-back runs at once (cache/writeback.py).
    """

    writable: bool = True
    read_mode: ReadMode = ReadMode.STREAM
    push_events: bool = False
    rename: bool = True
    checkpoints: bool = False
    locks: bool = False
    uploads: int = 4


class ChangeKind(enum.Enum):
    """What happened to a path on the store."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    RESYNC = "resync"
    """Events may have been lost (reconnect): re-validate everything cached under path."""
    LISTED = "listed"
    """A folder subscription went live with this listing (``ChangeEvent.listing``): changes
    made between the mount's own listing and that moment reach no event, so the invalidator
    compares the two (omni.client: a file made right after ``list_subscribe`` is in the
    initial list and never in an event, docs/backends/nucleus.md)."""


@dataclass(frozen=True)
class ChangeEvent:
    """One remote change. ``path`` is driver-relative; ``entry`` is the new state if known;
    ``listing`` is the folder's children for a ``LISTED`` event."""

    kind: ChangeKind
    path: str
    entry: Entry | None = None
    listing: tuple[Entry, ...] = ()


EventSink = trio.MemorySendChannel[ChangeEvent]


def join(folder: str, name: str) -> str:
    """Join a driver path and a child name: ``join("/", "a") == "/a"``; the same result as
    ``posixpath.join`` (an absolute ``name`` replaces ``folder``), at a third of its cost:
    a listing joins every child's name several times."""
    if name.startswith("/"):
        return name
    return folder + name if not folder or folder.endswith("/") else f"{folder}/{name}"


def split(path: str) -> tuple[str, str]:
    """Split a driver path into (parent folder, name): ``split("/a/b") == ("/a", "b")``."""
    parent, name = posixpath.split(path)
    return parent or "/", name


def size_mtime_version(size: int, mtime_ns: int) -> str:
    """The fallback version string for stores that give no etag or checksum."""
    return f"{size}:{mtime_ns}"


POLL_INTERVAL = Option("poll_interval", options_module.seconds, None,
                       "seconds between re-lists of watched folders on stores without events")
"""Taken by every driver: :meth:`Driver.run_events` polls at this interval."""


class Driver(ABC):
    """One remote store behind a mount. Subclasses set ``schemes`` and ``capabilities``.

    Construction does no I/O; :meth:`connect` checks the URL, the credentials and that the
    root exists (raising :class:`~assetfs.errors.NotFound`, ``PermissionDenied``,
    ``Unavailable``...). Every call may raise :class:`~assetfs.errors.Unavailable` for a
    retryable failure; callers wrap calls in :func:`assetfs.retry.call`.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    capabilities: Capabilities = Capabilities()
    """What the store can do; a driver may narrow it per mount in ``__init__`` (the
    ``file:`` provider of omni.client has no checkpoints)."""
    declared_options: ClassVar[tuple[Option, ...]] = ()
    """The ``-o`` options this driver takes; the mount refuses any that neither the core
    (config.py) nor the driver declares, and hands the driver their parsed values."""
    poll_interval: float = 10.0
    """Seconds between re-lists of a watched folder when the store cannot push events."""

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        """``options``: the ``-o`` text meant for the driver (``{name: text}``), parsed
        against :attr:`declared_options` into :attr:`options` (defaults filled in). Raises
        BadOption (an option not declared, a value that does not parse)."""
        self.url = url
        self.options: dict[str, Any] = options_module.parse(
            options, (POLL_INTERVAL,), self.declared_options)
        if self.options["poll_interval"] is not None:
            self.poll_interval = float(self.options["poll_interval"])
        self._watched: dict[str, dict[str, Entry] | None] = {}
        self._watch_changed = trio.Event()
        self.events_ready = trio.Event()
        """Set by :meth:`run_events` once changes are being reported; the mount reports
        ready only then, so no change made right after ``assetfs mount`` returns is lost."""

    def describe(self, path: str) -> str:
        """The store URL of a driver path, for log lines and error messages."""
        return self.url.rstrip("/") + path if path != "/" else self.url

    async def connect(self) -> None:
        """Open the connection and check that the mounted root is a folder."""
        root = await self.stat("/")
        if not root.is_dir:
            raise errors.NotADirectory("the mounted URL is not a folder", url=self.url)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and library state; must not raise."""

    # --- metadata -----------------------------------------------------------------
    @abstractmethod
    async def stat(self, path: str) -> Entry:
        """The entry at ``path``. Raises NotFound."""

    def known_entry(self, path: str) -> Entry | None:
        """The entry :meth:`stat` would give for ``path``, when the driver knows it without
        any I/O (a listing of its folder it holds, as fresh as :meth:`stat` wants), else
        None, and :meth:`stat` is asked. Lets a lookup skip the deadline and retry
        machinery of a remote call (~0.1 ms: a quarter of the daemon's work for a small
        file, docs/resonite.md). The default is None."""
        return None

    @abstractmethod
    async def list(self, path: str) -> list[Entry]:
        """The children of folder ``path``. Raises NotFound, NotADirectory."""

    # --- data ---------------------------------------------------------------------
    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at EOF). Needs ``ReadMode.RANGED``."""
        raise errors.NotSupported("ranged read", url=self.describe(path))

    async def read_into(self, path: str, offset: int, size: int, fd: int) -> int:
        """Write up to ``size`` bytes of ``path`` at ``offset`` into the local file ``fd`` at
        the same offset; return how many (fewer only at EOF). Needs ``ReadMode.RANGED``.

        The block cache fills its files through this, so a driver that fetches in another
        process (OMERO.fs) can write there directly and the daemon never handles the bytes.
        The default is :meth:`read` then ``pwrite``. Raises what :meth:`read` raises, and
        NoSpace when the local disk is full. ``fd`` stays the caller's to close. A driver
        that may still write after the call was cancelled must write only the content the
        range had when the call started, and in call order (so a later call's bytes land
        last); the default writes nothing once cancelled.
        """
        data = await self.read(path, offset, size)
        errors.pwrite_local(fd, data, offset)
        return len(data)

    async def local_path(self, path: str) -> str:
        """A local file holding the current content of ``path``. Needs ``ReadMode.LOCAL``."""
        raise errors.NotSupported("local copy", url=self.describe(path))

    def known_local_path(self, path: str) -> str | None:
        """The local file holding ``path``'s current content when it is known without any
        I/O (a store that is a local tree), else None, and :meth:`local_path` is asked. Lets
        a small file's open skip the deadline and retry machinery (ReadMode.LOCAL)."""
        return None

    async def local_range(self, path: str) -> LocalRange:
        """Where the current content of ``path`` lies on local disk; what the block cache
        reads (``ReadMode.LOCAL``). The default is the whole file :meth:`local_path` gives;
        a driver that keeps many files' content in one local file returns a range of it.
        Raises what :meth:`local_path` raises."""
        return LocalRange(await self.local_path(path))

    def known_local_range(self, path: str) -> LocalRange | None:
        """:meth:`local_range` when it is known without any I/O, else None (then
        :meth:`local_range` is asked, under the deadline and retry of a remote call). The
        default is the whole file :meth:`known_local_path` gives.

        Asked in every read mode: a driver of another mode that comes to hold a file's
        current content locally (NodeODX: an archive member inflated in its spool) answers
        it, and the cache reads that copy in place, the kernel too for read-only opens of a
        file :meth:`check_write` refuses (docs/drivers.md, Read modes). A copy once
        answered must never be written again (delete it instead: open files keep it)."""
        known = self.known_local_path(path)
        return None if known is None else LocalRange(known)

    async def open_stream(self, path: str) -> AsyncGenerator[bytes | memoryview, None]:
        """The whole content of ``path`` as chunks (bytes, or views of a buffer the driver
        holds), from offset 0 (stores with no range)."""
        raise errors.NotSupported("streamed read", url=self.describe(path))
        yield b""  # pragma: no cover - makes this an async generator

    async def write(self, path: str, source: str, size: int) -> Entry:
        """Upload local file ``source`` (``size`` bytes) as ``path``, replacing it; return
        the new entry. Raises PermissionDenied, NoSpace, Unavailable, ReadOnly."""
        raise errors.ReadOnly(url=self.describe(path))

    def check_create(self, path: str, kind: Kind) -> None:  # noqa: B027 - optional hook
        """Raise (NotSupported, InvalidName, ...) when the store cannot hold a new ``kind`` at
        ``path`` at all (a file directly in a vSphere library, a folder inside an item), so
        the VFS refuses a create/mkdir at once instead of failing its upload later. No I/O;
        the default allows everything."""

    def check_write(self, path: str) -> None:  # noqa: B027 - optional hook
        """Raise (NotSupported, ReadOnly, ...) when new content can never be stored at the
        file ``path`` (a store with folders and actions but no upload), so a create, a
        writable open or a truncate fails at once instead of its upload later. No I/O; the
        default allows everything."""

    def uploads_last(self, path: str) -> bool:
        """True when the file at ``path`` is a control file acting on what its folder holds
        (a NodeODX ``COMMIT``): the write-back then uploads it only once no other file in
        that folder is dirty, so the action sees everything copied there before it. No
        I/O; the default is False."""
        return False

    def appends_only(self, path: str) -> bool:
        """True when the content of ``path`` only ever grows (a console log): a new version
        keeps the bytes already cached, and open handles read on to the new end (``tail
        -f``). No I/O; the default is False."""
        return False

    def status(self) -> dict[str, object]:
        """Driver state for ``assetfs status`` (JSON-able: downloads in progress...)."""
        return {}

    async def mkdir(self, path: str) -> Entry:
        """Create folder ``path``. Raises AlreadyExists, NotFound (parent), ReadOnly."""
        raise errors.ReadOnly(url=self.describe(path))

    async def remove(self, path: str, kind: Kind) -> None:
        """Delete the file, or the EMPTY folder, at ``path``. Raises NotFound, ReadOnly."""
        raise errors.ReadOnly(url=self.describe(path))

    async def rename(self, old: str, new: str) -> None:
        """Move ``old`` to ``new``, replacing a file at ``new``. Raises NotSupported..."""
        raise errors.ReadOnly(url=self.describe(old))

    # --- control actions (xattr writes on an object) -------------------------------
    async def control(self, path: str, action: str, value: bytes) -> None:
        """Run a store action named by an xattr write ``user.assetfs.<action>``
        (``checkpoint``, ``lock``, ``unlock``...). Raises NotSupported by default."""
        raise errors.NotSupported(f"action {action!r}", url=self.describe(path))

    # --- lazily computed attributes (xattr reads) -----------------------------------
    lazy_xattrs: tuple[str, ...] = ()
    """Keys ``k`` whose ``user.assetfs.<k>`` value :meth:`xattr` computes on demand (too
    costly to put in every :attr:`Entry.metadata`, e.g. OMERO.fs ``sha1``); listxattr shows
    them for files."""

    async def xattr(self, path: str, key: str) -> bytes | None:
        """The value of lazily computed attribute ``user.assetfs.<key>`` of ``path``, or None
        when the driver has no such attribute there (the VFS answers ENODATA)."""
        return None

    # --- change events -------------------------------------------------------------
    def watch(self, folder: str) -> None:
        """Start reporting changes to the children of ``folder`` (the kernel knows it)."""
        if folder not in self._watched:
            self._watched[folder] = None
            self._watch_changed.set()

    def unwatch(self, folder: str) -> None:
        """Stop reporting changes under ``folder`` (the kernel forgot it)."""
        self._watched.pop(folder, None)

    @property
    def watched(self) -> builtins.list[str]:
        """The folders being watched now."""
        return list(self._watched)

    async def run_events(self, sink: EventSink) -> None:
        """Deliver :class:`ChangeEvent` s for watched folders into ``sink`` until cancelled.

        The base class polls: each watched folder is re-listed once per ``poll_interval``
        seconds, spread over the interval, and diffed against its previous listing. A slow
        store stretches the interval (the poll never takes more than half the time).
        Push-capable drivers override this (and ``watch``/``unwatch``) and set
        :attr:`events_ready` once their subscription is live.
        """
        self.events_ready.set()
        await self.poll(sink)

    async def poll(self, sink: EventSink) -> None:
        """The polling loop of :meth:`run_events`, without reporting readiness: a push
        driver that also polls as a safety net (OMERO.fs) runs this beside its
        subscription and sets :attr:`events_ready` only once the subscription is live."""
        while True:
            folders = self.watched
            if not folders:
                self._watch_changed = trio.Event()
                await self._watch_changed.wait()
                continue
            started = time.monotonic()
            for folder in folders:
                if folder not in self._watched:
                    continue
                await self._poll_folder(folder, sink)
            spent = time.monotonic() - started
            pause = max(self.poll_interval - spent, spent)
            await trio.sleep(pause * random.uniform(0.9, 1.1))

    async def _poll_folder(self, folder: str, sink: EventSink) -> None:
        previous = self._watched.get(folder)
        try:
            current = {e.name: e for e in await self.list(folder)}
        except errors.NotFound:
            self._watched.pop(folder, None)
            await sink.send(ChangeEvent(ChangeKind.DELETED, folder))
            return
        except errors.AssetFSError as exc:
            log.debug("poll of %s failed: %s", self.describe(folder), exc)
            return
        if folder not in self._watched:
            return
        self._watched[folder] = current
        if previous is None:
            return
        for name, entry in current.items():
            old = previous.get(name)
            if old is None:
                await sink.send(ChangeEvent(ChangeKind.CREATED, join(folder, name), entry))
            elif old != entry:
                await sink.send(ChangeEvent(ChangeKind.UPDATED, join(folder, name), entry))
        for name in previous.keys() - current.keys():
            await sink.send(ChangeEvent(ChangeKind.DELETED, join(folder, name)))
