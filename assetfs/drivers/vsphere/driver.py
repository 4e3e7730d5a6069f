"""The vSphere content library driver: the tree ``/<library>/<item>/<file>`` over the REST
API (see the package docstring for options and server quirks)."""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import httpx
import trio

from ... import errors
from ... import options as opt
from ..base import Capabilities, Driver, Entry, Kind, ReadMode, split
from .rest import (
    CONTENT_API,
    PASSWORD_ENV,
    REBUILD_PREFIX,
    SESSION_API,
    SESSION_HEADER,
    RestClient,
)
from .transfer import Transfers

log = logging.getLogger(__name__)


def parse_time_ns(text: str | None) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time such as
    ``2026-11-22T03:10:13.493902606Z`` (nanosecond digits kept); 0 when absent or bad."""
    if not text:
        return 0
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text)
    if not match:
        return 0
    import datetime as dt

    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        when = dt.datetime.fromisoformat(base + zone)
    except ValueError:
        return 0
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(when.timestamp()) * 1_000_000_000 + nanos


@dataclass(frozen=True)
class _Where:
    """A driver path resolved to server names: ``names`` is (library, item, file)[:depth]."""

    path: str
    names: tuple[str, ...]

    @property
    def depth(self) -> int:
        """0 all libraries, 1 a library, 2 an item, 3 a file."""
        return len(self.names)


@dataclass(frozen=True)
class _File:
    """One file of an item as listed (the last entry of its name), with the entry count."""

    name: str
    size: int
    version: str
    checksum: str
    cached: bool | None
    copies: int


class CrossLibrary(errors.NotSupported):
    """An item cannot move to another library in place (no server-side move)."""

    errno = errno.EXDEV


class VsphereDriver(Transfers, RestClient, Driver):
    """A vCenter content library service (or VMware's vcsim) mounted as folders.

    Construction does no I/O; :meth:`connect` logs in and checks the mounted library.
    """

    schemes = ("vsphere",)
    capabilities = Capabilities(
        writable=True,
        read_mode=ReadMode.STREAM,  # vcsim ignores Range (module docstring)
        push_events=False,
        rename=True,
    )
    declared_options: ClassVar[tuple[opt.Option, ...]] = (
        opt.Option("http", opt.boolean, False, "plain http (the test simulator)"),
        opt.Option("insecure", opt.boolean, False, "do not verify the server's TLS certificate"),
        opt.Option("ca_bundle", opt.text, "", "trust the PEM certificates in this file"),
        opt.Option("credentials", opt.text, "", "a mode 0600 file holding the password"),
        opt.Option("call_timeout", opt.seconds, 30.0, "timeout of every HTTP call"),
        opt.Option("prepare_timeout", opt.seconds, 120.0,
                   "how long a download session may take to reach PREPARED"),
        opt.Option("keepalive", opt.seconds, 120.0, "transfer session keep-alive interval"),
        opt.Option("item_type", opt.text, "file", "type of the items mkdir creates"),
        opt.Option("datastore", opt.text, "", "datastore id of libraries mkdir creates"),
        opt.Option("spool_dir", opt.text, "", "scratch space for the simulator's item rebuild"),
    )

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        if parts.scheme.lower() not in self.schemes or not parts.hostname:
            raise errors.BadURL(f"expected vsphere://USER@HOST[:PORT]/[LIBRARY]: {url!r}")
        if parts.password is not None:
            raise errors.BadURL(
                f"put no password in the URL; use ${PASSWORD_ENV} or -o credentials=PATH"
            )
        self.user = unquote(parts.username or "")
        self.use_http = bool(self.options["http"])
        scheme = "http" if self.use_http else "https"
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = parts.port or (80 if self.use_http else 443)
        self.base_url = f"{scheme}://{host}:{port}"
        self._prefix = tuple(unquote(p) for p in parts.path.split("/") if p)
        if len(self._prefix) > 2:
            raise errors.BadURL(f"a mount URL names at most /LIBRARY/ITEM: {url!r}")
        self.timeout = float(self.options["call_timeout"])
        self.prepare_timeout = float(self.options["prepare_timeout"])
        self.keepalive_interval = float(self.options["keepalive"])
        self.item_type = str(self.options["item_type"])
        self.datastore = str(self.options["datastore"])
        self.spool_dir = str(self.options["spool_dir"]) or tempfile.gettempdir()
        self._password: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._session: str | None = None
        self._login_lock = trio.Lock()
        self._library_ids: dict[str, str] = {}
        self._item_ids: dict[tuple[str, str], str] = {}
        self._item_locks: dict[str, trio.Lock] = {}
        self.remove_kills_session: bool | None = None
        """None until known; True on vcsim, whose update-session ``remove`` deletes the
        session instead of the file (module docstring)."""
        self.range_honoured: bool | None = None
        """None until a ranged GET was made; then whether the server replied 206."""

    async def connect(self) -> None:
        """Log in, then check that the mounted library (or item) exists.

        Raises PermissionDenied (no password, wrong credentials), Unavailable (host
        unreachable), AssetFSError (TLS verification), NotFound (unknown library)."""
        if self._client is None:
            self._password = self._read_password()
            if not self.user:
                raise errors.BadURL(f"no user name: use vsphere://USER@HOST/...: {self.url!r}")
            self._client = self._make_client()
        await self._login(None)
        await super().connect()

    async def close(self) -> None:
        """Log out and close connections; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                if self._session:
                    await client.delete(SESSION_API, headers={SESSION_HEADER: self._session})
            except httpx.HTTPError:
                pass
            await client.aclose()
        self._session = None

    def _where(self, path: str) -> _Where:
        names = self._prefix + tuple(p for p in path.split("/") if p)
        if len(names) > 3:
            raise errors.NotFound("below a file", url=self.describe(path))
        return _Where(path, names)

    async def _library_infos(self) -> dict[str, dict[str, Any]]:
        """All libraries by shown name (duplicates as ``NAME~<id8>``, oldest plain)."""
        ids = await self._call("GET", f"{CONTENT_API}/library", "list libraries") or []

        def getter(lid: str) -> Callable[[], Awaitable[Any]]:
            return lambda: self._get_or_none(f"{CONTENT_API}/library/id:{lid}", "get library")

        infos = [i for i in await self._gather([getter(lid) for lid in ids]) if i]
        infos.sort(key=lambda i: (i.get("creation_time") or "", i.get("id") or ""))
        shown: dict[str, dict[str, Any]] = {}
        for info in infos:
            name = str(info.get("name") or info.get("id"))
            if name in shown:
                name = f"{name}~{str(info['id'])[:8]}"
            shown[name] = info
        self._library_ids = {name: str(info["id"]) for name, info in shown.items()}
        return shown

    async def _get_or_none(self, endpoint: str, what: str) -> Any:
        try:
            return await self._call("GET", endpoint, what)
        except errors.NotFound:
            return None

    async def _library(self, name: str, path: str) -> dict[str, Any]:
        """The library shown as ``name``. Raises NotFound."""
        lid = self._library_ids.get(name)
        if lid is not None:
            info = await self._get_or_none(f"{CONTENT_API}/library/id:{lid}", "get library")
            if info and name in (info.get("name"), f"{info.get('name')}~{lid[:8]}"):
                return dict(info)
        info = (await self._library_infos()).get(name)
        if info is None:
            raise errors.NotFound(f"no content library named {name!r}", url=self.describe(path))
        return dict(info)

    async def _item(self, library: dict[str, Any], name: str, path: str) -> dict[str, Any]:
        """The item ``name`` of ``library``. Raises NotFound."""
        lid = str(library["id"])
        if name.startswith(REBUILD_PREFIX):
            raise errors.NotFound(url=self.describe(path))
        iid = self._item_ids.get((lid, name))
        if iid is not None:
            info = await self._get_or_none(f"{CONTENT_API}/library/item/id:{iid}", "get item")
            if info and info.get("name") == name and info.get("library_id") == lid:
                return dict(info)
            self._item_ids.pop((lid, name), None)
        ids = (
            await self._call(
                "POST",
                f"{CONTENT_API}/library/item",
                "find item",
                path,
                params={"~action": "find"},
                body={"spec": {"library_id": lid, "name": name}},
            )
            or []
        )
        for iid in ids:
            info = await self._get_or_none(f"{CONTENT_API}/library/item/id:{iid}", "get item")
            if info and info.get("name") == name and info.get("library_id") == lid:
                self._item_ids[(lid, name)] = str(iid)
                return dict(info)
        raise errors.NotFound(
            f"no item {name!r} in library {library.get('name')!r}", url=self.describe(path)
        )

    async def _items(self, library: dict[str, Any], path: str) -> list[dict[str, Any]]:
        lid = str(library["id"])
        ids = (
            await self._call(
                "GET", f"{CONTENT_API}/library/item", "list items", path, params={"library_id": lid}
            )
            or []
        )

        def getter(iid: str) -> Callable[[], Awaitable[Any]]:
            return lambda: self._get_or_none(f"{CONTENT_API}/library/item/id:{iid}", "get item")

        infos = [i for i in await self._gather([getter(i) for i in ids]) if i]
        infos = [i for i in infos if not str(i.get("name", "")).startswith(REBUILD_PREFIX)]
        for info in infos:
            self._item_ids[(lid, str(info.get("name")))] = str(info["id"])
        return infos

    async def _files(self, item: dict[str, Any], path: str) -> dict[str, _File]:
        """The files of ``item`` by name; for a name listed twice (vcsim), the last entry."""
        listed = (
            await self._call(
                "GET",
                f"{CONTENT_API}/library/item/file",
                "list files",
                path,
                params={"library_item_id": str(item["id"])},
            )
            or []
        )
        files: dict[str, _File] = {}
        for raw in listed:
            name = str(raw.get("name") or "")
            if not name:
                continue
            checksum = raw.get("checksum_info") or {}
            copies = files[name].copies + 1 if name in files else 1
            files[name] = _File(
                name=name,
                size=int(raw.get("size") or 0),
                version=str(raw.get("version") or ""),
                checksum=(
                    f"{str(checksum.get('algorithm') or 'SHA1').lower()}:{checksum['checksum']}"
                    if checksum.get("checksum")
                    else ""
                ),
                cached=raw.get("cached"),
                copies=copies,
            )
        return files

    async def _resolve(
        self, where: _Where
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, _File | None]:
        """(library, item, file) infos down to ``where``'s depth. Raises NotFound."""
        library = item = None
        file = None
        if where.depth >= 1:
            library = await self._library(where.names[0], where.path)
        if where.depth >= 2 and library is not None:
            item = await self._item(library, where.names[1], where.path)
        if where.depth == 3 and item is not None:
            file = (await self._files(item, where.path)).get(where.names[2])
            if file is None:
                raise errors.NotFound(
                    f"no file {where.names[2]!r} in item {where.names[1]!r}",
                    url=self.describe(where.path),
                )
        return library, item, file

    @staticmethod
    def _metadata(**values: Any) -> dict[str, str]:
        return {k: str(v) for k, v in values.items() if v not in (None, "")}

    def _library_entry(self, name: str, info: dict[str, Any]) -> Entry:
        return Entry(
            name=name,
            kind=Kind.DIR,
            mtime_ns=parse_time_ns(info.get("last_modified_time")),
            version=f"{info.get('id')}:{info.get('version') or ''}",
            mode=0o755,
            metadata=self._metadata(
                id=info.get("id"),
                type=info.get("type"),
                description=info.get("description"),
                version=info.get("version"),
            ),
        )

    def _item_entry(self, info: dict[str, Any]) -> Entry:
        return Entry(
            name=str(info.get("name")),
            kind=Kind.DIR,
            mtime_ns=parse_time_ns(info.get("last_modified_time")),
            version=f"{info.get('id')}:{info.get('content_version') or ''}:"
            f"{info.get('metadata_version') or ''}",
            mode=0o755,
            metadata=self._metadata(
                id=info.get("id"),
                type=info.get("type"),
                content_version=info.get("content_version"),
                metadata_version=info.get("metadata_version"),
                description=info.get("description"),
                size=info.get("size"),
            ),
        )

    def _file_entry(self, item: dict[str, Any], file: _File) -> Entry:
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
            metadata=self._metadata(
                type=item.get("type"),
                content_version=item.get("content_version"),
                checksum=file.checksum,
                description=item.get("description"),
                version=file.version,
                item_id=item.get("id"),
            ),
        )

    def _root_entry(self) -> Entry:
        return Entry(name="", kind=Kind.DIR, mode=0o755)

    async def stat(self, path: str) -> Entry:
        """The entry at ``path``. Raises NotFound."""
        where = self._where(path)
        if where.depth == 0:
            await self._call("GET", f"{CONTENT_API}/library", "list libraries")
            return self._root_entry()
        library, item, file = await self._resolve(where)
        if where.depth == 1 and library is not None:
            entry = self._library_entry(where.names[0], library)
        elif where.depth == 2 and item is not None:
            entry = self._item_entry(item)
        elif item is not None and file is not None:
            entry = self._file_entry(item, file)
        else:  # pragma: no cover - _resolve raised
            raise errors.NotFound(url=self.describe(path))
        if path == "/":
            return Entry(
                "",
                entry.kind,
                entry.size,
                entry.mtime_ns,
                entry.version,
                entry.mode,
                entry.metadata,
            )
        return entry

    async def list(self, path: str) -> list[Entry]:
        """Libraries, items of a library, or files of an item. Raises NotFound,
        NotADirectory (a file)."""
        where = self._where(path)
        if where.depth == 3:
            await self._resolve(where)
            raise errors.NotADirectory(url=self.describe(path))
        if where.depth == 0:
            return [self._library_entry(n, i) for n, i in (await self._library_infos()).items()]
        library, item, _ = await self._resolve(where)
        if where.depth == 1 and library is not None:
            return [self._item_entry(i) for i in await self._items(library, path)]
        assert item is not None
        return [self._file_entry(item, f) for f in (await self._files(item, path)).values()]

    async def _file_for_read(self, path: str) -> tuple[dict[str, Any], _File]:
        where = self._where(path)
        if where.depth < 3:
            await self._resolve(where)
            raise errors.IsADirectory(url=self.describe(path))
        _, item, file = await self._resolve(where)
        assert item is not None and file is not None
        return item, file

    async def open_stream(self, path: str) -> AsyncIterator[bytes]:
        """The whole file as chunks of up to 1 MiB from offset 0, through one download
        session (deleted afterwards, also on cancellation or ``aclose``).

        Drain it promptly: vcsim answers nothing else while the transfer is open.
        Raises NotFound, IsADirectory, TimedOut (not PREPARED in time), Unavailable (cut
        short: fewer bytes than the listed size)."""
        item, file = await self._file_for_read(path)
        stream = self._download(str(item["id"]), file.name, path, file.size)
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``: one download session and one GET with Range.
        On a server that ignores Range (vcsim) the bytes before ``offset`` are read and
        dropped, so prefer :meth:`open_stream` there (``capabilities.ranged_read`` is False).
        """
        item, file = await self._file_for_read(path)
        if size <= 0 or offset >= file.size:
            return b""
        size = min(size, file.size - offset)
        stream = self._download(str(item["id"]), file.name, path, None, offset, size)
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            return b"".join([chunk async for chunk in chunks])

    def check_create(self, path: str, kind: Kind) -> None:
        """Files live only in items (``/LIBRARY/ITEM/FILE``) and folders only above them
        (libraries, items): anything else raises NotSupported (EOPNOTSUPP). No I/O."""
        depth = len(self._prefix) + len([p for p in path.split("/") if p])
        if kind is Kind.FILE and depth != 3:
            raise errors.NotSupported(
                "files live inside items: /LIBRARY/ITEM/FILE", url=self.describe(path)
            )
        if kind is Kind.DIR and depth == 3:
            raise errors.NotSupported(
                "an item holds files only; folders inside an item are not possible",
                url=self.describe(path),
            )
        if kind is Kind.DIR and split(path)[1].startswith(REBUILD_PREFIX):
            raise errors.InvalidName(
                f"names starting with {REBUILD_PREFIX} are reserved", url=self.describe(path)
            )

    async def write(self, path: str, source: str, size: int) -> Entry:
        """Upload local file ``source`` (``size`` bytes) as file ``path`` of an item,
        replacing a file of that name: one update session that removes the old file, adds
        the new one, PUTs the bytes and completes (waiting for DONE). On vcsim, replacing
        rebuilds the item (module docstring). Returns the new entry.

        Raises NotSupported for a path that is not inside an item (files live in items),
        NotFound (no such library/item), PermissionDenied, Unavailable, TimedOut."""
        where = self._where(path)
        if where.depth != 3:
            raise errors.NotSupported(
                "files live inside items: /LIBRARY/ITEM/FILE", url=self.describe(path)
            )
        library, item, _ = await self._resolve(_Where(path, where.names[:2]))
        assert library is not None and item is not None
        name = where.names[2]
        async with self._lock(str(item["id"])):
            item = await self._item(library, str(item["name"]), path)
            existing = await self._files(item, path)
            if name in existing and self.remove_kills_session:
                await self._rebuild(library, item, path, name, (name, source, size))
            else:
                sid = await self._open_update(str(item["id"]), path)
                try:
                    if name in existing and not await self._remove_in_session(sid, name, path):
                        sid = ""  # vcsim dropped it
                        await self._rebuild(library, item, path, name, (name, source, size))
                    else:
                        await self._add_file(sid, name, source, size, path)
                except BaseException:
                    if sid:
                        await self._abort(sid, path)
                    raise
                if sid:
                    await self._complete(sid, path)
            item = await self._item(library, str(item["name"]), path)
            file = (await self._files(item, path)).get(name)
            if file is None:
                raise errors.AssetFSError(
                    f"uploaded {name!r} is not listed afterwards", url=self.describe(path)
                )
            return self._file_entry(item, file)

    async def mkdir(self, path: str) -> Entry:
        """Create a library (top level; needs ``-o datastore=ID`` or an existing library
        whose storage backing is reused) or an item (type ``-o item_type``).

        Raises AlreadyExists, NotFound (no such library), NotSupported (inside an item:
        items hold files only)."""
        where = self._where(path)
        if where.depth == 0:
            raise errors.AlreadyExists(url=self.describe(path))
        if where.depth == 3:
            await self._resolve(_Where(path, where.names[:2]))
            raise errors.NotSupported(
                "an item holds files only; folders inside an item are not possible",
                url=self.describe(path),
            )
        if where.depth == 1:
            return await self._mkdir_library(where)
        library = await self._library(where.names[0], path)
        name = where.names[1]
        if name.startswith(REBUILD_PREFIX):
            raise errors.InvalidName(
                f"names starting with {REBUILD_PREFIX} are reserved", url=self.describe(path)
            )
        iid = await self._create_item(str(library["id"]), name, self.item_type, "", path)
        self._item_ids[(str(library["id"]), name)] = iid
        return self._item_entry(await self._item(library, name, path))

    async def _mkdir_library(self, where: _Where) -> Entry:
        path, name = where.path, where.names[0]
        libraries = await self._library_infos()
        if name in libraries:
            raise errors.AlreadyExists(url=self.describe(path))
        if self.datastore:
            backings = [{"type": "DATASTORE", "datastore_id": self.datastore}]
        else:
            backings = next(
                (
                    list(i["storage_backings"])
                    for i in libraries.values()
                    if i.get("storage_backings")
                ),
                [],
            )
        if not backings:
            raise errors.NotSupported(
                "creating a library needs a datastore: pass -o datastore=ID",
                url=self.describe(path),
            )
        await self._call(
            "POST",
            f"{CONTENT_API}/local-library",
            "create library",
            path,
            body={"create_spec": {"name": name, "type": "LOCAL", "storage_backings": backings}},
        )
        return self._library_entry(name, await self._library(name, path))

    async def remove(self, path: str, kind: Kind) -> None:
        """Delete a file (update session ``remove``; on vcsim an item rebuild), or an empty
        item or library. Raises NotFound, DirectoryNotEmpty, IsADirectory/NotADirectory
        when ``kind`` does not match, PermissionDenied (the mounted root)."""
        where = self._where(path)
        if path == "/" or where.depth == 0:
            raise errors.PermissionDenied(
                "the mounted root cannot be removed", url=self.describe(path)
            )
        library, item, _ = await self._resolve(where)
        is_file = where.depth == 3
        if kind is Kind.FILE and not is_file:
            raise errors.IsADirectory(url=self.describe(path))
        if kind is Kind.DIR and is_file:
            raise errors.NotADirectory(url=self.describe(path))
        assert library is not None
        if where.depth == 1:
            if await self._items(library, path):
                raise errors.DirectoryNotEmpty(url=self.describe(path))
            await self._call(
                "DELETE", f"{CONTENT_API}/library/id:{library['id']}", "delete library", path
            )
            self._library_ids.pop(where.names[0], None)
            return
        assert item is not None
        async with self._lock(str(item["id"])):
            item = await self._item(library, where.names[1], path)
            files = await self._files(item, path)
            if where.depth == 2:
                if files:
                    raise errors.DirectoryNotEmpty(url=self.describe(path))
                await self._call(
                    "DELETE", f"{CONTENT_API}/library/item/id:{item['id']}", "delete item", path
                )
                self._item_ids.pop((str(library["id"]), where.names[1]), None)
                return
            name = where.names[2]
            if name not in files:
                raise errors.NotFound(url=self.describe(path))
            removed = False
            if not self.remove_kills_session:
                sid = await self._open_update(str(item["id"]), path)
                try:
                    removed = await self._remove_in_session(sid, name, path)
                except BaseException:
                    await self._abort(sid, path)
                    raise
                if removed:
                    await self._complete(sid, path)
            if not removed:
                await self._rebuild(library, item, path, name, None)

    async def rename(self, old: str, new: str) -> None:
        """Rename an item within its library, or a library (``PATCH ... update_spec``).

        Raises NotSupported for a file (the API cannot rename a file inside an item),
        CrossLibrary (EXDEV) for an item moved to another library, AlreadyExists when
        ``new`` is taken, NotFound."""
        src, dst = self._where(old), self._where(new)
        if src.depth != dst.depth or src.depth == 0:
            raise errors.NotSupported(
                "only items and libraries can be renamed", url=self.describe(old)
            )
        library, item, _ = await self._resolve(src)
        assert library is not None
        if src.depth == 3:
            raise errors.NotSupported(
                "the content library API cannot rename a file inside an item; copy it",
                url=self.describe(old),
            )
        if src.names == dst.names:
            return
        if src.depth == 1:
            if dst.names[0] in await self._library_infos():
                raise errors.AlreadyExists(url=self.describe(new))
            await self._call(
                "PATCH",
                f"{CONTENT_API}/library/id:{library['id']}",
                "rename library",
                old,
                body={"update_spec": {"name": dst.names[0]}},
            )
            self._library_ids.pop(src.names[0], None)
            return
        assert item is not None
        if src.names[0] != dst.names[0]:
            raise CrossLibrary(
                "items cannot move between libraries in place", url=self.describe(old)
            )
        if dst.names[1].startswith(REBUILD_PREFIX):
            raise errors.InvalidName(url=self.describe(new))
        try:
            await self._item(library, dst.names[1], new)
        except errors.NotFound:
            pass
        else:
            raise errors.AlreadyExists(url=self.describe(new))
        async with self._lock(str(item["id"])):
            await self._call(
                "PATCH",
                f"{CONTENT_API}/library/item/id:{item['id']}",
                "rename item",
                old,
                body={"update_spec": {"name": dst.names[1]}},
            )
        lid = str(library["id"])
        self._item_ids.pop((lid, src.names[1]), None)
        self._item_ids[(lid, dst.names[1])] = str(item["id"])

    async def control(self, path: str, action: str, value: bytes) -> None:
        """``user.assetfs.description`` on a library or item sets its description.
        Raises NotSupported for other actions or for files."""
        where = self._where(path)
        if action != "description" or where.depth not in (1, 2):
            raise errors.NotSupported(f"action {action!r}", url=self.describe(path))
        library, item, _ = await self._resolve(where)
        text = value.decode("utf-8", "replace")
        if item is not None:
            endpoint = f"{CONTENT_API}/library/item/id:{item['id']}"
        elif library is not None:
            endpoint = f"{CONTENT_API}/library/id:{library['id']}"
        else:
            return
        await self._call(
            "PATCH", endpoint, "set description", path,
            body={"update_spec": {"description": text}},
        )
