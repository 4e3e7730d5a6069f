"""The Resonite IO driver: the game's inventory as folders of thumbnail files (see the
package docstring for the URL, options and mapping)."""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import trio

from ... import errors
from ... import options as opt
from ...config import default_cache_root
from ..base import (
    Capabilities,
    ChangeEvent,
    ChangeKind,
    Driver,
    Entry,
    EventSink,
    Kind,
    LocalRange,
    ReadMode,
    split,
)
from . import protocol
from .discovery import AmbiguousSocket, SocketNotFound
from .naming import Named, reachable, shown_names
from .session import GameState, Session, call_many
from .thumbnails import RECORD_EXT, Stored, ThumbnailStore, extension, key

log = logging.getLogger(__name__)
pb = protocol.inventory_pb2

ROOT = "/Inventory"
KINDS = {1: "directory", 2: "object", 3: "world", 4: "link", 5: "unknown"}
"""``InventoryEntryKind`` numbers -> the ``user.assetfs.kind`` value (0 and unknown
numbers count as ``unknown``, as the official client maps them)."""
FOLDER_KINDS = {1, 4}
NO_THUMBNAIL = "none"
"""Extension of the store's marker for an item the server has no thumbnail for."""


class Unaddressable(errors.AssetFSError):
    """A record no server path reaches (a repeated name, or a ``/`` in its name): it can be
    read and inspected but not moved, removed, copied or spawned (naming.py)."""

    errno = errors.InvalidName.errno


def server_root(url: str) -> str:
    """The server path a mount URL names: ``resonite:`` -> ``/Inventory``,
    ``resonite:/Inventory/My%20Avatars`` -> ``/Inventory/My Avatars`` (percent-decoded,
    ``.``/``..``/``//`` resolved, since the server resolves none of them). Raises BadURL."""
    scheme, _, rest = url.partition(":")
    if scheme.lower() != "resonite":
        raise errors.BadURL(f"expected resonite: or resonite:/Inventory/FOLDER: {url!r}")
    if rest.startswith("//"):  # resonite:///Inventory/... (an empty authority)
        rest = rest[2:]
    path = posixpath.normpath("/" + unquote(rest)) if rest.strip("/") else ROOT
    path = "/" + path.lstrip("/")
    if path != ROOT and not path.startswith(ROOT + "/"):
        raise errors.BadURL(f"a Resonite inventory path starts with {ROOT}: {url!r}")
    return path


@dataclass(frozen=True)
class Child:
    """One record of a listed folder under its shown name: ``server_path`` is normalised
    (no ``//``), ``stored`` the local file of an item."""

    named: Named
    server_path: str
    entry: Entry
    stored: Stored | None

    @property
    def record(self) -> Any:
        """The ``InventoryEntry`` message."""
        return self.named.record

    def same_record(self, other: Child) -> bool:
        """True when ``other`` is this record, also from another listing of the folder
        (same server path and record id)."""
        return (self.server_path, self.record.record_id) == (
            other.server_path, other.record.record_id)


@dataclass(frozen=True)
class Folder:
    """A listed folder: its children by shown name, listed at ``listed_at`` (trio clock)."""

    server_path: str
    children: dict[str, Child]
    listed_at: float


class ResoniteDriver(Driver):
    """The Resonite inventory through the Resonite IO mod's gRPC server.

    Construction does no I/O; :meth:`connect` finds the socket, waits for ``Ping`` and
    checks the mounted folder.
    """

    schemes = ("resonite",)
    capabilities = Capabilities(
        writable=True, read_mode=ReadMode.LOCAL, push_events=False, rename=True,
    )
    declared_options: ClassVar[tuple[opt.Option, ...]] = (
        opt.Option("socket", opt.text, "", "the game's Resonite IO socket (default: found "
                   "from $RESONITE_IO_SOCKET, $RESONITE_IO_SOCKET_DIR, ~/.resonite-io)"),
        opt.Option("ready_timeout", opt.seconds, 20.0,
                   "how long the mount waits for the game to answer Ping"),
        opt.Option("call_timeout", opt.seconds, 10.0, "the deadline of each rpc"),
        opt.Option("thumbnail_cache", opt.text, "",
                   "the thumbnail store shared by all mounts (default "
                   "$XDG_CACHE_HOME/assetfs/resonite-thumbnails)"),
        opt.Option("concurrency", opt.integer, 16,
                   "FetchThumbnail calls in flight while a folder is listed"),
        opt.Option("listing_ttl", opt.seconds, 1.0,
                   "how old a folder's listing may be when one name in it is looked up"),
    )
    poll_interval: float = 5.0

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        super().__init__(url, options)
        self.root = server_root(url)
        self.ready_timeout: float = self.options["ready_timeout"]
        self.listing_ttl: float = self.options["listing_ttl"]
        self.concurrency = max(1, int(self.options["concurrency"]))
        cache = self.options["thumbnail_cache"] or str(
            default_cache_root() / "resonite-thumbnails")
        self.store = ThumbnailStore(Path(cache))
        self.session = Session(self.options["socket"] or None, os.environ,
                               self.options["call_timeout"])
        self._folders: dict[str, Folder] = {}
        self._pending: dict[str, trio.Event] = {}
        self._sink: EventSink | None = None
        self._stale_logged = False
        self._changes = 0
        """Bumped by every change this driver makes, so a listing under way meanwhile is
        not kept."""

    async def _call(self, service: str, rpc: str, request: Any, server_path: str) -> Any:
        return await self.session.call(service, rpc, request, f"{rpc} {server_path}",
                                       self.url)

    # --- connection -------------------------------------------------------------------
    async def connect(self) -> None:
        """Find the socket, wait up to ``ready_timeout`` for ``Connection/Ping`` (the game
        answers FAILED_PRECONDITION while starting), log ``Info/GetServerInfo``, and check
        that the mounted path is a folder.

        Raises AssetFSError at once when no single socket is found (a one-line message
        naming the variable) or when the game is not ready in time, NotFound or
        NotADirectory for the mounted path."""
        await trio.to_thread.run_sync(self.store.get, "")  # the store's one scan
        try:
            await self._wait_ready()
        except (SocketNotFound, AmbiguousSocket) as exc:  # not worth a retry at mount time
            raise errors.AssetFSError(str(exc)) from None
        try:
            info = await self._call("Info", "GetServerInfo",
                                    protocol.info_pb2.GetServerInfoRequest(), "")
            log.info("Resonite IO mod %s, engine %s, platform %s, game pid %d, socket %s",
                     info.mod_version, info.engine_version,
                     protocol.info_pb2.ServerPlatform.Name(info.platform),
                     info.resonite_pid, self.session.socket)
        except errors.NotSupported:
            log.warning("Resonite IO server has no Info service (an older mod?)")
        await self._folder("/", 0.0)

    async def _wait_ready(self) -> None:
        deadline = trio.current_time() + self.ready_timeout
        while True:
            try:
                await self._call("Connection", "Ping", protocol.connection_pb2.PingRequest(
                    message="assetfs"), "")
                return
            except (SocketNotFound, AmbiguousSocket):
                raise
            except (GameState, errors.Unavailable) as exc:
                if trio.current_time() > deadline:
                    raise errors.AssetFSError(  # not retried: the wait was the retry
                        f"Resonite IO not ready after {self.ready_timeout:g}s ({exc}); "
                        "raise -o ready_timeout=SECONDS", url=self.url) from None
                log.info("Resonite IO not ready yet (%s); waiting", exc)
                await trio.sleep(0.5)

    async def close(self) -> None:
        """Close the channel and the thumbnail store's pack; never raises."""
        self.session.close()
        self.store.close()

    # --- listings ---------------------------------------------------------------------
    async def _folder(self, path: str, max_age: float) -> Folder:
        """The listing of driver folder ``path``, listed at most ``max_age`` seconds ago;
        one List at a time per folder (callers arriving meanwhile share it). A listing
        that was under way while this driver changed the store (``_forget``) answers its
        own caller but is not kept: it may predate the change."""
        cached = self._folders.get(path)
        if cached is not None and trio.current_time() - cached.listed_at <= max_age:
            return cached
        pending = self._pending.get(path)
        if pending is not None:
            await pending.wait()
            shared = self._folders.get(path)
            if shared is not None and shared is not cached:
                return shared
        done = self._pending[path] = trio.Event()
        changes = self._changes
        try:
            folder = await self._fetch(path)
            if self._changes == changes:
                self._folders[path] = folder
            self._stale_logged = False
            return folder
        except errors.Unavailable:
            if cached is None:
                raise
            if not self._stale_logged:
                log.warning("Resonite IO unreachable; answering from the last listings")
                self._stale_logged = True
            return cached
        finally:
            if self._pending.get(path) is done:
                del self._pending[path]
            done.set()

    async def _child(self, path: str) -> Child:
        """The record at driver path ``path`` (not the root), from the last listing of its
        folder; a name missing there is looked up in a listing at most ``listing_ttl``
        seconds old (another client may have made it since). Raises NotFound."""
        parent, name = split(path)
        child = (await self._folder(parent, math.inf)).children.get(name)
        if child is None:
            child = (await self._folder(parent, self.listing_ttl)).children.get(name)
        if child is None:
            raise errors.NotFound(url=self.describe(path))
        return child

    async def _folder_server_path(self, path: str) -> str:
        if path == "/":
            return self.root
        child = await self._child(path)
        if not child.entry.is_dir:
            raise errors.NotADirectory(url=self.describe(path))
        return child.server_path

    async def _fetch(self, path: str) -> Folder:
        server = await self._folder_server_path(path)
        listed_at = trio.current_time()
        listing = await self._call("Inventory", "List", pb.InventoryListRequest(path=server),
                                   server)
        records = list(listing.entries)
        stored = await self._stored(server, records)
        exts = {id(records[i]): "." + found.ext for i, found in stored.items()}
        children = {}
        for i, item in enumerate(shown_names(records, lambda r: exts.get(id(r), ""))):
            found = stored.get(i)
            children[item.shown] = Child(item, f"{server}/{item.record.name}",
                                         self._entry(item, found), found)
        return Folder(server, children, listed_at)

    async def _stored(self, folder: str, records: list[Any]) -> dict[int, Stored]:
        """The local file of each item of ``records`` (by index): its thumbnail (fetched
        once per record id and modification time, ``concurrency`` calls in flight), or its
        record as JSON when it has none or no path reaches it. The fetches and the store's
        writes run in one worker thread (session.py :func:`~.session.call_many`). Raises
        the first failure other than NotFound (no thumbnail)."""
        stored: dict[int, Stored] = {}
        fetch: list[tuple[int, str, str]] = []
        records_only: list[tuple[int, bool]] = []
        for i, (record, ok) in enumerate(zip(records, reachable(records), strict=True)):
            if record.kind in FOLDER_KINDS:
                continue
            path = f"{folder}/{record.name}"
            if not ok:
                records_only.append((i, False))
                continue
            thumb_key = key(record.record_id, record.last_modified_unix_nanos, path)
            found = self.store.get(thumb_key)
            if found is None:
                fetch.append((i, thumb_key, path))
            elif found.ext == NO_THUMBNAIL:
                records_only.append((i, True))
            else:
                stored[i] = found
        if fetch:
            stub = self.session.stub("Inventory", "FetchThumbnail")

            def keep(index: int, reply: Any) -> None:
                i, thumb_key, _ = fetch[index]
                stored[i] = self.store.put(thumb_key, reply.data,
                                           extension(reply.content_type, reply.data))

            try:
                failures = await trio.to_thread.run_sync(
                    call_many, stub, [pb.InventoryThumbnailRequest(path=p) for _, _, p in fetch],
                    self.concurrency, self.session.timeout, keep,
                    lambda index: f"FetchThumbnail {fetch[index][2]}", self.url)
            except OSError as exc:
                raise errors.NoSpace(f"thumbnail store {self.store.root}: {exc}") from exc
            for _, failure in failures:
                if not isinstance(failure, errors.NotFound):
                    self.session.failed(failure)
                    raise failure
            missing = [fetch[index][:2] for index, _ in failures]
            records_only += [(i, True) for i, _ in missing]
        else:
            missing = []

        def write_records() -> None:
            for _, thumb_key in missing:
                self.store.put(thumb_key, b"", NO_THUMBNAIL)
            for i, ok in records_only:
                record = records[i]
                record_key = key(record.record_id, record.last_modified_unix_nanos,
                                 f"{folder}/{record.name}", record.name, str(ok))
                stored[i] = self.store.get(record_key) or self.store.put(
                    record_key, _record_json(record, ok), RECORD_EXT)

        if records_only:
            await trio.to_thread.run_sync(write_records)
        return stored

    def _entry(self, item: Named, stored: Stored | None) -> Entry:
        record = item.record
        metadata = {
            "kind": KINDS.get(record.kind, "unknown"),
            "name": record.name,
            "record_id": record.record_id,
            "asset_uri": record.asset_uri,
            "public": "true" if record.is_public else "false",
        }
        metadata = {k: v for k, v in metadata.items() if v}
        mtime = record.last_modified_unix_nanos
        if stored is None:
            return Entry(item.shown, Kind.DIR, 0, mtime, mode=0o755, metadata=metadata)
        metadata["thumbnail"] = "none" if stored.is_record else stored.ext
        return Entry(item.shown, Kind.FILE, stored.size, mtime,
                     version=stored.version, mode=0o644, metadata=metadata)

    # --- the driver contract ----------------------------------------------------------
    async def stat(self, path: str) -> Entry:
        """The entry at ``path``, from a listing of its folder at most ``listing_ttl``
        seconds old. Raises NotFound."""
        if path == "/":
            folder = await self._folder("/", math.inf)
            return Entry("", Kind.DIR, 0, 0, mode=0o755, metadata={"path": folder.server_path})
        parent, name = split(path)
        try:
            folder = await self._folder(parent, self.listing_ttl)
        except errors.NotADirectory:
            raise errors.NotFound(url=self.describe(path)) from None
        child = folder.children.get(name)
        if child is None:
            raise errors.NotFound(url=self.describe(path))
        return child.entry

    def known_entry(self, path: str) -> Entry | None:
        """The entry at ``path`` from a listing of its folder at most ``listing_ttl``
        seconds old that holds it; else None (no I/O)."""
        if path == "/":
            return None
        parent, name = split(path)
        folder = self._folders.get(parent)
        if folder is None or trio.current_time() - folder.listed_at > self.listing_ttl:
            return None
        child = folder.children.get(name)
        return None if child is None else child.entry

    async def list(self, path: str) -> list[Entry]:
        """The children of folder ``path``: one List, then FetchThumbnail (``concurrency``
        at a time) for items whose thumbnail is not stored yet."""
        folder = await self._folder(path, 0.0)
        return [c.entry for c in folder.children.values()]

    async def local_range(self, path: str) -> LocalRange:
        """Where the bytes of item ``path`` (thumbnail or record JSON) lie in the thumbnail
        store: a range of one of its packs. Raises NotFound, IsADirectory."""
        child = await self._child(path)
        if child.stored is None:
            raise errors.IsADirectory(url=self.describe(path))
        place = self.store.place(child.stored.key)
        if place is None:
            raise errors.NotFound(f"not in the thumbnail store {self.store.root}",
                                  url=self.describe(path))
        return LocalRange(place.path, place.offset, place.size)

    def known_local_range(self, path: str) -> LocalRange | None:
        """:meth:`local_range` without I/O, for an item of a folder listed already; else
        None."""
        parent, name = split(path)
        folder = self._folders.get(parent)
        child = None if folder is None else folder.children.get(name)
        place = None if child is None or child.stored is None else self.store.place(
            child.stored.key)
        return None if place is None else LocalRange(place.path, place.offset, place.size)

    def _no_upload(self, path: str) -> errors.NotSupported:
        return errors.NotSupported(
            "Resonite IO cannot store file contents; copy an item with "
            "setfattr -n user.assetfs.copy -v DESTINATION", url=self.describe(path))

    def check_write(self, path: str) -> None:
        """Always refuses with NotSupported: no rpc creates or changes an item from bytes
        (docs/backends/resonite.md); copies go through ``user.assetfs.copy``."""
        raise self._no_upload(path)

    async def write(self, path: str, source: str, size: int) -> Entry:
        """Always refuses with NotSupported, as :meth:`check_write` does (the base class's
        ReadOnly would say the whole mount is read-only, which it is not)."""
        raise self._no_upload(path)

    def _reachable(self, child: Child, path: str) -> None:
        if not child.named.reachable:
            raise Unaddressable(
                f"no server path reaches {child.record.name!r} (a repeated name or a '/' in "
                "it); rename the other records of that name in the game first",
                url=self.describe(path))

    def _forget(self, *folders: str) -> None:
        self._changes += 1
        for folder in folders:
            for known in list(self._folders):
                if known == folder or known.startswith(folder.rstrip("/") + "/"):
                    del self._folders[known]

    async def _new_name(self, path: str, ext: str, *replacing: Child) -> tuple[str, str]:
        """(server folder, server name) for a new record at driver path ``path``; an item's
        shown name must end with its type's extension ``ext`` (``.webp``). Raises
        InvalidName, AlreadyExists (another record, not one of ``replacing``, has the name
        there: the server would make a second record of that name)."""
        parent, shown = split(path)
        if ext:
            if not shown.endswith(ext) or shown == ext:
                raise errors.InvalidName(f"an item's name must end with {ext}",
                                         url=self.describe(path))
            shown = shown[: -len(ext)]
        server_folder = await self._folder_server_path(parent)
        folder = await self._folder(parent, self.listing_ttl)
        taken = [c for c in folder.children.values()
                 if c.record.name == shown and not any(c.same_record(r) for r in replacing)]
        if taken:
            raise errors.AlreadyExists(f"the folder holds a record named {shown!r} "
                                       f"(shown as {taken[0].named.shown})",
                                       url=self.describe(path))
        return server_folder, shown

    async def mkdir(self, path: str) -> Entry:
        """MakeDir. Raises AlreadyExists, NotFound, InvalidName."""
        server_folder, name = await self._new_name(path, "")
        target = f"{server_folder}/{name}"
        result = await self._call("Inventory", "MakeDir", pb.InventoryMakeDirRequest(path=target),
                                  target)
        self._forget(split(path)[0])
        return Entry(split(path)[1], Kind.DIR, 0, 0, mode=0o755,
                     metadata={"kind": "directory", "name": name, "record_id": result.record_id})

    async def remove(self, path: str, kind: Kind) -> None:
        """Remove. A folder is listed first and refused with DirectoryNotEmpty when it has
        children (another client may have filled it since the VFS looked; a link to a
        folder that is gone counts as empty), then removed with ``recursive``, which the
        server wants for any folder (docs/backends/resonite.md). Raises NotFound,
        DirectoryNotEmpty, Unaddressable."""
        child = await self._child(path)
        self._reachable(child, path)
        if child.entry.is_dir:
            try:
                below = (await self._folder(path, 0.0)).children
            except errors.NotFound:
                below = {}
            if below:
                raise errors.DirectoryNotEmpty(url=self.describe(path))
        await self._call("Inventory", "Remove", pb.InventoryRemoveRequest(
            path=child.server_path, recursive=child.entry.is_dir), child.server_path)
        self._forget(split(path)[0], path)

    async def rename(self, old: str, new: str) -> None:
        """Move (record ids kept). A file's new name must keep its extension; a file at
        ``new`` is removed first (POSIX rename replaces it), once the move is known to be
        possible."""
        child = await self._child(old)
        self._reachable(child, old)
        ext = "" if child.stored is None else "." + child.stored.ext
        parent = await self._folder(split(new)[0], self.listing_ttl)
        target = parent.children.get(split(new)[1])
        replaced = target if target is not None and not target.entry.is_dir else None
        server_folder, name = await self._new_name(new, ext, child,
                                                   *([replaced] if replaced else []))
        if replaced is not None:
            self._reachable(replaced, new)
            await self._call("Inventory", "Remove", pb.InventoryRemoveRequest(
                path=replaced.server_path), replaced.server_path)
            self._forget(split(new)[0])
        destination = f"{server_folder}/{name}"
        await self._call("Inventory", "Move", pb.InventoryMoveRequest(
            source_path=child.server_path, destination_path=destination), child.server_path)
        self._forget(split(old)[0], split(new)[0], old)

    async def control(self, path: str, action: str, value: bytes) -> None:
        """``user.assetfs.spawn`` (any value): Spawn the item into the focused world.
        ``user.assetfs.copy`` = DESTINATION (a path in the mount, absolute from the mount
        root or relative to it; an existing folder receives a copy of the same name):
        server-side Copy, recursive for folders. Raises GameState (EPERM) when the game
        refuses (the server's message is logged), Unaddressable, InvalidName,
        AlreadyExists, NotSupported for other actions."""
        if path == "/":
            raise errors.NotSupported(f"action {action!r} on the mount root",
                                      url=self.describe(path))
        if action == "spawn":
            await self._spawn(path)
        elif action == "copy":
            await self._copy(path, value)
        else:
            await super().control(path, action, value)

    async def _spawn(self, path: str) -> None:
        child = await self._child(path)
        self._reachable(child, path)
        try:
            result = await self._call("Inventory", "Spawn",
                                      pb.InventorySpawnRequest(path=child.server_path),
                                      child.server_path)
        except GameState as exc:
            log.warning("spawn refused by the game: %s", exc)
            raise
        log.info("spawned %s as slot %s (%s)", child.server_path, result.spawned_slot_id,
                 result.spawned_slot_name)

    async def _copy(self, path: str, value: bytes) -> None:
        child = await self._child(path)
        self._reachable(child, path)
        try:
            where = value.decode().strip()
        except UnicodeDecodeError:
            raise errors.InvalidName("the copy destination is not UTF-8") from None
        if not where:
            raise errors.InvalidName("user.assetfs.copy needs a destination path")
        destination = posixpath.normpath("/" + where.lstrip("/"))
        with_name = None
        if destination != "/":
            parent, name = split(destination)
            existing = (await self._folder(parent, self.listing_ttl)).children.get(name)
            if existing is not None and existing.entry.is_dir:
                with_name = posixpath.join(destination, split(path)[1])
        else:
            with_name = posixpath.join("/", split(path)[1])
        destination = with_name or destination
        ext = "" if child.stored is None else "." + child.stored.ext
        server_folder, name = await self._new_name(destination, ext)
        target = f"{server_folder}/{name}"
        await self._call("Inventory", "Copy", pb.InventoryCopyRequest(
            source_path=child.server_path, destination_path=target,
            recursive=child.entry.is_dir), child.server_path)
        parent = split(destination)[0]
        self._forget(parent)
        if self._sink is not None:
            try:
                entry = await self.stat(destination)
            except errors.NotFound:
                return
            await self._sink.send(ChangeEvent(ChangeKind.CREATED, destination, entry))

    async def run_events(self, sink: EventSink) -> None:
        """The base class's polling, plus CREATED events for copies made through
        ``user.assetfs.copy`` (the VFS cannot know where they land)."""
        self._sink = sink
        await super().run_events(sink)


def _record_json(record: Any, reachable: bool) -> bytes:
    """The file bytes of an item with no thumbnail: its record as indented JSON."""
    return (json.dumps({
        "name": record.name,
        "kind": KINDS.get(record.kind, "unknown"),
        "record_id": record.record_id,
        "asset_uri": record.asset_uri,
        "is_public": record.is_public,
        "last_modified_unix_nanos": record.last_modified_unix_nanos,
        "thumbnail": "none" if reachable else "unreachable by path",
    }, indent=2, ensure_ascii=False) + "\n").encode()
