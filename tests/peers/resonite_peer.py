"""A Resonite-IO-compatible gRPC server (grpcio) for tests, and the helpers that run it.

It serves ``resonite_io.v1.Inventory``, ``Connection`` and ``Info`` (the messages generated
from the project's ``.proto`` files, assetfs/drivers/resonite/protocol.py) on a Unix socket,
with the status codes and path quirks of docs/backends/resonite.md:

- paths are never normalised: ``Listing.path`` echoes the request and each entry's path is
  the request path + ``/`` + name (``/Inventory/`` lists ``/Inventory//Avatars``); empty
  segments are dropped when resolving, ``.``/``..`` are plain names, the first segment must
  be exactly ``Inventory``; a name is resolved by splitting on ``/``, so an item whose name
  holds a ``/`` is listed but cannot be reached by any path (as in the game);
- INVALID_ARGUMENT for blank paths (FetchThumbnail checks this before anything else),
  relative paths, another root, and mutating the root; NOT_FOUND for missing paths, List of
  an item, no thumbnail, bad link URIs; ALREADY_EXISTS for MakeDir onto a name;
  FAILED_PRECONDITION when not signed in, for Spawn without a focused world, and for Copy or
  Remove of a folder without ``recursive``; UNAVAILABLE when the bridge is switched off;
  INTERNAL "Inventory bridge faulted: ..." for an injected fault.

Choices where upstream is silent (each documented in docs/backends/resonite.md too):

- List order is creation order, and a name shared by several records resolves to the first
  of them in that order;
- MakeDir with a missing parent: NOT_FOUND (nothing is created);
- Copy/Move onto an existing name: like upstream, a second record with that name;
- Copy of a folder without ``recursive``: FAILED_PRECONDITION before anything is created
  (upstream leaves an empty copy behind);
- Move of a folder into itself, Remove/Copy/Move of the root: INVALID_ARGUMENT;
- Move keeps the record id and the modification time; Copy makes new ids and stamps now;
- Spawn of a folder: FAILED_PRECONDITION;
- Ping fails with FAILED_PRECONDITION while ``--not-ready-for`` seconds have not passed since
  start (upstream never fails Ping; the official client retries on that code).

The socket is ``$DIR/resonite-<pid>.sock`` (``--socket-dir``), as the mod names it, or
``--socket PATH``; sockets of dead processes in the folder are deleted at start, as the mod
does. With ``--state FILE`` the inventory is loaded from and saved to FILE, so a restarted
peer (a new pid, a new socket) carries on with the same records, as the game does with its
cloud inventory. Switches change at run time through one JSON object per line on stdin
(``{"set": {"signed_in": false}}``; ``{"get": "spawned"}``), each answered by one JSON line
on stdout.

No rpc makes an item (docs/backends/resonite.md), so the game's own side of that, a user
saving an object or taking a new thumbnail, is the control command ``{"put": {"path":
"/Inventory/F/NAME", "thumbnail": BASE64, "content_type": "image/png"}}``: it makes an
object record ``NAME`` with that thumbnail (and the missing folders above it), or, when
the folder already holds a record of that name, gives the first of them the new thumbnail
and a later modification time, as the game does with a changed record; the reply is the
record id. Deleting goes through the ordinary Remove rpc.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resonite_seed import DIRECTORY, LINK, OBJECT, OWNER, Node, record_id, seed

from assetfs.drivers.resonite import protocol

pb = protocol.inventory_pb2


class Fail(Exception):
    """An rpc outcome other than OK: ``code`` and the status detail ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Switches:
    """Game state the tests change: who is signed in, whether a world has focus, whether
    the inventory bridge is up, an injected fault on paths under ``fault_prefix``."""

    signed_in: bool = True
    focused_world: bool = True
    bridge: bool = True
    ready_at: float = 0.0
    fault_prefix: str = ""
    fault_code: str = "INTERNAL"
    spawned: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)


def _segments(path: str) -> list[str]:
    if not path.strip():
        raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "path must not be empty.")
    if not path.startswith("/"):
        raise Fail(grpc.StatusCode.INVALID_ARGUMENT, f"path must start with '/': {path}")
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != "Inventory":
        raise Fail(grpc.StatusCode.INVALID_ARGUMENT,
                   f"path must start with /Inventory: {path}")
    return parts[1:]


def _missing(path: str) -> Fail:
    return Fail(grpc.StatusCode.NOT_FOUND, f"No inventory entry at {path}.")


class Inventory:
    """The records and the rpc implementations; every call holds one lock."""

    def __init__(self, root: Node, switches: Switches, state: Path | None) -> None:
        self.root = root
        self.switches = switches
        self.state = state
        self.lock = threading.Lock()

    # --- resolution ---------------------------------------------------------------
    def _target(self, link: Node) -> Node:
        prefix = f"resrec:///{OWNER}/"
        if not link.asset_uri.startswith(prefix):
            raise Fail(grpc.StatusCode.NOT_FOUND, f"Bad link URI {link.asset_uri!r}.")
        try:
            target = self._walk("/" + link.asset_uri[len(prefix):], follow_last=True)
        except Fail:
            raise Fail(grpc.StatusCode.NOT_FOUND,
                       f"Link target {link.asset_uri} does not exist.") from None
        if not target.is_folder:
            raise Fail(grpc.StatusCode.NOT_FOUND, f"Link {link.name} is not a folder link.")
        return target

    def _folder_of(self, node: Node) -> Node:
        return self._target(node) if node.kind == LINK else node

    def _walk(self, path: str, follow_last: bool = False) -> Node:
        node = self.root
        parts = _segments(path)
        for i, name in enumerate(parts):
            if not node.is_folder:
                raise _missing(path)
            node = self._folder_of(node)
            found = next((c for c in node.children if c.name == name), None)
            if found is None:
                raise _missing(path)
            node = found
            if follow_last and i == len(parts) - 1 and node.kind == LINK:
                node = self._target(node)
        return node

    def _parent(self, path: str, what: str) -> tuple[Node, str]:
        parts = _segments(path)
        if not parts:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, f"cannot {what} the root /Inventory.")
        parent = self._walk("/Inventory/" + "/".join(parts[:-1]))
        if not parent.is_folder:
            raise _missing(path)
        return self._folder_of(parent), parts[-1]

    def _contains(self, outer: Node, inner: Node) -> bool:
        return outer is inner or any(self._contains(c, inner) for c in outer.children)

    # --- checks shared by the rpcs ------------------------------------------------------
    def _gate(self, rpc: str, *paths: str) -> None:
        self.switches.calls[rpc] = self.switches.calls.get(rpc, 0) + 1
        if not self.switches.bridge:
            raise Fail(grpc.StatusCode.UNAVAILABLE, "Inventory bridge is not configured.")
        if not self.switches.signed_in:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, "Not signed in to Resonite.")
        prefix = self.switches.fault_prefix
        if prefix and any(p.startswith(prefix) for p in paths):
            code = grpc.StatusCode[self.switches.fault_code]
            detail = ("Inventory bridge faulted: injected fault" if code is grpc.StatusCode.INTERNAL
                      else "Cloud request failed: injected fault")
            raise Fail(code, detail)

    def _save(self) -> None:
        if self.state is not None:
            scratch = self.state.with_suffix(".tmp")
            scratch.write_text(json.dumps(_dump(self.root)))
            os.replace(scratch, self.state)

    # --- rpcs -------------------------------------------------------------------------
    def List(self, request: Any) -> Any:
        """Children of a folder or link (link: its target's), paths built unnormalised."""
        self._gate("List", request.path)
        node = self._walk(request.path)
        if not node.is_folder:
            raise Fail(grpc.StatusCode.NOT_FOUND, f"{request.path} is not a directory.")
        entries = [
            pb.InventoryEntry(
                name=c.name, path=request.path + "/" + c.name, kind=c.kind,
                record_id=c.record_id, asset_uri=c.asset_uri, is_public=c.is_public,
                last_modified_unix_nanos=c.mtime_ns,
            )
            for c in self._folder_of(node).children
        ]
        return pb.InventoryListing(path=request.path, entries=entries)

    def MakeDir(self, request: Any) -> Any:
        """A new folder; the parent must exist (peer choice)."""
        self._gate("MakeDir", request.path)
        parent, name = self._parent(request.path, "create")
        if any(c.name == name for c in parent.children):
            raise Fail(grpc.StatusCode.ALREADY_EXISTS, f"{request.path} already exists.")
        node = Node(name, DIRECTORY, record_id(), mtime_ns=time.time_ns())
        parent.children.append(node)
        self._save()
        return pb.InventoryMutationResult(path=request.path, record_id=node.record_id)

    def Copy(self, request: Any) -> Any:
        """A copy with new ids (folders only with ``recursive``), appended to the target folder."""
        self._gate("Copy", request.source_path, request.destination_path)
        source = self._walk(request.source_path)
        if source is self.root:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "cannot copy the root /Inventory.")
        if source.is_folder and not request.recursive:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION,
                       f"{request.source_path} is a directory; pass recursive (cp -r).")
        parent, name = self._parent(request.destination_path, "copy onto")
        copy = _copied(source, name, time.time_ns())
        parent.children.append(copy)
        self._save()
        return pb.InventoryMutationResult(path=request.destination_path,
                                          record_id=copy.record_id)

    def Move(self, request: Any) -> Any:
        """The record moved and renamed, id and modification time kept."""
        self._gate("Move", request.source_path, request.destination_path)
        source = self._walk(request.source_path)
        if source is self.root:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "cannot move the root /Inventory.")
        old_parent, _ = self._parent(request.source_path, "move")
        parent, name = self._parent(request.destination_path, "move onto")
        if self._contains(source, parent):
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT,
                       f"cannot move {request.source_path} into itself.")
        old_parent.children.remove(source)
        source.name = name
        parent.children.append(source)
        self._save()
        return pb.InventoryMutationResult(path=request.destination_path,
                                          record_id=source.record_id)

    def Remove(self, request: Any) -> Any:
        """The record removed (folders only with ``recursive``)."""
        self._gate("Remove", request.path)
        node = self._walk(request.path)
        if node is self.root:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "cannot remove the root /Inventory.")
        if node.is_folder and not request.recursive:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION,
                       f"{request.path} is a directory; pass recursive (rm -r).")
        parent, _ = self._parent(request.path, "remove")
        parent.children.remove(node)
        self._save()
        return pb.InventoryMutationResult(path=request.path, record_id=node.record_id)

    def Spawn(self, request: Any) -> Any:
        """Records the spawn; needs a focused world."""
        self._gate("Spawn", request.path)
        node = self._walk(request.path)
        if node.is_folder:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION,
                       f"{request.path} is a directory; only items can be spawned.")
        if not self.switches.focused_world:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, "No focused world to spawn into.")
        self.switches.spawned.append(request.path)
        return pb.InventorySpawnResult(source_path=request.path,
                                       spawned_slot_id=f"ID{uuid.uuid4().hex[:8].upper()}",
                                       spawned_slot_name=node.name)

    def FetchThumbnail(self, request: Any) -> Any:
        """The stored image bytes and content type."""
        if not request.path.strip():
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "path must not be empty.")
        self._gate("FetchThumbnail", request.path)
        node = self._walk(request.path)
        if node.thumbnail is None:
            raise Fail(grpc.StatusCode.NOT_FOUND, f"{request.path} has no thumbnail.")
        return pb.InventoryThumbnailResponse(data=node.thumbnail,
                                             content_type=node.content_type)

    def Ping(self, request: Any) -> Any:
        """Echo and server time, FAILED_PRECONDITION while not ready."""
        if time.monotonic() < self.switches.ready_at:
            raise Fail(grpc.StatusCode.FAILED_PRECONDITION, "Resonite is still starting.")
        return protocol.connection_pb2.PingResponse(message=request.message,
                                                    server_unix_nanos=time.time_ns())

    def GetServerInfo(self, request: Any) -> Any:
        """Versions, platform and this process's pid."""
        return protocol.info_pb2.ServerInfo(
            mod_version="0.7.0+assetfs-peer", engine_version="2026.1.1.0",
            platform=protocol.info_pb2.SERVER_PLATFORM_LINUX, is_wine=False,
            resonite_pid=os.getpid(), renderer_pid=0,
        )

    # --- the game's side: changes no rpc can make ---------------------------------------
    def put_item(self, path: str, thumbnail: bytes, content_type: str) -> Node:
        """Make the object record at ``path`` (and the missing folders above it) with this
        thumbnail, or give the first record of that name the thumbnail and a later
        modification time. Raises Fail (the path checks of the rpcs)."""
        parts = _segments(path)
        if not parts:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "cannot put the root /Inventory.")
        folder = self.root
        for name in parts[:-1]:
            found = next((c for c in folder.children if c.name == name), None)
            if found is None:
                found = Node(name, DIRECTORY, record_id(), mtime_ns=time.time_ns())
                folder.children.append(found)
            if not found.is_folder:
                raise _missing(path)
            folder = self._folder_of(found)
        node = next((c for c in folder.children if c.name == parts[-1]), None)
        now = time.time_ns()
        if node is None:
            node = Node(parts[-1], OBJECT, record_id(),
                        asset_uri=f"resdb:///{uuid.uuid4().hex}.brson", mtime_ns=now)
            folder.children.append(node)
        elif node.is_folder:
            raise Fail(grpc.StatusCode.ALREADY_EXISTS, f"{path} is a directory.")
        node.thumbnail, node.content_type = thumbnail, content_type
        node.mtime_ns = max(now, node.mtime_ns + 1)
        self._save()
        return node

    def served(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        """The grpc handler of rpc ``name``: runs it under the lock, :class:`Fail` ->
        status."""
        method = getattr(self, name)

        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            """One rpc under the lock; a :class:`Fail` becomes its status."""
            try:
                with self.lock:
                    return method(request)
            except Fail as fail:
                context.abort(fail.code, fail.message)

        return serve


def _copied(node: Node, name: str, now: int) -> Node:
    return Node(name, node.kind, record_id() if node.record_id or node.kind != DIRECTORY else "",
                node.asset_uri, node.is_public, now, node.thumbnail, node.content_type,
                [_copied(c, c.name, now) for c in node.children])


def _dump(node: Node) -> dict[str, Any]:
    data = asdict(node)
    thumb = node.thumbnail
    data["thumbnail"] = None if thumb is None else base64.b64encode(thumb).decode()
    data["children"] = [_dump(c) for c in node.children]
    return data


def _load(data: dict[str, Any]) -> Node:
    thumb = data["thumbnail"]
    return Node(**{**data, "thumbnail": None if thumb is None else base64.b64decode(thumb),
                   "children": [_load(c) for c in data["children"]]})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_stale(folder: Path) -> None:
    for sock in folder.glob("resonite-*.sock"):
        pid = sock.name[len("resonite-"):-len(".sock")]
        if pid.isdigit() and not _alive(int(pid)):
            sock.unlink(missing_ok=True)


def serve(args: argparse.Namespace) -> None:
    """Run the peer until stdin closes or SIGTERM; print ``ready <socket>`` once listening."""
    if args.socket:
        sock = Path(args.socket)
    else:
        folder = Path(args.socket_dir)
        folder.mkdir(parents=True, exist_ok=True)
        _clear_stale(folder)
        sock = folder / f"resonite-{os.getpid()}.sock"
    state = Path(args.state) if args.state else None
    saved = state is not None and state.exists()
    root = _load(json.loads(state.read_text())) if saved and state else seed(tuple(args.bulk))
    switches = Switches(signed_in=not args.not_signed_in, focused_world=not args.no_world,
                        ready_at=time.monotonic() + args.not_ready_for)
    inventory = Inventory(root, switches, state)
    if state is not None and not state.exists():
        inventory._save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    for full, service in (("resonite_io.v1.Inventory", protocol.INVENTORY),
                          ("resonite_io.v1.Connection", protocol.CONNECTION),
                          ("resonite_io.v1.Info", protocol.INFO)):
        server.add_generic_rpc_handlers(
            [protocol.handler(full, service, {n: inventory.served(n) for n in service})])
    sock.unlink(missing_ok=True)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(f"ready {sock}", flush=True)
    threading.Thread(target=_control, args=(inventory, stopping), daemon=True).start()
    stopping.wait()
    server.stop(grace=0.5).wait()
    sock.unlink(missing_ok=True)


def _control(inventory: Inventory, stopping: threading.Event) -> None:
    for line in sys.stdin:
        command = json.loads(line)
        with inventory.lock:
            for key, value in command.get("set", {}).items():
                if key == "ready_in":
                    inventory.switches.ready_at = time.monotonic() + float(value)
                else:
                    setattr(inventory.switches, key, value)
            wanted = command.get("get")
            reply: Any = getattr(inventory.switches, wanted) if wanted else "ok"
            put = command.get("put")
            if put is not None:
                try:
                    reply = inventory.put_item(put["path"], base64.b64decode(put["thumbnail"]),
                                               put.get("content_type", "")).record_id
                except Fail as fail:
                    reply = {"error": fail.code.name, "message": fail.message}
        print(json.dumps(reply), flush=True)
    stopping.set()


# --- helpers for tests ----------------------------------------------------------------


class Direct:
    """A plain grpcio client of the peer, independent of the driver under test: how tests
    check "through the server's own List". Calls raise ``grpc.RpcError``."""

    def __init__(self, socket: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix:{socket}", options=[
            ("grpc.max_receive_message_length", -1)])
        self.inventory = protocol.client(self.channel, protocol.INVENTORY)

    def list(self, path: str) -> dict[str, Any]:
        """The entries of folder ``path`` by name (the first of a repeated name)."""
        listing = self.inventory["List"](pb.InventoryListRequest(path=path), timeout=30)
        found: dict[str, Any] = {}
        for entry in listing.entries:
            found.setdefault(entry.name, entry)
        return found

    def names(self, path: str) -> list[str]:
        """The names under ``path`` in listing order, repeats included."""
        listing = self.inventory["List"](pb.InventoryListRequest(path=path), timeout=30)
        return [e.name for e in listing.entries]

    def make_dir(self, path: str) -> None:
        """MakeDir ``path``."""
        self.inventory["MakeDir"](pb.InventoryMakeDirRequest(path=path), timeout=30)

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove the record at ``path``."""
        self.inventory["Remove"](pb.InventoryRemoveRequest(path=path, recursive=recursive),
                                 timeout=30)

    def thumbnail(self, path: str) -> tuple[bytes, str]:
        """(data, content_type) of the item at ``path``."""
        reply = self.inventory["FetchThumbnail"](pb.InventoryThumbnailRequest(path=path),
                                                 timeout=30)
        return reply.data, reply.content_type

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


@dataclass
class Peer:
    """A running peer process. ``socket_dir`` holds its ``resonite-<pid>.sock``."""

    socket_dir: Path
    state: Path
    extra: list[str]
    proc: subprocess.Popen[str] | None = None
    socket: Path = Path()

    def start(self) -> None:
        """Start the process and wait for its ``ready`` line."""
        argv = [sys.executable, str(Path(__file__).resolve()), "--socket-dir",
                str(self.socket_dir), "--state", str(self.state), *self.extra]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"resonite peer did not start: {line!r}")
        self.socket = Path(line.split(" ", 1)[1].strip())

    def stop(self) -> None:
        """SIGTERM the process by pid (SIGKILL if it lingers)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def restart(self) -> None:
        """The game restarting: the process ends, a new one (new pid, new socket) carries
        on with the saved inventory."""
        self.stop()
        self.start()

    def control(self, **command: Any) -> Any:
        """Send one control command (``set={...}`` or ``get=NAME``); return the reply."""
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def set(self, **switches: Any) -> None:
        """Change switches: ``signed_in``, ``focused_world``, ``bridge``, ``ready_in``
        (seconds of Ping failing from now), ``fault_prefix``, ``fault_code``."""
        self.control(set=switches)

    def put_item(self, path: str, thumbnail: bytes, content_type: str = "image/png") -> str:
        """Make or replace the item at server path ``path`` as the game would (the peer's
        ``put`` command); return its record id. Raises RuntimeError with the status the
        peer refused with."""
        reply = self.control(put={"path": path, "thumbnail": base64.b64encode(thumbnail)
                                  .decode(), "content_type": content_type})
        if isinstance(reply, dict):
            raise RuntimeError(f"put {path}: {reply['error']} {reply['message']}")
        return str(reply)

    def calls(self, rpc: str) -> int:
        """How many times ``rpc`` was called on this process."""
        return int(self.control(get="calls").get(rpc, 0))

    @contextlib.contextmanager
    def direct(self) -> Iterator[Direct]:
        """A :class:`Direct` client of the current socket."""
        client = Direct(self.socket)
        try:
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def running(folder: Path, *extra: str) -> Iterator[Peer]:
    """A peer with its socket folder and state file in ``folder``; stopped on exit."""
    peer = Peer(folder / "sockets", folder / "inventory.json", list(extra))
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def main() -> None:
    """``resonite_peer.py --socket-dir DIR | --socket PATH [--state FILE] [--bulk N]...
    [--not-signed-in] [--no-world] [--not-ready-for SECONDS]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket-dir")
    where.add_argument("--socket")
    parser.add_argument("--state")
    parser.add_argument("--bulk", type=int, action="append", default=[])
    parser.add_argument("--not-signed-in", action="store_true")
    parser.add_argument("--no-world", action="store_true")
    parser.add_argument("--not-ready-for", type=float, default=0.0)
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
