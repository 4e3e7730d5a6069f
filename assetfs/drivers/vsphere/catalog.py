"""Where a driver path lives on a vSphere Content Library: libraries, items and files looked
up by name through the REST API, with the name -> id caches that spare a search per call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ... import bounded, errors
from .rest import CONTENT_API, REBUILD_PREFIX, RestClient

LIST_PARALLEL = 8
"""Lookups in flight for one listing (lists carry ids only: one GET per child)."""


@dataclass(frozen=True)
class Where:
    """A driver path resolved to server names: ``names`` is (library, item, file)[:depth]."""

    path: str
    names: tuple[str, ...]

    @property
    def depth(self) -> int:
        """0 all libraries, 1 a library, 2 an item, 3 a file."""
        return len(self.names)


@dataclass(frozen=True)
class File:
    """One file of an item as listed (the last entry of its name), with the entry count."""

    name: str
    size: int
    version: str
    checksum: str
    cached: bool | None
    copies: int


class Catalog:
    """Name lookups over ``rest`` below the mount's ``prefix`` (``(library,)``,
    ``(library, item)`` or ``()``), caching library and item ids by name. Every lookup checks
    a cached id against the server, so a rename or delete made elsewhere is seen.
    """

    def __init__(self, rest: RestClient, prefix: tuple[str, ...]) -> None:
        self._rest = rest
        self.prefix = prefix
        self._library_ids: dict[str, str] = {}
        self._item_ids: dict[tuple[str, str], str] = {}

    def remember_item(self, library_id: str, name: str, item_id: str) -> None:
        """Item ``name`` of that library now has id ``item_id`` (created, renamed, rebuilt)."""
        self._item_ids[(library_id, name)] = item_id

    def forget_item(self, library_id: str, name: str) -> None:
        """Item ``name`` of that library is gone or about to change id."""
        self._item_ids.pop((library_id, name), None)

    def forget_library(self, name: str) -> None:
        """The library shown as ``name`` is gone or renamed."""
        self._library_ids.pop(name, None)

    def where(self, path: str) -> Where:
        """``path`` resolved to server names below the mount's prefix (no I/O). Raises
        NotFound below a file."""
        names = self.prefix + tuple(p for p in path.split("/") if p)
        if len(names) > 3:
            raise errors.NotFound("below a file", url=self._rest.describe(path))
        return Where(path, names)

    async def library_infos(self) -> dict[str, dict[str, Any]]:
        """All libraries by shown name (duplicates as ``NAME~<id8>``, oldest plain)."""
        ids = await self._rest.call("GET", f"{CONTENT_API}/library", "list libraries") or []

        def getter(lid: str) -> Callable[[], Awaitable[Any]]:
            return lambda: self._get_or_none(f"{CONTENT_API}/library/id:{lid}", "get library")

        infos = [i for i in await bounded.gather([getter(lid) for lid in ids], LIST_PARALLEL) if i]
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
        """The ``value`` of a GET, None when the object is gone (a listing race)."""
        try:
            return await self._rest.call("GET", endpoint, what)
        except errors.NotFound:
            return None

    async def library(self, name: str, path: str) -> dict[str, Any]:
        """The library shown as ``name``. Raises NotFound."""
        lid = self._library_ids.get(name)
        if lid is not None:
            info = await self._get_or_none(f"{CONTENT_API}/library/id:{lid}", "get library")
            if info and name in (info.get("name"), f"{info.get('name')}~{lid[:8]}"):
                return dict(info)
        info = (await self.library_infos()).get(name)
        if info is None:
            raise errors.NotFound(
                f"no content library named {name!r}", url=self._rest.describe(path)
            )
        return dict(info)

    async def item(self, library: dict[str, Any], name: str, path: str) -> dict[str, Any]:
        """The item ``name`` of ``library``. Raises NotFound."""
        lid = str(library["id"])
        if name.startswith(REBUILD_PREFIX):
            raise errors.NotFound(url=self._rest.describe(path))
        iid = self._item_ids.get((lid, name))
        if iid is not None:
            info = await self._get_or_none(f"{CONTENT_API}/library/item/id:{iid}", "get item")
            if info and info.get("name") == name and info.get("library_id") == lid:
                return dict(info)
            self._item_ids.pop((lid, name), None)
        ids = (
            await self._rest.call(
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
            f"no item {name!r} in library {library.get('name')!r}", url=self._rest.describe(path)
        )

    async def items(self, library: dict[str, Any], path: str) -> list[dict[str, Any]]:
        """The items of ``library`` (REST ``get`` infos), without scratch rebuild items."""
        lid = str(library["id"])
        ids = (
            await self._rest.call(
                "GET", f"{CONTENT_API}/library/item", "list items", path, params={"library_id": lid}
            )
            or []
        )

        def getter(iid: str) -> Callable[[], Awaitable[Any]]:
            return lambda: self._get_or_none(f"{CONTENT_API}/library/item/id:{iid}", "get item")

        infos = [i for i in await bounded.gather([getter(i) for i in ids], LIST_PARALLEL) if i]
        infos = [i for i in infos if not str(i.get("name", "")).startswith(REBUILD_PREFIX)]
        for info in infos:
            self._item_ids[(lid, str(info.get("name")))] = str(info["id"])
        return infos

    async def files(self, item: dict[str, Any], path: str) -> dict[str, File]:
        """The files of ``item`` by name; for a name listed twice (vcsim), the last entry."""
        listed = (
            await self._rest.call(
                "GET",
                f"{CONTENT_API}/library/item/file",
                "list files",
                path,
                params={"library_item_id": str(item["id"])},
            )
            or []
        )
        files: dict[str, File] = {}
        for raw in listed:
            name = str(raw.get("name") or "")
            if not name:
                continue
            checksum = raw.get("checksum_info") or {}
            copies = files[name].copies + 1 if name in files else 1
            files[name] = File(
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

    async def resolve(
        self, where: Where
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, File | None]:
        """(library, item, file) infos down to ``where``'s depth. Raises NotFound."""
        library = item = None
        file = None
        if where.depth >= 1:
            library = await self.library(where.names[0], where.path)
        if where.depth >= 2 and library is not None:
            item = await self.item(library, where.names[1], where.path)
        if where.depth == 3 and item is not None:
            file = (await self.files(item, where.path)).get(where.names[2])
            if file is None:
                raise errors.NotFound(
                    f"no file {where.names[2]!r} in item {where.names[1]!r}",
                    url=self._rest.describe(where.path),
                )
        return library, item, file

    async def create_item(
        self, library_id: str, name: str, item_type: str, description: str, path: str
    ) -> str:
        """Create an item of ``item_type`` in library ``library_id``; return its id. Raises
        AlreadyExists (the name is taken), NotFound (no such library)."""
        spec: dict[str, Any] = {"library_id": library_id, "name": name, "type": item_type}
        if description:
            spec["description"] = description
        iid = await self._rest.call(
            "POST", f"{CONTENT_API}/library/item", "create item", path, body={"create_spec": spec}
        )
        return str(iid)
