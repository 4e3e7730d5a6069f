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
"""

from __future__ import annotations

import builtins
import calendar
import collections
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import omni.client as oc
import trio

from .. import errors
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


def listed(items: Any) -> list[Entry]:
    """The ``omni.client.ListEntry`` items of a folder listing as :class:`Entry` s."""
    return [to_entry(item.relative_path.rstrip("/"), item) for item in items]


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


class NucleusDriver(Driver):
    """A Nucleus server or any omni.client provider, read-write, with push events."""

    schemes = ("omniverse", "omni", "file")
    capabilities = Capabilities(
        writable=True, read_mode=ReadMode.LOCAL, push_events=True, checkpoints=True, locks=True
    )
    lazy_xattrs: tuple[str, ...] = ("acl", "checkpoints")

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

    def _provider_features(self) -> None:
        """The ``file:`` provider has no checkpoints, locks or ACLs (ERROR_NOT_SUPPORTED,
        docs/backends/nucleus.md): say so in the capabilities and do not list those xattrs."""
        if self._local_root is not None:
            self.capabilities = Capabilities(
                writable=True, read_mode=ReadMode.LOCAL, push_events=True
            )
            self.lazy_xattrs = ()

    def url_of(self, path: str) -> str:
        """The omni.client URL of a driver path (percent-encoded: ``#``, ``?``, ``%`` work)."""
        return self._base if path == "/" else self._base + quote(path, safe="/")

    async def connect(self) -> None:
        """Initialize omni.client once per process and check the root; never prompts for a
        login (a daemon has no browser): Nucleus credentials come from OMNI_USER/OMNI_PASS."""
        global _initialized
        if not _initialized:
            oc.set_log_level(oc.LogLevel.ERROR)
            oc.set_log_callback(_library_log)
            if not oc.initialize():
                raise errors.Unavailable("omni.client failed to initialize")
            _initialized = True
        self._token = trio.lowlevel.current_trio_token()
        await super().connect()

    async def _call(self, start: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Start a ``*_with_callback`` request (in a worker thread) and wait for its
        callback's arguments. Cancellation (a deadline) stops the library's request."""
        answer: Handoff[tuple[Any, ...]] = Handoff()

        def callback(*result: Any) -> None:
            answer.set_result(result)

        # started from a worker thread: the library may take a lock another of its requests
        # holds (a stat waited 0.35 s behind a 256 MiB copy on the file: provider:
        # loopwatch), and the event loop must not wait with it
        request = await trio.to_thread.run_sync(lambda: start(*args, callback, **kwargs))
        try:
            return await answer.wait()
        except BaseException:
            request.stop()
            raise

    async def stat(self, path: str) -> Entry:
        url = self.url_of(path)
        result, item = await self._call(oc.stat_with_callback, url)
        check(result, url, "stat")
        return to_entry(path.rsplit("/", 1)[-1], item)

    async def list(self, path: str) -> list[Entry]:
        url = self.url_of(path)
        result, items = await self._call(oc.list_with_callback, url)
        check(result, url, "list")
        return listed(items)

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
        """Upload with ``copy`` from the ``file:`` URL of the cache file: the library streams
        it (a Nucleus upload; a file copy on ``file:``) without the whole content in Python
        memory. ``write_file`` would need a buffer, and omni.client keeps buffers it was
        given exported after the callback, so an mmap of the cache file cannot be closed."""
        url = self.url_of(path)
        (result,) = await self._call(
            oc.copy_with_callback, "file:" + quote(source, safe="/"), url,
            behavior=oc.CopyBehavior.OVERWRITE,
        )
        check(result, url, "upload")
        return await self.stat(path)

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
            if result != oc.Result.OK:
                return
            listing = tuple(listed(items))
            self._post(token, folder, ChangeEvent(ChangeKind.LISTED, folder, listing=listing))

        def on_event(result: Any, event: Any, item: Any) -> None:
            if result == oc.Result.ERROR_ACCESS_LOST:
                # the folder itself went away (observed on file: when the watched folder
                # is deleted): this subscription is dead
                call_soon(token, self._ended, folder, this, result)
                return
            if result != oc.Result.OK:
                return
            kind = _EVENTS.get(event)
            if kind is None:
                return
            name = item.relative_path.rstrip("/")
            entry = None if kind is ChangeKind.DELETED else to_entry(name, item)
            self._post(token, folder, ChangeEvent(kind, join(folder, name), entry))

        this.append(oc.list_subscribe_with_callback(self.url_of(folder), on_list, on_event))
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
        DISCONNECTED or CONNECT_ERROR) ends this call with Unavailable: the subscription
        supervisor waits with backoff, sends a RESYNC of everything (events were missed),
        and calls again, which first asks the library to ``reconnect`` (it does not by
        itself, docs/backends/nucleus.md) and then subscribes every watched folder anew."""
        if self._reconnect:
            await trio.to_thread.run_sync(oc.reconnect, self._base)
            self._reconnect = False
        self._sink = sink
        disconnected = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def on_status(url: str, status: Any) -> None:
            if status in (oc.ConnectionStatus.DISCONNECTED, oc.ConnectionStatus.CONNECT_ERROR):
                log.warning("omni.client: connection to %s: %s", url, status.name)
                call_soon(token, disconnected.set)

        registration = oc.register_connection_status_callback(on_status)
        for folder in sorted(self._folders):
            self.watch(folder)
        self.events_ready.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._resync_lost, sink)
                await disconnected.wait()
                nursery.cancel_scope.cancel()
            self._reconnect = True
            raise errors.Unavailable("connection to the server lost", url=self.url)
        finally:
            del registration
            self._sink = None
            self._subscriptions.clear()

    async def _resync_lost(self, sink: EventSink) -> None:
        """Turn folders whose events were dropped (full queue) into RESYNC events."""
        while True:
            await self._lost_changed.wait()
            self._lost_changed = trio.Event()
            lost, self._lost = self._lost, set()
            for folder in sorted(lost):
                await sink.send(ChangeEvent(ChangeKind.RESYNC, folder))

    async def close(self) -> None:
        self._subscriptions.clear()


def _access_letters(access: Any) -> str:
    """AccessFlags bits as ``rwa`` letters (``-`` for a missing right)."""
    flags = ((oc.AccessFlags.READ, "r"), (oc.AccessFlags.WRITE, "w"), (oc.AccessFlags.ADMIN, "a"))
    return "".join(letter if access & flag else "-" for flag, letter in flags)


def _library_log(thread: str, component: str, level: Any, message: str) -> None:
    """Route omni.client's own log lines (which go to stderr by default) to logging."""
    del thread
    if level in (oc.LogLevel.ERROR, oc.LogLevel.WARNING):
        log.warning("omni.client %s: %s", component, message.strip())
