"""Omniverse Nucleus (and omni.client's other providers) through NVIDIA's ``omni.client``.

URLs: ``omniverse://host[:port]/path``, ``omni://...`` and the library's local provider
``file:/abs/path`` / ``file:///abs/path`` (docs/backends/nucleus.md). Every call uses the
library's ``*_with_callback`` form; the callback runs on the library's own thread and hands
its result to trio through the trio token, so no trio state is touched off the trio thread.

Quirks handled here (observed on omni.client 2.75.1):
- there is no ranged read: ``read_file`` returns the whole file, so this driver offers
  ``local_path`` (``get_local_file``), which is the file itself on ``file:`` and the
  library's own cache file on Nucleus, and the block cache reads that by range;
- ``delete`` of a folder is recursive, so :meth:`remove` checks emptiness first;
- the ``file:`` provider gives no version or hash, so the version falls back to size+mtime;
- checkpoints, locks and ACLs give ``ERROR_NOT_SUPPORTED`` on ``file:`` -> ENOTSUP.

A Storage API server (the library's gRPC provider, docs/backends/nucleus.md) is reached with
``-o discovery=http://HOST:PORT``: the driver registers it through the library's discovery
call, and a bearer token (``$ASSETFS_NUCLEUS_TOKEN`` or ``-o token_file=PATH``, mode 0600)
reaches the library only through its storage auth callback, never argv or a log line.
"""

from __future__ import annotations

import builtins
import calendar
import collections
import datetime as dt
import logging
import os
import queue
import stat as stat_module
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

import omni.client as oc
import trio

from .. import errors
from .. import options as opt
from ..bridge import Handoff, call_soon
from .base import (
    Capabilities,
    ChangeEvent,
    ChangeKind,
    Driver,
    Entry,
    EventSink,
    Kind,
    ReadMode,
    join,
    size_mtime_version,
    split,
)

log = logging.getLogger(__name__)

_ERRORS: dict[Any, type[errors.AssetFSError]] = {
    oc.Result.ERROR_NOT_FOUND: errors.NotFound,
    oc.Result.ERROR_ACCESS_DENIED: errors.PermissionDenied,
    oc.Result.ERROR_ACCESS_LOST: errors.Unavailable,
    oc.Result.ERROR_ALREADY_EXISTS: errors.AlreadyExists,
    oc.Result.ERROR_CONNECTION: errors.Unavailable,
    oc.Result.ERROR_NOT_SUPPORTED: errors.NotSupported,
    oc.Result.ERROR_LOCKED: errors.Locked,
    oc.Result.ERROR_FOLDER_NOT_EMPTY: errors.DirectoryNotEmpty,
    oc.Result.ERROR_BAD_REQUEST: errors.InvalidName,
    oc.Result.ERROR_SOURCE_IS_DEST: errors.InvalidName,
    oc.Result.ERROR_BAD_VERSION: errors.AssetFSError,
}
_PERMANENT = {oc.Result.ERROR_NOT_FOUND, oc.Result.ERROR_BAD_REQUEST,
              oc.Result.ERROR_SOURCE_IS_DEST}
"""Results retrying cannot change (see :func:`check`)."""
_WRONG_TYPE = getattr(oc.Result, "ERROR_WRONG_TYPE", None)
if _WRONG_TYPE is not None:  # 2.75 returns it for list() of a file; not in the API doc
    _ERRORS[_WRONG_TYPE] = errors.NotADirectory
    _PERMANENT.add(_WRONG_TYPE)

_EVENTS = {
    oc.ListEvent.CREATED: ChangeKind.CREATED,
    oc.ListEvent.UPDATED: ChangeKind.UPDATED,
    oc.ListEvent.METADATA: ChangeKind.UPDATED,
    oc.ListEvent.LOCKED: ChangeKind.UPDATED,
    oc.ListEvent.UNLOCKED: ChangeKind.UPDATED,
    oc.ListEvent.DELETED: ChangeKind.DELETED,
    oc.ListEvent.OBLITERATED: ChangeKind.DELETED,
}
_METADATA_FIELDS = ("version", "hash", "modified_by", "created_by", "locked_by", "comment")

_initialized = False
DISCOVERY_TIMEOUT = 10.0
"""Seconds the Storage API discovery and registration may take (the library retries an
unreachable discovery URL for longer)."""
TOKEN_ENV = "ASSETFS_NUCLEUS_TOKEN"
"""The environment variable that may hold the Storage API bearer token."""


GRACE = 10.0
"""Seconds a finished omni.client request is kept before it is released (see _Reaper)."""


class _Reaper:
    """Stops and releases omni.client requests and subscriptions on a thread of its own.

    Releasing the last reference to a library ``Request`` calls ``omniClientStop``, which
    waits for the request to wind down inside the library; after a Storage API server was
    restarted, a finished ``get_local_file`` request's release never returned, and on the
    trio thread that froze the whole mount (statfs included; found with
    tests/test_nucleus_omniverse.py). Here a stuck release costs one parked thread.
    Requests released right after their callback also sometimes left the library's next
    ``get_local_file`` waiting forever (1 run in 5 of the omniverse core tests, even when
    waiting for ``is_finished()``), so a finished request rests :data:`GRACE` seconds
    before it is released."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, bool]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def release(self, item: Any, stop: bool = False) -> None:
        """Drop (and first ``stop()`` when asked) library object ``item`` off this thread.
        The caller must hold no other reference to it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="omni.client release",
                                            daemon=True)
            self._thread.start()
        self._queue.put((item, stop))

    def _run(self) -> None:
        resting: collections.deque[tuple[float, Any]] = collections.deque()
        while True:
            try:
                item, stop = self._queue.get(timeout=1.0 if resting else None)
            except queue.Empty:
                item, stop = None, False
            if isinstance(item, threading.Event):
                resting.clear()  # a flush: the driver is closing, release everything
                item.set()
            elif stop:
                item.stop()
            elif item is not None:
                resting.append((time.monotonic() + GRACE, item))
            del item
            while resting and resting[0][0] <= time.monotonic():
                resting.popleft()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything handed over so far is released
        (a driver closing: its registrations must go while its server still answers).
        False if the release thread is still busy then."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put((done, False))
        return await trio.to_thread.run_sync(done.wait, timeout, abandon_on_cancel=True)


_reaper = _Reaper()

SMALL_UPLOAD = 4 << 20
"""Bytes up to which :meth:`NucleusDriver.write` sends a file from memory with
``write_file_ex`` instead of streaming it with ``copy`` (docs/backends/nucleus.md, Uploads)."""
LENT_MAX = 128 << 20
"""Bytes of upload content the library may hold at once. It keeps a write's buffer until
the request is released, which the reaper does :data:`GRACE` seconds after the callback;
past this many bytes, uploads stream with ``copy`` (no buffer) until some are released."""


class _Content(bytearray):
    """The content of one upload handed to the library (a bytearray that can be weakly
    referenced, so :class:`_Lent` learns when the library lets go of it)."""


class _Lent:
    """Bytes of upload content the library holds now, bounded by ``limit`` (bytes).
    Thread-safe: the library's last reference goes on the reaper's thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.RLock()
        """Re-entrant: a buffer the garbage collector frees (one held by a traceback's
        frame) runs :meth:`_returned` on whatever thread allocates then, maybe inside
        :meth:`read` on this one."""

    def read(self, source: str, size: int) -> _Content | None:
        """The content of local file ``source`` (about ``size`` bytes), counted until it is
        freed; None when the library already holds ``limit`` bytes. Raises OSError."""
        with self._lock:
            if self.held + size > self.limit:
                return None
            self.held += size
        try:
            with open(source, "rb") as stream:
                content = _Content(stream.read())
        except BaseException:
            self._returned(size)
            raise
        weakref.finalize(content, self._returned, size)
        return content

    def _returned(self, size: int) -> None:
        with self._lock:
            self.held -= size


_lent = _Lent(LENT_MAX)

UPLOADS = 8
"""Uploads the write-back runs at once. The library runs concurrent writes side by side:
against the Storage API peer with 20 ms a call, 200 writes of 64 KiB took 2.4 s 4 at once
and 1.2 s 8 at once (docs/backends/nucleus.md, Uploads)."""


class _Held:
    """Owns one library object and hands it to the reaper when dropped, wherever the last
    reference goes (a subscription popped on the trio thread, a registration)."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def __del__(self) -> None:
        _reaper.release(self.item)
        del self.item


def check(result: Any, url: str, what: str) -> None:
    """Raise the project's exception for an ``omni.client.Result`` that is not OK.

    The one place where this driver translates wire-level errors (docs/drivers.md, Errors),
    and decides which are permanent (an upload failing so is not retried): ERROR_WRONG_TYPE
    (the target is a folder, or a folder on the way is a file: measured on ``file:``),
    ERROR_BAD_REQUEST and ERROR_SOURCE_IS_DEST (the name), ERROR_NOT_FOUND; the plain
    ERROR (a full disk on ``file:``), connection and lock errors are retried.
    """
    if result in (oc.Result.OK, oc.Result.OK_LATEST, oc.Result.OK_NOT_YET_FOUND):
        return
    cls = _ERRORS.get(result, errors.AssetFSError)
    raise cls(f"{what}: {result.name}", url=url, permanent=result in _PERMANENT)


def _ns(when: dt.datetime) -> int:
    """omni.client times are naive datetimes in UTC -> nanoseconds since the epoch."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return calendar.timegm(when.timetuple()) * 1_000_000_000 + when.microsecond * 1000


def listed(items: Any, encoded: bool = False) -> list[Entry]:
    """The ``omni.client.ListEntry`` items of a folder listing as :class:`Entry` s;
    ``encoded``: their names are percent-encoded (see :func:`child_name`)."""
    return [to_entry(child_name(item.relative_path, encoded), item) for item in items]


def child_name(relative_path: str, encoded: bool) -> str:
    """The name of a listed child. A Storage API server's listing names children by
    their URL (``ünï ✓.txt`` as ``%C3%BCn%C3%AF%20%E2%9C%93.txt``), and the library hands
    that on as ``relative_path``; the ``file:`` provider gives the name itself
    (docs/backends/nucleus.md)."""
    name = relative_path.rstrip("/")
    return unquote(name) if encoded else name


def to_entry(name: str, item: Any) -> Entry:
    """An ``omni.client.ListEntry`` as an :class:`Entry` (mode bits from AccessFlags)."""
    is_dir = bool(item.flags & oc.ItemFlags.CAN_HAVE_CHILDREN)
    writable = bool(item.access & oc.AccessFlags.WRITE) or item.access == 0
    mtime = _ns(item.modified_time)
    size = 0 if is_dir else int(item.size)
    mode = (0o755 if writable else 0o555) if is_dir else (0o644 if writable else 0o444)
    metadata = {f: str(getattr(item, f)) for f in _METADATA_FIELDS if getattr(item, f, "")}
    return Entry(
        name=name,
        kind=Kind.DIR if is_dir else Kind.FILE,
        size=size,
        mtime_ns=mtime,
        version=item.version or item.hash or size_mtime_version(size, mtime),
        mode=mode,
        metadata=metadata,
    )


def written_entry(name: str, size: int, info: Any) -> Entry:
    """The entry of a file just written with ``size`` bytes, from the library's
    ``WriteFileExInfo`` (its version and hash). The answer holds no times: the mtime is
    this machine's clock at the answer (the mount shows the file's own mtime while the
    store keeps this version, vfs/mtimes.py), and fields only a stat gives (``modified_by``)
    come with the write's own event, which carries the library's stat of the new file
    (events/invalidator.py), or the next listing."""
    metadata = {f: str(getattr(info, f)) for f in ("version", "hash") if getattr(info, f)}
    return Entry(name=name, kind=Kind.FILE, size=size, mtime_ns=time.time_ns(),
                 version=info.version, mode=0o644, metadata=metadata)


class NucleusDriver(Driver):
    """A Nucleus server or any omni.client provider, read-write, with push events."""

    schemes = ("omniverse", "omni", "file")
    capabilities = Capabilities(
        writable=True, read_mode=ReadMode.LOCAL, push_events=True, checkpoints=True, locks=True,
        uploads=UPLOADS,
    )
    lazy_xattrs: tuple[str, ...] = ("acl", "checkpoints")
    declared_options: ClassVar[tuple[opt.Option, ...]] = (
        opt.Option("discovery", opt.text, "",
                   "Storage API discovery URL (http://HOST:PORT) serving this URL's host"),
        opt.Option("token_file", opt.text, "",
                   f"a mode 0600 file holding the Storage API bearer token "
                   f"(else ${TOKEN_ENV})"),
    )

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise errors.BadURL(
                    f"file URLs take an absolute path (file:/abs or file:///abs), not {url!r}"
                )
            self._local_root: str | None = unquote(parts.path).rstrip("/")
            self._base = "file:" + quote(self._local_root or "/", safe="/")
        else:
            if not parts.netloc:
                raise errors.BadURL(f"no server in {url!r} (expected {parts.scheme}://HOST/...)")
            self._local_root = None
            self._base = f"{parts.scheme}://{parts.netloc}" + parts.path.rstrip("/")
        self._token: trio.lowlevel.TrioToken | None = None
        self._subscriptions: dict[str, Any] = {}
        self._folders: set[str] = set()
        """Folders the kernel knows (subscribed while :meth:`run_events` runs)."""
        self._lost: set[str] = set()
        """Folders whose events were dropped (queue full): sent as RESYNC when room is."""
        self._lost_changed = trio.Event()
        self._inbox: collections.deque[tuple[str, ChangeEvent]] = collections.deque()
        """Events from the library's callback thread, drained on the trio thread."""
        self._draining = False
        self._sink: EventSink | None = None
        self._provider_features()
        self._reconnect = False
        """The connection was lost: ask the library to reconnect before subscribing."""
        self._encoded = self._local_root is None
        """Listed names come percent-encoded (see :func:`child_name`)."""
        self._discovery: str | None = str(self.options.get("discovery") or "") or None
        self._token_file: str | None = str(self.options.get("token_file") or "") or None
        self._starting: set[str] = set()
        """Folders watched at the start of :meth:`run_events` whose first listing has not
        arrived yet."""
        self._disconnected: trio.Event | None = None
        """Set when the server connection is lost (while :meth:`run_events` runs)."""
        self._registrations: list[Any] = []
        """What the library unregisters once released: the storage provider, the auth
        callback."""

    def _provider_features(self) -> None:
        """The ``file:`` provider has no checkpoints, locks or ACLs (ERROR_NOT_SUPPORTED,
        docs/backends/nucleus.md): say so in the capabilities and do not list those xattrs."""
        if self._local_root is not None:
            self.capabilities = Capabilities(
                writable=True, read_mode=ReadMode.LOCAL, push_events=True, uploads=UPLOADS
            )
            self.lazy_xattrs = ()

    def url_of(self, path: str) -> str:
        """The omni.client URL of a driver path (percent-encoded: ``#``, ``?``, ``%`` work)."""
        return self._base if path == "/" else self._base + quote(path, safe="/")

    async def connect(self) -> None:
        """Initialize omni.client once per process, register the Storage API server named
        by ``-o discovery=`` with its token, and check the root; never prompts for a login
        (a daemon has no browser): Nucleus credentials come from OMNI_USER/OMNI_PASS.

        Raises BadURL when the discovered server does not serve this URL's host, and
        PermissionDenied (one line naming where the token came from) when the server
        refuses the token."""
        global _initialized
        if not _initialized:
            oc.set_log_level(oc.LogLevel.ERROR)
            oc.set_log_callback(_library_log)
            # the library retries a failing Storage API call for ~12 s by default; our own
            # call layer retries within -o timeout, so keep the library's short
            # (docs/backends/nucleus.md)
            os.environ.setdefault("OMNI_STORAGE_RETRY_MAX", "3")
            if not oc.initialize():
                raise errors.Unavailable("omni.client failed to initialize")
            _initialized = True
        self._token = trio.lowlevel.current_trio_token()
        if self._discovery and not self._registrations:
            await self._register_storage(self._discovery)
        try:
            await super().connect()
        except errors.PermissionDenied as exc:
            source = self._token_source()
            if self._discovery and source:
                raise errors.PermissionDenied(
                    f"the server refused the token from {source}", url=self.url) from exc
            raise

    def _token_source(self) -> str | None:
        """Where the bearer token comes from, for messages (never the token itself)."""
        if self._token_file:
            return self._token_file
        return f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else None

    def _read_token(self) -> str | None:
        """The bearer token, read anew at each call (a token file rewritten while mounted
        is what the library gets the next time the server asks). Raises PermissionDenied
        for a token file others can read."""
        if not self._token_file:
            return os.environ.get(TOKEN_ENV) or None
        try:
            info = os.stat(self._token_file)
            if info.st_mode & 0o077:
                raise errors.PermissionDenied(
                    f"token file {self._token_file} has mode "
                    f"{stat_module.S_IMODE(info.st_mode):04o}; it must not be readable by "
                    f"others: chmod 600 {self._token_file}")
            with open(self._token_file, encoding="utf-8") as stream:
                return stream.read().strip() or None
        except OSError as exc:
            raise errors.PermissionDenied(
                f"cannot read token file {self._token_file}: {exc.strerror}") from exc

    async def _register_storage(self, discovery: str) -> None:
        """Register the Storage API server that ``discovery`` (``GET /api/v1/services``)
        names, and the auth callback that hands the library our token whenever the server
        asks for one (at the first call and again when it refuses the one it has)."""
        self._read_token()  # a bad token file fails the mount now, with its reason

        given: list[str] = []
        refused: list[str] = []

        def on_auth(handle: int, server: str) -> bool:
            # The library asks again when the server refuses the token it has. Handing it
            # the same refused token once more crashed omniverseclient 2.75.1 (SIGSEGV, on
            # a wrong token at mount: tests/test_nucleus_omniverse.py); declining makes
            # the call fail with ERROR_ACCESS_DENIED instead.
            try:
                token = self._read_token()
            except errors.PermissionDenied as exc:
                log.warning("%s", exc)
                return False
            if token is None:
                return False
            if given[-1:] == [token]:
                refused.append(token)
                return False
            given[:] = [token]
            oc.set_storage_access_token(handle, token)
            return True

        self._registrations.append(_Held(oc.register_storage_auth_callback(on_auth)))
        request: list[Any] = []
        answer: tuple[Any, ...] = ()
        with trio.move_on_after(DISCOVERY_TIMEOUT):
            answer = await self._call(
                oc.register_storage_from_discovery_with_callback, discovery, keep=request)
        registration = _Held(request.pop()) if request else None
        if not answer:
            raise errors.Unavailable(
                f"no answer from Storage API discovery at {discovery} in "
                f"{DISCOVERY_TIMEOUT:g}s", url=self.url)
        result, addresses = answer
        if refused:
            raise errors.PermissionDenied(
                f"the server refused the token from {self._token_source()}", url=self.url)
        if result != oc.Result.OK:
            raise errors.Unavailable(f"Storage API discovery at {discovery}: {result.name}",
                                     url=self.url)
        self._registrations.append(registration)
        host = urlsplit(self._base).netloc.lower()
        if not any(urlsplit(a).netloc.lower() == host for a in addresses):
            raise errors.BadURL(
                f"the Storage API server at {discovery} serves {', '.join(addresses) or 'nothing'}"
                f", not {self.url}")

    async def _call(
        self, start: Callable[..., Any], *args: Any, keep: list[Any] | None = None, **kwargs: Any
    ) -> tuple[Any, ...]:
        """Start a ``*_with_callback`` request (in a worker thread) and wait for its
        callback's arguments; ``keep`` gets the request object (a registration lives as long
        as it). Cancellation (a deadline) stops the library's request."""
        answer: Handoff[tuple[Any, ...]] = Handoff()

        def callback(*result: Any) -> None:
            answer.set_result(result)

        # started from a worker thread: the library may take a lock another of its requests
        # holds (a stat waited 0.35 s behind a 256 MiB copy on the file: provider:
        # loopwatch), and the event loop must not wait with it
        request = await trio.to_thread.run_sync(lambda: start(*args, callback, **kwargs))
        if keep is not None:
            keep.append(request)
        try:
            result = await answer.wait()
        except BaseException:
            _reaper.release(request, stop=True)
            raise
        _reaper.release(request)
        del request
        return result

    async def stat(self, path: str) -> Entry:
        url = self.url_of(path)
        result, item = await self._call(oc.stat_with_callback, url)
        check(result, url, "stat")
        return to_entry(path.rsplit("/", 1)[-1], item)

    async def list(self, path: str) -> list[Entry]:
        url = self.url_of(path)
        result, items = await self._call(oc.list_with_callback, url)
        check(result, url, "list")
        return listed(items, self._encoded)

    def known_local_path(self, path: str) -> str | None:
        """On ``file:`` the file itself (docs/backends/nucleus.md); None on Nucleus, whose local
        copy is the library's to fetch."""
        if self._local_root is None:
            return None
        return self._local_root + path if path != "/" else self._local_root or "/"

    async def local_path(self, path: str) -> str:
        """The library's local copy of ``path``; on ``file:`` that is the file itself
        (:meth:`known_local_path`), so no library round trip is made for it."""
        known = self.known_local_path(path)
        if known is not None:
            return known
        url = self.url_of(path)
        result, local = await self._call(oc.get_local_file_with_callback, url, True)
        check(result, url, "get_local_file")
        return str(local)

    async def write(self, path: str, source: str, size: int) -> Entry:
        """Upload cache file ``source`` as ``path``. A file of at most :data:`SMALL_UPLOAD`
        bytes goes from memory with ``write_file_ex``, whose answer carries the new version
        and hash, so no stat follows: on a Storage API server that is 2 round trips (the
        ``Write``, then the library's content-hash ``UpdateMetadata`` calls at once) where
        ``copy`` and a stat make 8 in a row (docs/backends/nucleus.md, Uploads). A larger
        file, or one past the :data:`LENT_MAX` the library may hold, streams with ``copy``
        from the cache file's ``file:`` URL (``write_file_ex`` would need all of it in
        memory; an mmap instead would fault if the file shrank meanwhile), then a stat;
        so does every file on ``file:``, where ``write_file_ex`` makes the file mode 0600
        (``copy`` keeps the cache file's mode) and a stat is local."""
        url = self.url_of(path)
        content = None
        if self._local_root is None and size <= SMALL_UPLOAD:
            content = await trio.to_thread.run_sync(_lent.read, source, size)
        if content is None:
            (result,) = await self._call(
                oc.copy_with_callback, "file:" + quote(source, safe="/"), url,
                behavior=oc.CopyBehavior.OVERWRITE,
            )
            check(result, url, "upload")
            return await self.stat(path)
        sent = len(content)
        result, info = await self._call(oc.write_file_ex_with_callback, url, content)
        del content  # the library's request holds it until the reaper releases that
        check(result, url, "upload")
        if not info.version:  # a provider without versions
            return await self.stat(path)
        return written_entry(split(path)[1], sent, info)

    async def mkdir(self, path: str) -> Entry:
        """Create folder ``path``. ``create_folder`` makes missing parents too (seen on the
        ``file:`` provider, tests/test_conformance.py), so a missing parent is checked
        first: NotFound (NotADirectory for a file), as the contract says."""
        parent = split(path)[0]
        if not (await self.stat(parent)).is_dir:
            raise errors.NotADirectory(url=self.url_of(parent))
        url = self.url_of(path)
        (result,) = await self._call(oc.create_folder_with_callback, url)
        check(result, url, "create_folder")
        return await self.stat(path)

    async def remove(self, path: str, kind: Kind) -> None:
        url = self.url_of(path)
        if kind is Kind.DIR and await self.list(path):
            raise errors.DirectoryNotEmpty(url=url)
        (result,) = await self._call(oc.delete_with_callback, url)
        check(result, url, "delete")

    async def rename(self, old: str, new: str) -> None:
        url = self.url_of(old)
        result, _copied = await self._call(
            oc.move_with_callback, url, self.url_of(new), behavior=oc.CopyBehavior.OVERWRITE
        )
        check(result, url, "move")

    async def control(self, path: str, action: str, value: bytes) -> None:
        """``checkpoint`` (value: comment), ``lock``, ``unlock``: Nucleus-only; the ``file:``
        provider answers ERROR_NOT_SUPPORTED, which becomes ENOTSUP."""
        url = self.url_of(path)
        if action == "checkpoint":
            result, _query = await self._call(
                oc.create_checkpoint_with_callback, url, value.decode(errors="replace"), False
            )
        elif action == "lock":
            (result,) = await self._call(oc.lock_with_callback, url)
        elif action == "unlock":
            (result,) = await self._call(oc.unlock_with_callback, url)
        else:
            raise errors.NotSupported(f"unknown action {action!r}", url=url)
        check(result, url, action)

    async def xattr(self, path: str, key: str) -> bytes | None:
        """``acl``: one ``NAME:rwa`` line per ACL entry (read, write, admin: AccessFlags);
        ``checkpoints``: one line per checkpoint (its query and comment). Nucleus only:
        the ``file:`` provider answers ERROR_NOT_SUPPORTED, which becomes ENOTSUP. None for
        other keys."""
        url = self.url_of(path)
        if key == "acl":
            result, acls = await self._call(oc.get_acls_with_callback, url)
            check(result, url, "get_acls")
            return "".join(f"{a.name}:{_access_letters(a.access)}\n" for a in acls).encode()
        if key == "checkpoints":
            result, entries = await self._call(oc.list_checkpoints_with_callback, url)
            check(result, url, "list_checkpoints")
            return "".join(
                f"{e.relative_path} {e.comment}".rstrip() + "\n" for e in entries
            ).encode()
        return None

    # --- push events: one list subscription per folder the kernel knows ------------
    def watch(self, folder: str) -> None:
        """Subscribe to the children of ``folder`` (now, or when :meth:`run_events`
        starts: folders the kernel learns before that are remembered)."""
        self._folders.add(folder)
        if folder in self._subscriptions or self._sink is None or self._token is None:
            return
        token = self._token
        this: list[Any] = []  # this subscription, once made

        def on_list(result: Any, items: Any) -> None:
            # Events start after this list (docs/backends/nucleus.md): what changed since the
            # mount listed the folder is only here.
            call_soon(token, self._went_live, folder)
            if result == oc.Result.ERROR_CONNECTION:
                call_soon(token, self._connection_lost, folder)
                return
            if result != oc.Result.OK:
                return
            listing = tuple(listed(items, self._encoded))
            self._post(token, folder, ChangeEvent(ChangeKind.LISTED, folder, listing=listing))

        def on_event(result: Any, event: Any, item: Any) -> None:
            if result == oc.Result.ERROR_ACCESS_LOST:
                # the folder itself went away (observed on file: when the watched folder
                # is deleted): this subscription is dead
                call_soon(token, self._ended, folder, this, result)
                return
            if result == oc.Result.ERROR_CONNECTION:
                # the Storage API provider's subscription "permanently failed" (the server
                # went away): no connection status callback comes, and no more events
                # (docs/backends/nucleus.md)
                call_soon(token, self._connection_lost, folder)
                return
            if result != oc.Result.OK:
                return
            kind = _EVENTS.get(event)
            if kind is None:
                return
            name = child_name(item.relative_path, self._encoded)
            entry = None if kind is ChangeKind.DELETED else to_entry(name, item)
            self._post(token, folder, ChangeEvent(kind, join(folder, name), entry))

        this.append(_Held(oc.list_subscribe_with_callback(self.url_of(folder), on_list,
                                                          on_event)))
        self._subscriptions[folder] = this[0]

    def _post(self, token: trio.lowlevel.TrioToken, folder: str, change: ChangeEvent) -> None:
        """Queue ``change`` (seen in ``folder``'s subscription) from the library's callback
        thread. One trio hand-off per burst, not per event: a storm of thousands of events a
        second must leave the trio thread free for requests."""
        self._inbox.append((folder, change))
        if not self._draining:
            self._draining = True
            call_soon(token, self._deliver)

    def _deliver(self) -> None:
        """Move the events the callback thread queued into the sink (on the trio thread)."""
        self._draining = False
        sink = self._sink
        while self._inbox:
            folder, change = self._inbox.popleft()
            if change.kind is ChangeKind.DELETED:
                self._forget_folder(change.path)  # a folder made again needs a new one
            if sink is None:
                continue
            try:
                sink.send_nowait(change)
            except trio.WouldBlock:
                # A storm outran the invalidator: re-validate the folder instead.
                if not self._lost:
                    log.warning("event queue full; re-listing %s", self.describe(folder))
                self._lost.add(folder)
                self._lost_changed.set()
            except trio.ClosedResourceError:
                pass

    def _went_live(self, folder: str) -> None:
        """The subscription of ``folder`` delivered its first listing: from now on its
        changes are reported (the library applies the event filter before that listing,
        docs/backends/nucleus.md). Once every folder watched at the start of
        :meth:`run_events` is live, :attr:`events_ready` is set."""
        self._starting.discard(folder)
        if not self._starting:
            self.events_ready.set()

    def _connection_lost(self, folder: str) -> None:
        """A subscription of ``folder`` ended because the server stopped answering: end
        :meth:`run_events` so the supervisor resubscribes everything after a RESYNC."""
        log.debug("subscription of %s lost its connection", self.describe(folder))
        if self._disconnected is not None:
            self._disconnected.set()

    def _ended(self, folder: str, this: builtins.list[Any], result: Any) -> None:
        """The subscription ``this`` (a one-element list) of ``folder`` ended. A folder
        deleted and made again may already have a new subscription, which the old one's
        late end must not drop (seen under load: files made in the new folder went unseen)."""
        log.debug("subscription of %s ended: %s", self.describe(folder), result)
        if this and self._subscriptions.get(folder) is this[0]:
            self._forget_folder(folder)

    def _forget_folder(self, path: str) -> None:
        """Drop the subscriptions of ``path`` and of every folder under it (deleted on
        the store: a dead subscription would otherwise hide a folder made again there)."""
        prefix = path.rstrip("/") + "/"
        for folder in [f for f in self._folders if f == path or f.startswith(prefix)]:
            self._folders.discard(folder)
            self._subscriptions.pop(folder, None)

    def unwatch(self, folder: str) -> None:
        self._folders.discard(folder)
        self._subscriptions.pop(folder, None)

    @property
    def watched(self) -> builtins.list[str]:
        return list(self._subscriptions)

    async def run_events(self, sink: EventSink) -> None:
        """Keep list subscriptions for watched folders until cancelled (events arrive by
        callback, see :meth:`watch`); folders watched before the start are subscribed
        now. Events dropped because the queue was full become a RESYNC of their folder.

        A lost server connection (the library's connection status callback says
        DISCONNECTED or CONNECT_ERROR; on a Storage API server, which reports no connection
        status, a subscription ends with ERROR_CONNECTION) ends this call with Unavailable:
        the subscription supervisor waits with backoff, sends a RESYNC of everything
        (events were missed), and calls again, which first asks the library to
        ``reconnect`` (Nucleus does not by itself, docs/backends/nucleus.md) and then
        subscribes every watched folder anew. It ends only once the server answers a
        listing again: a RESYNC while it is away would drop the cached files and folders
        the mount keeps serving meanwhile (tests/test_nucleus_omniverse.py)."""
        if self._reconnect:
            await trio.to_thread.run_sync(oc.reconnect, self._base)
            self._reconnect = False
        self._sink = sink
        disconnected = self._disconnected = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def on_status(url: str, status: Any) -> None:
            if status in (oc.ConnectionStatus.DISCONNECTED, oc.ConnectionStatus.CONNECT_ERROR):
                log.warning("omni.client: connection to %s: %s", url, status.name)
                call_soon(token, disconnected.set)

        registration = _Held(oc.register_connection_status_callback(on_status))
        self._starting = set(self._folders)
        for folder in sorted(self._folders):
            self.watch(folder)
        if not self._starting:
            self.events_ready.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._resync_lost, sink)
                await disconnected.wait()
                nursery.cancel_scope.cancel()
            self._subscriptions.clear()
            self._reconnect = self._discovery is None
            await self._until_reachable()
            raise errors.Unavailable("connection to the server lost", url=self.url)
        finally:
            del registration
            self._sink = None
            self._disconnected = None
            self._subscriptions.clear()

    async def _until_reachable(self, every: float = 1.0) -> None:
        """Return once the server answers again: a listing of a folder nobody listed (a
        new random name under the root) gets an answer other than ERROR_CONNECTION. The
        library answers a list or stat of what it listed before from its own cache even
        while the server is down (docs/backends/nucleus.md), so the root itself proves
        nothing. Tried every ``every`` seconds, each try bounded by 5 s; Nucleus needs the
        library's ``reconnect`` before each try."""
        while True:
            if self._reconnect:
                await trio.to_thread.run_sync(oc.reconnect, self._base)
            probe = f"{self._base}/.assetfs-probe-{uuid.uuid4().hex}"
            with trio.move_on_after(5.0):
                result, _items = await self._call(oc.list_with_callback, probe)
                if result != oc.Result.ERROR_CONNECTION:
                    return
            await trio.sleep(every)

    async def _resync_lost(self, sink: EventSink) -> None:
        """Turn folders whose events were dropped (full queue) into RESYNC events."""
        while True:
            await self._lost_changed.wait()
            self._lost_changed = trio.Event()
            lost, self._lost = self._lost, set()
            for folder in sorted(lost):
                await sink.send(ChangeEvent(ChangeKind.RESYNC, folder))

    async def close(self) -> None:
        """Drop the subscriptions and registrations and wait (up to 10 s) for the library
        to release them."""
        self._subscriptions.clear()
        self._registrations.clear()
        if not await _reaper.flush(10.0):
            log.warning("omni.client is still releasing requests after 10 s")


def _access_letters(access: Any) -> str:
    """AccessFlags bits as ``rwa`` letters (``-`` for a missing right)."""
    flags = ((oc.AccessFlags.READ, "r"), (oc.AccessFlags.WRITE, "w"), (oc.AccessFlags.ADMIN, "a"))
    return "".join(letter if access & flag else "-" for flag, letter in flags)


def _library_log(thread: str, component: str, level: Any, message: str) -> None:
    """Route omni.client's own log lines (which go to stderr by default) to logging."""
    del thread
    if level in (oc.LogLevel.ERROR, oc.LogLevel.WARNING):
        log.warning("omni.client %s: %s", component, message.strip())
