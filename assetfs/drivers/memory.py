"""``memory://``: the reference driver. A complete store held in the daemon's memory.

It is the driver new authors copy (docs/drivers.md) and the store the core's tests use when
they need no real peer: writable, ranged reads, push events (or polling), and switches for
the faults real stores have: latency per call, injected errors, hangs, delayed or dropped
events, names the store rejects, changes made behind the mount's back.

URL: ``memory://NAME/[PATH]``. Every driver of one process that names the same ``NAME``
shares one store, as clients of one server do (the conformance suite makes a second client
that way); ``PATH`` is the mounted folder and must exist (``seed`` can provide it).

Options (``-o``; all can also be changed on a running mount, see :meth:`MemoryDriver.control`):

- ``latency=SECONDS``: every call waits this long first;
- ``events=push|poll``: push change events (default), or let the base class poll;
- ``event_delay=SECONDS``: deliver each push event this late; ``drop_events``: drop them;
- ``hang=OP,OP``: calls of these operations never answer (``*``: all); ``OP`` is a driver
  method name: stat, list, read, write, mkdir, remove, rename, control, xattr;
- ``fail=OP:KIND:COUNT``: the next COUNT calls of OP raise KIND (``unavailable``,
  ``notfound``, ``denied``, ``invalid``, ``nospace``, ``timeout``); several joined by ``+``;
- ``reject=REGEX``: names that match are refused (InvalidName, EINVAL), as stores that
  forbid some characters do;
- ``seed=DIR``: at connect, a store still empty is filled with a copy of local folder DIR;
- ``dump=DIR``: at close, the store is written to local folder DIR (replacing it), so a test
  can compare what reached the store after the daemon exits.

Errors are raised in one place, :meth:`Store.check`, which is this driver's translation
point (a real driver turns wire errors into :mod:`assetfs.errors` types there).
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

import trio

from .. import errors
from .. import options as opt
from .base import (
    Capabilities,
    ChangeEvent,
    ChangeKind,
    Driver,
    Entry,
    EventSink,
    Kind,
    ReadMode,
    split,
)

OPERATIONS = ("stat", "list", "read", "write", "mkdir", "remove", "rename", "control", "xattr")
"""The calls the fault switches name."""
_FAULTS: dict[str, type[errors.AssetFSError]] = {
    "unavailable": errors.Unavailable,
    "timeout": errors.TimedOut,
    "notfound": errors.NotFound,
    "denied": errors.PermissionDenied,
    "invalid": errors.InvalidName,
    "nospace": errors.NoSpace,
}
SWITCH = "memory."
"""Control actions named ``user.assetfs.memory.<switch>`` set switches (never faulted)."""


@dataclass
class Node:
    """One item of the store: a file's bytes or a folder; ``version`` changes with content."""

    kind: Kind
    data: bytearray = field(default_factory=bytearray)
    mtime_ns: int = field(default_factory=time.time_ns)
    version: str = ""
    checkpoints: list[str] = field(default_factory=list)


@dataclass
class Faults:
    """The switches of one store, shared by every driver of it."""

    latency: float = 0.0
    hang: set[str] = field(default_factory=set)
    fail: dict[str, tuple[str, int]] = field(default_factory=dict)
    reject: re.Pattern[str] | None = None
    event_delay: float = 0.0
    drop_events: bool = False

    def set(self, name: str, value: str) -> None:
        """Set switch ``name`` from its option text. Raises BadOption."""
        try:
            if name == "latency":
                self.latency = opt.seconds(value)
            elif name == "hang":
                ops = {o for o in value.split(",") if o}
                unknown = ops - {*OPERATIONS, "*"}
                if unknown:
                    raise ValueError(f"unknown operation {sorted(unknown)[0]}")
                self.hang = set(OPERATIONS) if "*" in ops else ops
            elif name == "fail":
                self.fail = {}
                for rule in filter(None, value.split("+")):
                    op, kind, count = rule.split(":")
                    if op not in OPERATIONS or kind not in _FAULTS:
                        raise ValueError(f"bad rule {rule} (OP:KIND:COUNT)")
                    self.fail[op] = (kind, int(count))
            elif name == "reject":
                self.reject = re.compile(value) if value else None
            elif name == "event_delay":
                self.event_delay = opt.seconds(value)
            elif name == "drop_events":
                self.drop_events = opt.boolean(value)
            else:
                raise ValueError("no such switch")
        except (ValueError, re.error) as exc:
            raise errors.BadOption(f"memory switch {name}={value}: {exc}") from None


class Store:
    """A tree of :class:`Node` s keyed by absolute path, plus the listeners of its changes."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node(Kind.DIR)}
        self.faults = Faults()
        self.listeners: list[Callable[[ChangeEvent], None]] = []
        self._versions = itertools.count(1)

    def bump(self, node: Node) -> None:
        """Give ``node`` a new version and modification time."""
        node.version = str(next(self._versions))
        node.mtime_ns = time.time_ns()

    def changed(self, kind: ChangeKind, path: str) -> None:
        """Tell every listener that ``path`` changed."""
        event = ChangeEvent(kind, path, self.entry(path) if path in self.nodes else None)
        for listener in list(self.listeners):
            listener(event)

    def entry(self, path: str) -> Entry:
        """The :class:`Entry` of an existing node."""
        node = self.nodes[path]
        name = split(path)[1] or "/"
        if node.kind is Kind.DIR:
            return Entry(name, Kind.DIR, 0, node.mtime_ns, node.version, 0o755)
        return Entry(name, Kind.FILE, len(node.data), node.mtime_ns, node.version, 0o644)

    def children(self, folder: str) -> Iterator[str]:
        """Paths of the direct children of ``folder``."""
        prefix = folder.rstrip("/") + "/"
        for path in self.nodes:
            if path.startswith(prefix) and path != "/" and "/" not in path[len(prefix):]:
                yield path

    def node(self, path: str, kind: Kind | None = None) -> Node:
        """The node at ``path``; NotFound, or NotADirectory / IsADirectory when ``kind``
        is given and differs (the translation point of this driver)."""
        node = self.nodes.get(path)
        if node is None:
            parent = split(path)[0]
            if path != "/" and parent in self.nodes and self.nodes[parent].kind is Kind.FILE:
                raise errors.NotADirectory(url=path)
            raise errors.NotFound(url=path)
        if kind is Kind.DIR and node.kind is not Kind.DIR:
            raise errors.NotADirectory(url=path)
        if kind is Kind.FILE and node.kind is not Kind.FILE:
            raise errors.IsADirectory(url=path)
        return node

    def check_name(self, path: str, url: str) -> None:
        """Raise InvalidName when ``reject`` matches the name of ``path`` (``url`` names
        it in the error)."""
        name = split(path)[1]
        if self.faults.reject is not None and self.faults.reject.search(name):
            raise errors.InvalidName(f"the store rejects the name {name!r}", url=url)

    def new_name(self, path: str) -> None:
        """Check that ``path`` can be made: the parent is a folder and the store accepts
        the name (:meth:`check_name`)."""
        self.check_name(path, path)
        self.node(split(path)[0], Kind.DIR)

    def put(self, path: str, data: bytes) -> None:
        """Create or replace the file at ``path`` (parent must exist)."""
        node = self.nodes.get(path)
        if node is not None and node.kind is Kind.DIR:
            raise errors.IsADirectory(url=path)
        created = node is None
        if node is None:
            self.new_name(path)
            node = self.nodes[path] = Node(Kind.FILE)
        node.data = bytearray(data)
        self.bump(node)
        self.changed(ChangeKind.CREATED if created else ChangeKind.UPDATED, path)

    def make_dir(self, path: str) -> None:
        """Create the folder ``path``."""
        if path in self.nodes:
            raise errors.AlreadyExists(url=path)
        self.new_name(path)
        node = self.nodes[path] = Node(Kind.DIR)
        self.bump(node)
        self.changed(ChangeKind.CREATED, path)

    def delete(self, path: str, kind: Kind) -> None:
        """Remove the file, or the empty folder, at ``path``."""
        self.node(path, kind)
        if path == "/":
            raise errors.PermissionDenied("the root cannot be removed", url=path)
        if kind is Kind.DIR and next(self.children(path), None) is not None:
            raise errors.DirectoryNotEmpty(url=path)
        del self.nodes[path]
        self.changed(ChangeKind.DELETED, path)

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new`` as POSIX rename(2) does: a file replaces a file, a
        folder replaces an empty folder."""
        source = self.node(old)
        if old == new:
            return
        if source.kind is Kind.DIR and new.startswith(old + "/"):
            raise errors.InvalidName("cannot move a folder into itself", url=new)
        target = self.nodes.get(new)
        if target is None:
            self.new_name(new)
        elif target.kind is not source.kind:
            raise (errors.NotADirectory if source.kind is Kind.DIR else errors.IsADirectory)(
                url=new)
        elif target.kind is Kind.DIR and next(self.children(new), None) is not None:
            raise errors.DirectoryNotEmpty(url=new)
        moving = [p for p in self.nodes if p == old or p.startswith(old + "/")]
        for path in moving:
            self.nodes[new + path[len(old):]] = self.nodes.pop(path)
        self.changed(ChangeKind.DELETED, old)
        self.changed(ChangeKind.CREATED, new)

    def load(self, folder: Path) -> None:
        """Fill the store with a copy of local ``folder`` (``seed``)."""
        for local in sorted(folder.rglob("*")):
            path = "/" + local.relative_to(folder).as_posix()
            node = Node(Kind.DIR) if local.is_dir() else Node(Kind.FILE,
                                                            bytearray(local.read_bytes()))
            self.bump(node)
            self.nodes[path] = node

    def save(self, folder: Path) -> None:
        """Write the store to local ``folder``, replacing what was there (``dump``)."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path, node in sorted(self.nodes.items()):
            local = folder / path.lstrip("/") if path != "/" else folder
            if node.kind is Kind.DIR:
                local.mkdir(exist_ok=True)
            else:
                local.write_bytes(bytes(node.data))


STORES: dict[str, Store] = {}
"""The stores of this process, by the URL's NAME."""


class MemoryDriver(Driver):
    """A writable in-memory store with ranged reads and push events (module docstring)."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    capabilities: Capabilities = Capabilities(
        writable=True, read_mode=ReadMode.RANGED, push_events=True, checkpoints=True
    )
    lazy_xattrs: tuple[str, ...] = ("checkpoints",)
    declared_options: ClassVar[tuple[opt.Option, ...]] = (
        opt.Option("latency", opt.seconds, 0.0, "every call waits this long first"),
        opt.Option("events", opt.choice("push", "poll"), "push", "push events or polling"),
        opt.Option("event_delay", opt.seconds, 0.0, "deliver each push event this late"),
        opt.Option("drop_events", opt.boolean, False, "drop every push event"),
        opt.Option("hang", opt.text, "", "operations whose calls never answer (OP,OP or *)"),
        opt.Option("fail", opt.text, "", "inject errors: OP:KIND:COUNT[+...]"),
        opt.Option("reject", opt.text, "", "names matching this regex are refused"),
        opt.Option("seed", opt.text, "", "fill an empty store from this local folder"),
        opt.Option("dump", opt.text, "", "write the store to this local folder at close"),
    )

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        if not parts.netloc:
            raise errors.BadURL(f"expected memory://NAME/[PATH]: {url!r}")
        self.root = unquote(parts.path).rstrip("/")
        self.store = STORES.setdefault(parts.netloc, Store())
        for name in ("latency", "event_delay", "hang", "fail", "reject", "drop_events"):
            if name in options:
                self.store.faults.set(name, options[name])
        if self.options["events"] == "poll":
            self.capabilities = Capabilities(writable=True, read_mode=ReadMode.RANGED,
                                             checkpoints=True)

    def _abs(self, path: str) -> str:
        """The store path of driver path ``path``."""
        if not self.root:
            return path
        return self.root if path == "/" else self.root + path

    def _rel(self, path: str) -> str:
        """The driver path of store path ``path`` (under the mounted folder)."""
        return path[len(self.root):] or "/" if self.root else path

    def _mine(self, path: str) -> bool:
        """Whether store path ``path`` is the mounted folder or under it."""
        return not self.root or path == self.root or path.startswith(self.root + "/")

    async def _enter(self, op: str) -> None:
        """Apply the switches to one call of ``op``: latency, hang, injected error."""
        faults = self.store.faults
        if faults.latency:
            await trio.sleep(faults.latency)
        if op in faults.hang:
            await trio.sleep_forever()
        rule = faults.fail.get(op)
        if rule is not None:
            kind, count = rule
            if count <= 1:
                del faults.fail[op]
            else:
                faults.fail[op] = (kind, count - 1)
            raise _FAULTS[kind](f"injected {kind} on {op}", url=self.url)
        await trio.lowlevel.checkpoint()

    async def connect(self) -> None:
        """Seed an empty store (``seed``), then check the mounted folder."""
        if self.options["seed"] and len(self.store.nodes) == 1:
            self.store.load(Path(self.options["seed"]))
        await super().connect()

    async def close(self) -> None:
        """Write the store out (``dump``)."""
        if self.options["dump"]:
            self.store.save(Path(self.options["dump"]))

    async def stat(self, path: str) -> Entry:
        await self._enter("stat")
        self.store.node(self._abs(path))
        return self.store.entry(self._abs(path))

    async def list(self, path: str) -> list[Entry]:
        await self._enter("list")
        folder = self._abs(path)
        self.store.node(folder, Kind.DIR)
        return [self.store.entry(p) for p in self.store.children(folder)]

    async def read(self, path: str, offset: int, size: int) -> bytes:
        await self._enter("read")
        return bytes(self.store.node(self._abs(path), Kind.FILE).data[offset:offset + size])

    async def write(self, path: str, source: str, size: int) -> Entry:
        await self._enter("write")
        data = await trio.to_thread.run_sync(Path(source).read_bytes)
        self.store.put(self._abs(path), data[:size])
        return self.store.entry(self._abs(path))

    def check_create(self, path: str, kind: Kind) -> None:
        self.store.check_name(path, self.describe(path))

    async def mkdir(self, path: str) -> Entry:
        await self._enter("mkdir")
        self.store.make_dir(self._abs(path))
        return self.store.entry(self._abs(path))

    async def remove(self, path: str, kind: Kind) -> None:
        await self._enter("remove")
        self.store.delete(self._abs(path), kind)

    async def rename(self, old: str, new: str) -> None:
        await self._enter("rename")
        self.store.move(self._abs(old), self._abs(new))

    async def control(self, path: str, action: str, value: bytes) -> None:
        """``memory.<switch>`` sets a switch of the store (module docstring), never
        faulted; ``memory.put`` / ``memory.mkdir`` / ``memory.remove`` change the store
        behind the mount's back (value ``PATH`` or, for put, ``PATH\\nBYTES``, PATH
        relative to the mounted folder); ``checkpoint`` records a checkpoint comment."""
        if action.startswith(SWITCH):
            self._switch(action[len(SWITCH):], value)
            return
        await self._enter("control")
        if action != "checkpoint":
            raise errors.NotSupported(f"action {action!r}", url=self.describe(path))
        self.store.node(self._abs(path)).checkpoints.append(value.decode(errors="replace"))

    def _switch(self, name: str, value: bytes) -> None:
        text = value.decode()
        if name in ("put", "mkdir", "remove"):
            target, _, data = text.partition("\n")
            where = self._abs(target if target.startswith("/") else "/" + target)
            if name == "put":
                self.store.put(where, data.encode())
            elif name == "mkdir":
                self.store.make_dir(where)
            else:
                self.store.delete(where, self.store.node(where).kind)
            return
        self.store.faults.set(name, text)

    async def xattr(self, path: str, key: str) -> bytes | None:
        await self._enter("xattr")
        if key != "checkpoints":
            return None
        return "\n".join(self.store.node(self._abs(path)).checkpoints).encode()

    async def run_events(self, sink: EventSink) -> None:
        """Push the store's changes under watched folders into ``sink`` (after
        ``event_delay``, or not at all with ``drop_events``); poll with ``events=poll``."""
        if not self.capabilities.push_events:
            await super().run_events(sink)
            return
        send, receive = trio.open_memory_channel[tuple[float, ChangeEvent]](100_000)

        def listener(event: ChangeEvent) -> None:
            faults = self.store.faults
            if faults.drop_events or not self._mine(event.path):
                return
            path = self._rel(event.path)
            if split(path)[0] not in self._watched and path not in self._watched:
                return
            send.send_nowait((trio.current_time() + faults.event_delay,
                              ChangeEvent(event.kind, path, event.entry)))

        self.store.listeners.append(listener)
        try:
            self.events_ready.set()
            async for due, event in receive:
                await trio.sleep_until(due)
                await sink.send(event)
        finally:
            self.store.listeners.remove(listener)

    async def open_stream(self, path: str) -> AsyncGenerator[bytes, None]:
        """The whole file in 1 MiB chunks (the contract's streamed read, for tests of the
        stream fetcher)."""
        await self._enter("read")
        data = bytes(self.store.node(self._abs(path), Kind.FILE).data)
        for offset in range(0, len(data), 1 << 20):
            yield data[offset:offset + (1 << 20)]


def free_name() -> str:
    """A store NAME no driver of this process uses yet (tests)."""
    return next(f"store{n}" for n in itertools.count() if f"store{n}" not in STORES)

