"""The vSphere content library driver: the tree ``/<library>/<item>/<file>`` over the REST
API (see the package docstring for options and server quirks), composed of a
:class:`~.rest.RestClient` (the session), a :class:`~.catalog.Catalog` (name lookups) and
:class:`~.transfer.Transfers` (moving bytes)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit

import trio

from ... import errors
from ... import options as opt
from ..base import Capabilities, Driver, Entry, Kind, ReadMode, split
from .catalog import Catalog, File, Where
from .entries import file_entry, item_entry, library_entry, root_entry
from .rest import CONTENT_API, PASSWORD_ENV, REBUILD_PREFIX, RestClient
from .transfer import Transfers

T = TypeVar("T")


class CrossLibrary(errors.NotSupported):
    """An item cannot move to another library in place (no server-side move)."""

    errno = errno.EXDEV


class VsphereDriver(Driver):
    """A vCenter content library service (or VMware's vcsim) mounted as folders.

    Construction does no I/O; :meth:`connect` logs in and checks the mounted library.
    """

    schemes = ("vsphere",)
    capabilities = Capabilities(
        writable=True,
        read_mode=ReadMode.STREAM,  # vcsim ignores Range (package docstring)
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
        opt.Option("transfers_via_url", opt.boolean, False,
                   "send uploads and downloads to the mount URL's host and port"),
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
        use_http = bool(self.options["http"])
        scheme = "http" if use_http else "https"
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = parts.port or (80 if use_http else 443)
        prefix = tuple(unquote(p) for p in parts.path.split("/") if p)
        if len(prefix) > 2:
            raise errors.BadURL(f"a mount URL names at most /LIBRARY/ITEM: {url!r}")
        self.item_type = str(self.options["item_type"])
        self.datastore = str(self.options["datastore"])
        self._rest = RestClient(
            f"{scheme}://{host}:{port}",
            unquote(parts.username or ""),
            self.options,
            float(self.options["call_timeout"]),
            self.describe,
        )
        self._catalog = Catalog(self._rest, prefix)
        self._transfers = Transfers(
            self._rest,
            self._catalog,
            prepare_timeout=float(self.options["prepare_timeout"]),
            keepalive_interval=float(self.options["keepalive"]),
            spool_dir=str(self.options["spool_dir"]) or tempfile.gettempdir(),
            item_type=self.item_type,
            transfer_origin=self._rest.base_url if self.options["transfers_via_url"] else None,
        )
        self._item_locks: dict[tuple[str, str], trio.Lock] = {}
        self._rebuild_locks: dict[str, trio.Lock] = {}
        """Library name -> held while one of its items is rebuilt (:meth:`_rebuild`)."""
        self._rebuilds: dict[str, int] = {}
        """Library name -> rebuilds started."""

    @property
    def session_id(self) -> str | None:
        """The REST session id in use (tests expire it server-side)."""
        return self._rest.session_id

    @property
    def remove_kills_session(self) -> bool | None:
        """None until known; True on vcsim, whose update-session ``remove`` deletes the
        session instead of the file (package docstring)."""
        return self._transfers.remove_kills_session

    @property
    def range_honoured(self) -> bool | None:
        """None until a ranged GET was made; then whether the server replied 206."""
        return self._transfers.range_honoured

    async def connect(self) -> None:
        """Log in, then check that the mounted library (or item) exists.

        Raises PermissionDenied (no password, wrong credentials), Unavailable (host
        unreachable), AssetFSError (TLS verification), NotFound (unknown library)."""
        await self._rest.open()
        await super().connect()

    async def close(self) -> None:
        """Log out and close connections; never raises."""
        await self._rest.close()

    @contextlib.asynccontextmanager
    async def _lock(self, library_id: str, *names: str) -> AsyncIterator[None]:
        """Hold the locks that order changes to the items ``names`` of a library (an
        upload, a removal, a rename), taken in name order; the caller looks the item up
        again once they are held. They are keyed by name, not by item id: a rebuild on
        vcsim (package docstring) replaces the item by a new one, and a change that had
        waited on the old id's lock then ran beside one holding the new id's, so that both
        rebuilt the same item and the second failed to delete it (HTTP 404, an upload given
        up: the model test, tests/test_model.py, saw it on vcsim)."""
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(names)):
                lock = self._item_locks.setdefault((library_id, name), trio.Lock())
                await stack.enter_async_context(lock)
            yield

    async def _rebuild(self, library: dict[str, Any], item: dict[str, Any], path: str,
                       drop: str, add: tuple[str, str, int] | None) -> None:
        """``Transfers.rebuild`` (vcsim), with the library's lookups held off meanwhile
        (:meth:`_steady`)."""
        name = self._catalog.where(path).names[0]
        lock = self._rebuild_locks.setdefault(name, trio.Lock())
        async with lock:
            self._rebuilds[name] = self._rebuilds.get(name, 0) + 1
            await self._transfers.rebuild(library, item, path, drop, add)

    async def _steady(self, path: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()`` (a lookup or listing at ``path``) while no item of its library is
        being rebuilt: a rebuild (vcsim, package docstring) deletes the item before its copy
        takes the name, and a lookup in between found no item, a listing of the library
        missed it (ENOENT on a folder that exists, seen by the model test,
        tests/test_model.py). A lookup that fails with NotFound while a rebuild started is
        made once more after it. Raises what ``read`` raises."""
        names = self._catalog.where(path).names
        if not names:
            return await read()
        lock = self._rebuild_locks.setdefault(names[0], trio.Lock())
        if lock.locked():
            async with lock:
                pass
        before = self._rebuilds.get(names[0], 0)
        try:
            return await read()
        except errors.NotFound:
            if self._rebuilds.get(names[0], 0) == before and not lock.locked():
                raise
        async with lock:
            pass
        return await read()

    async def stat(self, path: str) -> Entry:
        """The entry at ``path``. Raises NotFound."""
        return await self._steady(path, lambda: self._stat(path))

    async def _stat(self, path: str) -> Entry:
        where = self._catalog.where(path)
        if where.depth == 0:
            await self._rest.call("GET", f"{CONTENT_API}/library", "list libraries")
            return root_entry()
        library, item, file = await self._catalog.resolve(where)
        if where.depth == 1 and library is not None:
            entry = library_entry(where.names[0], library)
        elif where.depth == 2 and item is not None:
            entry = item_entry(item)
        elif item is not None and file is not None:
            entry = file_entry(item, file)
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
        return await self._steady(path, lambda: self._list(path))

    async def _list(self, path: str) -> builtins.list[Entry]:
        where = self._catalog.where(path)
        if where.depth == 3:
            await self._catalog.resolve(where)
            raise errors.NotADirectory(url=self.describe(path))
        if where.depth == 0:
            return [library_entry(n, i) for n, i in (await self._catalog.library_infos()).items()]
        library, item, _ = await self._catalog.resolve(where)
        if where.depth == 1 and library is not None:
            return [item_entry(i) for i in await self._catalog.items(library, path)]
        assert item is not None
        return [file_entry(item, f) for f in (await self._catalog.files(item, path)).values()]

    async def _file_for_read(self, path: str) -> tuple[dict[str, Any], File]:
        return await self._steady(path, lambda: self._find_file(path))

    async def _find_file(self, path: str) -> tuple[dict[str, Any], File]:
        where = self._catalog.where(path)
        if where.depth < 3:
            await self._catalog.resolve(where)
            raise errors.IsADirectory(url=self.describe(path))
        _, item, file = await self._catalog.resolve(where)
        assert item is not None and file is not None
        return item, file

    async def open_stream(self, path: str) -> AsyncGenerator[bytes, None]:
        """The whole file as chunks of up to 1 MiB from offset 0, through one download
        session (deleted afterwards, also on cancellation or ``aclose``).

        Drain it promptly: vcsim answers nothing else while the transfer is open.
        Raises NotFound, IsADirectory, TimedOut (not PREPARED in time), Unavailable (cut
        short: fewer bytes than the listed size)."""
        item, file = await self._file_for_read(path)
        stream = self._transfers.download(str(item["id"]), file.name, path, file.size)
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                yield chunk

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``: one download session and one GET with Range.
        On a server that ignores Range (vcsim) the bytes before ``offset`` are read and
        dropped, so prefer :meth:`open_stream` there (``capabilities.read_mode`` is ``STREAM``).
        """
        item, file = await self._file_for_read(path)
        if size <= 0 or offset >= file.size:
            return b""
        size = min(size, file.size - offset)
        stream = self._transfers.download(str(item["id"]), file.name, path, None, offset, size)
        async with contextlib.aclosing(stream) as chunks:
            return b"".join([chunk async for chunk in chunks])

    def check_create(self, path: str, kind: Kind) -> None:
        """Files live only in items (``/LIBRARY/ITEM/FILE``) and folders only above them
        (libraries, items): anything else raises NotSupported (EOPNOTSUPP). No I/O."""
        depth = len(self._catalog.prefix) + len([p for p in path.split("/") if p])
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
        rebuilds the item (package docstring). Returns the new entry.

        Raises NotSupported for a path that is not inside an item (files live in items),
        NotFound (no such library/item), PermissionDenied, Unavailable, TimedOut."""
        where = self._catalog.where(path)
        if where.depth != 3:
            raise errors.NotSupported(
                "files live inside items: /LIBRARY/ITEM/FILE", url=self.describe(path)
            )
        library, item, _ = await self._steady(
            path, lambda: self._catalog.resolve(Where(path, where.names[:2])))
        assert library is not None and item is not None
        name = where.names[2]
        transfers = self._transfers
        async with self._lock(str(library["id"]), where.names[1]):
            item = await self._catalog.item(library, where.names[1], path)
            existing = await self._catalog.files(item, path)
            if name in existing and transfers.remove_kills_session:
                await self._rebuild(library, item, path, name, (name, source, size))
            else:
                sid = await transfers.open_update(str(item["id"]), path)
                try:
                    if name in existing and not await transfers.remove_in_session(sid, name, path):
                        sid = ""  # vcsim dropped it
                        await self._rebuild(library, item, path, name, (name, source, size))
                    else:
                        await transfers.add_file(sid, name, source, size, path)
                except BaseException:
                    if sid:
                        await transfers.abort(sid, path)
                    raise
                if sid:
                    await transfers.complete(sid, path)
            item = await self._catalog.item(library, str(item["name"]), path)
            file = (await self._catalog.files(item, path)).get(name)
            if file is None:
                raise errors.AssetFSError(
                    f"uploaded {name!r} is not listed afterwards", url=self.describe(path)
                )
            return file_entry(item, file)

    async def mkdir(self, path: str) -> Entry:
        """Create a library (top level; needs ``-o datastore=ID`` or an existing library
        whose storage backing is reused) or an item (type ``-o item_type``).

        Raises AlreadyExists, NotFound (no such library), NotSupported (inside an item:
        items hold files only)."""
        where = self._catalog.where(path)
        if where.depth == 0:
            raise errors.AlreadyExists(url=self.describe(path))
        if where.depth == 3:
            await self._catalog.resolve(Where(path, where.names[:2]))
            raise errors.NotSupported(
                "an item holds files only; folders inside an item are not possible",
                url=self.describe(path),
            )
        if where.depth == 1:
            return await self._mkdir_library(where)
        library = await self._catalog.library(where.names[0], path)
        name = where.names[1]
        if name.startswith(REBUILD_PREFIX):
            raise errors.InvalidName(
                f"names starting with {REBUILD_PREFIX} are reserved", url=self.describe(path)
            )
        iid = await self._catalog.create_item(str(library["id"]), name, self.item_type, "", path)
        self._catalog.remember_item(str(library["id"]), name, iid)
        return item_entry(await self._catalog.item(library, name, path))

    async def _mkdir_library(self, where: Where) -> Entry:
        path, name = where.path, where.names[0]
        libraries = await self._catalog.library_infos()
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
        await self._rest.call(
            "POST",
            f"{CONTENT_API}/local-library",
            "create library",
            path,
            body={"create_spec": {"name": name, "type": "LOCAL", "storage_backings": backings}},
        )
        return library_entry(name, await self._catalog.library(name, path))

    async def remove(self, path: str, kind: Kind) -> None:
        """Delete a file (update session ``remove``; on vcsim an item rebuild), or an empty
        item or library. Raises NotFound, DirectoryNotEmpty, IsADirectory/NotADirectory
        when ``kind`` does not match, PermissionDenied (the mounted root)."""
        where = self._catalog.where(path)
        if path == "/" or where.depth == 0:
            raise errors.PermissionDenied(
                "the mounted root cannot be removed", url=self.describe(path)
            )
        library, item, _ = await self._steady(path, lambda: self._catalog.resolve(where))
        is_file = where.depth == 3
        if kind is Kind.FILE and not is_file:
            raise errors.IsADirectory(url=self.describe(path))
        if kind is Kind.DIR and is_file:
            raise errors.NotADirectory(url=self.describe(path))
        assert library is not None
        if where.depth == 1:
            if await self._catalog.items(library, path):
                raise errors.DirectoryNotEmpty(url=self.describe(path))
            await self._rest.call(
                "DELETE", f"{CONTENT_API}/library/id:{library['id']}", "delete library", path
            )
            self._catalog.forget_library(where.names[0])
            return
        assert item is not None
        async with self._lock(str(library["id"]), where.names[1]):
            item = await self._catalog.item(library, where.names[1], path)
            files = await self._catalog.files(item, path)
            if where.depth == 2:
                if files:
                    raise errors.DirectoryNotEmpty(url=self.describe(path))
                await self._rest.call(
                    "DELETE", f"{CONTENT_API}/library/item/id:{item['id']}", "delete item", path
                )
                self._catalog.forget_item(str(library["id"]), where.names[1])
                return
            name = where.names[2]
            if name not in files:
                raise errors.NotFound(url=self.describe(path))
            removed = False
            if not self._transfers.remove_kills_session:
                sid = await self._transfers.open_update(str(item["id"]), path)
                try:
                    removed = await self._transfers.remove_in_session(sid, name, path)
                except BaseException:
                    await self._transfers.abort(sid, path)
                    raise
                if removed:
                    await self._transfers.complete(sid, path)
            if not removed:
                await self._rebuild(library, item, path, name, None)

    async def rename(self, old: str, new: str) -> None:
        """Rename an item within its library, or a library (``PATCH ... update_spec``).

        Raises NotSupported for a file (the API cannot rename a file inside an item),
        CrossLibrary (EXDEV) for an item moved to another library, AlreadyExists when
        ``new`` is taken, NotFound."""
        src, dst = self._catalog.where(old), self._catalog.where(new)
        if src.depth != dst.depth or src.depth == 0:
            raise errors.NotSupported(
                "only items and libraries can be renamed", url=self.describe(old)
            )
        library, item, _ = await self._steady(old, lambda: self._catalog.resolve(src))
        assert library is not None
        if src.depth == 3:
            raise errors.NotSupported(
                "the content library API cannot rename a file inside an item; copy it",
                url=self.describe(old),
            )
        if src.names == dst.names:
            return
        if src.depth == 1:
            if dst.names[0] in await self._catalog.library_infos():
                raise errors.AlreadyExists(url=self.describe(new))
            await self._rest.call(
                "PATCH",
                f"{CONTENT_API}/library/id:{library['id']}",
                "rename library",
                old,
                body={"update_spec": {"name": dst.names[0]}},
            )
            self._catalog.forget_library(src.names[0])
            return
        assert item is not None
        if src.names[0] != dst.names[0]:
            raise CrossLibrary(
                "items cannot move between libraries in place", url=self.describe(old)
            )
        if dst.names[1].startswith(REBUILD_PREFIX):
            raise errors.InvalidName(url=self.describe(new))
        lid = str(library["id"])
        async with self._lock(lid, src.names[1], dst.names[1]):
            try:
                await self._catalog.item(library, dst.names[1], new)
            except errors.NotFound:
                pass
            else:
                raise errors.AlreadyExists(url=self.describe(new))
            item = await self._catalog.item(library, src.names[1], old)
            await self._rest.call(
                "PATCH",
                f"{CONTENT_API}/library/item/id:{item['id']}",
                "rename item",
                old,
                body={"update_spec": {"name": dst.names[1]}},
            )
            self._catalog.forget_item(lid, src.names[1])
            self._catalog.remember_item(lid, dst.names[1], str(item["id"]))

    async def control(self, path: str, action: str, value: bytes) -> None:
        """``user.assetfs.description`` on a library or item sets its description.
        Raises NotSupported for other actions or for files."""
        where = self._catalog.where(path)
        if action != "description" or where.depth not in (1, 2):
            raise errors.NotSupported(f"action {action!r}", url=self.describe(path))
        library, item, _ = await self._catalog.resolve(where)
        text = value.decode("utf-8", "replace")
        if item is not None:
            endpoint = f"{CONTENT_API}/library/item/id:{item['id']}"
        elif library is not None:
            endpoint = f"{CONTENT_API}/library/id:{library['id']}"
        else:
            return
        await self._rest.call(
            "PATCH", endpoint, "set description", path,
            body={"update_spec": {"description": text}},
        )
