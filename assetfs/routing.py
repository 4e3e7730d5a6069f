"""One namespace from a store and a local folder: the driver the VFS sees with
``-o trash=local``.

:class:`Routed` takes the driver contract and sends each call to the local folder
(drivers/localdir.py) when its path is local (``is_local(path)``: the mount's ``.Trash-$uid``
and what is under it, vfs/trash.py), else to the store; a listing of ``/`` is the store's
with the local names put in (a store entry of such a name stays unseen). So the metadata
cache, the block cache and the write-back serve the local trash like any other folder,
and no call for a local path ever reaches the store. Change events come from the store
only; those about local paths are dropped. A rename between the two sides is no single
call of either: the VFS moves the content itself (vfs/crossing.py); here it is refused
(EXDEV).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Callable

import trio

from . import errors
from .drivers.base import (
    Capabilities,
    ChangeEvent,
    ChangeKind,
    Driver,
    Entry,
    EventSink,
    Kind,
    LocalRange,
    join,
)


class Routed(Driver):
    """``store`` with ``local`` (a driver over a local folder) serving the paths for which
    ``is_local(path)`` holds; those are at the top level or under it. The store's read
    mode, capabilities and state are the mount's; ``local`` must answer every read mode."""

    def __init__(self, store: Driver, local: Driver, is_local: Callable[[str], bool]) -> None:
        # not Driver.__init__: options, watches and event readiness are the store's
        self.url = store.url
        self.store = store
        self.local = local
        self.is_local = is_local

    def _to(self, path: str) -> Driver:
        return self.local if self.is_local(path) else self.store

    # --- what the store is --------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """The store's."""
        return self.store.capabilities

    @property
    def lazy_xattrs(self) -> tuple[str, ...]:  # type: ignore[override]
        """The store's (the local folder has none)."""
        return self.store.lazy_xattrs

    @property
    def poll_interval(self) -> float:  # type: ignore[override]
        """The store's."""
        return self.store.poll_interval

    @property
    def events_ready(self) -> trio.Event:  # type: ignore[override]
        """The store's."""
        return self.store.events_ready

    def describe(self, path: str) -> str:
        return self._to(path).describe(path)

    def status(self) -> dict[str, object]:
        return self.store.status()

    async def connect(self) -> None:
        await self.local.connect()
        await self.store.connect()

    async def close(self) -> None:
        await self.store.close()

    # --- calls --------------------------------------------------------------------------
    async def stat(self, path: str) -> Entry:
        return await self._to(path).stat(path)

    def known_entry(self, path: str) -> Entry | None:
        return self._to(path).known_entry(path)

    async def list(self, path: str) -> list[Entry]:
        entries = await self._to(path).list(path)
        return entries if path != "/" else await self.list_root(entries)

    async def list_root(self, store_entries: builtins.list[Entry]) -> builtins.list[Entry]:
        """The top of the mount from the store's listing of ``/``: its local names are the
        local folder's (present or not there), never the store's."""
        mine = [e for e in await self.local.list("/") if self.is_local(join("/", e.name))]
        return [e for e in store_entries if not self.is_local(join("/", e.name))] + mine

    async def read(self, path: str, offset: int, size: int) -> bytes:
        return await self._to(path).read(path, offset, size)

    async def read_into(self, path: str, offset: int, size: int, fd: int) -> int:
        return await self._to(path).read_into(path, offset, size, fd)

    async def local_range(self, path: str) -> LocalRange:
        return await self._to(path).local_range(path)

    def known_local_range(self, path: str) -> LocalRange | None:
        return self._to(path).known_local_range(path)

    async def open_stream(self, path: str) -> AsyncGenerator[bytes | memoryview, None]:
        async for chunk in self._to(path).open_stream(path):
            yield chunk

    async def write(self, path: str, source: str, size: int) -> Entry:
        return await self._to(path).write(path, source, size)

    def check_create(self, path: str, kind: Kind) -> None:
        self._to(path).check_create(path, kind)

    def check_write(self, path: str) -> None:
        self._to(path).check_write(path)

    def uploads_last(self, path: str) -> bool:
        return self._to(path).uploads_last(path)

    def appends_only(self, path: str) -> bool:
        return self._to(path).appends_only(path)

    async def mkdir(self, path: str) -> Entry:
        return await self._to(path).mkdir(path)

    async def remove(self, path: str, kind: Kind) -> None:
        await self._to(path).remove(path, kind)

    async def rename(self, old: str, new: str) -> None:
        if self.is_local(old) != self.is_local(new):
            raise errors.CrossDevice("a rename between the store and the local trash",
                              url=self.describe(old))
        await self._to(old).rename(old, new)

    async def control(self, path: str, action: str, value: bytes) -> None:
        await self._to(path).control(path, action, value)

    async def xattr(self, path: str, key: str) -> bytes | None:
        return await self._to(path).xattr(path, key)

    # --- change events: the store's ------------------------------------------------------
    def watch(self, folder: str) -> None:
        if not self.is_local(folder):
            self.store.watch(folder)

    def unwatch(self, folder: str) -> None:
        if not self.is_local(folder):
            self.store.unwatch(folder)

    @property
    def watched(self) -> builtins.list[str]:
        """The store's watched folders."""
        return self.store.watched

    async def run_events(self, sink: EventSink) -> None:
        """The store's events, less those about local paths (a ``LISTED`` listing of ``/``
        has the local names of :meth:`list_root`), until cancelled."""
        send, receive = trio.open_memory_channel[ChangeEvent](0)

        async def source() -> None:
            async with send:
                await self.store.run_events(send)

        async with trio.open_nursery() as nursery, sink:
            nursery.start_soon(source)
            async for event in receive:
                if self.is_local(event.path):
                    continue
                if event.kind is ChangeKind.LISTED and event.path == "/":
                    event = ChangeEvent(event.kind, "/", event.entry,
                                        tuple(await self.list_root([*event.listing])))
                await sink.send(event)
