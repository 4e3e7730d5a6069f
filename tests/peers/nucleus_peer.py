"""A Storage-API-compatible gRPC server for ``omniverse://`` mounts through omni.client's
Storage API provider (docs/backends/nucleus.md), with the faults tests need.

Run as ``python tests/peers/nucleus_peer.py ROOT --grpc-port P --http-port Q``; it serves:
- on ``127.0.0.1:P`` (gRPC, plain HTTP/2): the capabilities, file-object, file-folder and
  versioning services of the Storage API and the notification consumer (non-durable events),
  with stubs generated from the installed library (tests/peers/nucleus_stubs.py);
- on ``127.0.0.1:Q`` (HTTP/1.1): ``GET /api/v1/services`` (the discovery answer that makes the
  library use both gRPC services), ``POST /control`` (JSON switches, below), ``GET /stats``.

The tree is the folder ROOT on disk, so a test can look at it and change it directly: every
change in ROOT, whoever made it, becomes an event (an inotify watch on every folder), unless
``quiet`` is on (a change behind the client's back). A file's version is its inode, size
and mtime.
Checkpoints (versioning service): each state of a file written through the server or seen
changing on disk is one entry of its history.

Switches (``POST /control`` with any subset; ``null`` clears):
``latency`` seconds added to every call; ``fail`` ``{"code": "UNAVAILABLE", "count": N,
"methods": [..]}`` aborts the next N calls (optionally of those methods only); ``hang``
true makes every call wait until it is turned off or the client gives up; ``token`` the
bearer every call must carry (UNAUTHENTICATED otherwise); ``event_delay`` seconds before an
event is sent; ``drop_events`` true drops them; ``quiet`` true makes changes on disk produce
no event; ``reset_stats`` true zeroes the call counts. ``GET /stats`` answers
``{"calls": {method: count}, "peak": {method: most calls in progress at once}}`` (a call is
in progress from its arrival, injected latency and hang included, to its answer).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import grpc
import inotify_simple
from google.protobuf import timestamp_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nucleus_stubs

STUBS = nucleus_stubs.load()
cap, cap_grpc = STUBS["capabilities"]
fo, _ = STUBS["fileobject"]
fos, fos_grpc = STUBS["fileobject_service"]
ff, ff_grpc = STUBS["filefolder"]
ver, ver_grpc = STUBS["versioning"]
ev, ev_grpc = STUBS["events"]
md, md_grpc = STUBS["metadata"]

CHUNK = 1 << 20
SERVICES = [("fileobject", "FileObjectService"), ("filefolder", "FileFolderService"),
            ("versioning", "VersioningService"), ("metadata", "MetadataService")]
"""What ``ListServices`` announces."""
DISCOVERED = ["storage", "versioning", "metadata", "notification-consumer"]
"""The service types of the discovery answer: the library uses versioning, metadata and
events only when discovery names them."""
TRACE = bool(os.environ.get("NUCLEUS_PEER_TRACE"))


def trace(*parts: Any) -> None:
    """One line on stderr per request when NUCLEUS_PEER_TRACE is set."""
    if TRACE:
        print("peer:", *parts, file=sys.stderr, flush=True)


class Switches:
    """The fault switches and per-method call counts, shared by every handler thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        """Calls of each method in progress now, and the most ever in progress at once."""
        self.changed = threading.Condition(self.lock)

    @contextlib.contextmanager
    def running(self, method: str) -> Iterator[None]:
        """Count one call of ``method`` as in progress for the ``with`` block."""
        with self.lock:
            self.active[method] = self.active.get(method, 0) + 1
            self.peak[method] = max(self.peak.get(method, 0), self.active[method])
        try:
            yield
        finally:
            with self.lock:
                self.active[method] -= 1

    def update(self, values: dict[str, Any]) -> None:
        with self.lock:
            for key, value in values.items():
                if value is None:
                    self.values.pop(key, None)
                else:
                    self.values[key] = value
            self.changed.notify_all()

    def get(self, key: str, default: Any = None) -> Any:
        with self.lock:
            return self.values.get(key, default)

    def gate(self, method: str, context: grpc.ServicerContext) -> None:
        """What every call goes through first: count, hang, latency, token, injected fault."""
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            while self.values.get("hang") and context.is_active():
                self.changed.wait(0.2)
            latency = float(self.values.get("latency") or 0)
            token = self.values.get("token")
            fault = self.values.get("fail")
            if fault and (not fault.get("methods") or method in fault["methods"]):
                fault["count"] = int(fault.get("count", 1)) - 1
                if fault["count"] <= 0:
                    del self.values["fail"]
            else:
                fault = None
        if latency:
            time.sleep(latency)
        if token is not None:
            sent = dict(context.invocation_metadata()).get("authorization", "")
            if sent != f"Bearer {token}":
                trace(method, "UNAUTHENTICATED, got", repr(sent[:16]))
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        if fault:
            context.abort(getattr(grpc.StatusCode, fault.get("code", "UNAVAILABLE")),
                          "injected fault")


class Tree:
    """The served tree: ``omniverse://HOST/rel/path`` <-> ROOT/rel/path, with versions."""

    def __init__(self, root: Path, host: str) -> None:
        self.root = root
        self.prefix = f"omniverse://{host}/"
        self.lock = threading.Lock()
        self.history: dict[str, list[tuple[str, int]]] = {}
        """Local path -> (version, mtime ns) of each state written: the checkpoints."""

    def path(self, address: str) -> Path:
        """The local path of a resource or folder address (NOT_FOUND-worthy: ValueError)."""
        if not address.startswith(self.prefix):
            raise ValueError(address)
        rel = unquote(address[len(self.prefix):].split("?", 1)[0]).strip("/")
        if any(part in ("..", ".") for part in rel.split("/")):
            raise ValueError(address)
        return self.root / rel if rel else self.root

    def address(self, path: Path, folder: bool = False) -> str:
        rel = path.relative_to(self.root).as_posix()
        rel = "" if rel == "." else rel
        tail = "/" if folder and rel else ""
        return self.prefix + quote(rel, safe="/") + tail

    def version(self, path: Path) -> str:
        """What changes when the content changes: inode, size and mtime (ns)."""
        st = path.stat()
        return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"

    def record(self, path: Path) -> None:
        """Add the current state of file ``path`` to its version history (a checkpoint)."""
        with contextlib.suppress(OSError):
            version, mtime_ns = self.version(path), path.stat().st_mtime_ns
            with self.lock:
                history = self.history.setdefault(str(path), [])
                if not history or history[-1][0] != version:
                    history.append((version, mtime_ns))

    def identity(self, path: Path) -> fo.ResourceIdentity:
        return fo.ResourceIdentity(
            encoded_identity=json.dumps([self.address(path), self.version(path)]))

    def from_identity(self, identity: fo.ResourceIdentity) -> Path:
        address, _version = json.loads(identity.encoded_identity)
        return self.path(address)

    def metadata(self, path: Path) -> fo.Metadata:
        st = path.stat()
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(st.st_mtime_ns)
        size = 0 if path.is_dir() else st.st_size
        return fo.Metadata(data_object_size=size, last_modified_timestamp=stamp)

    def info(self, path: Path) -> fo.ResourceInfo:
        return fo.ResourceInfo(resource_identity=self.identity(path), metadata=self.metadata(path))


@contextlib.contextmanager
def _served(service: Any, name: str, request: Any, context: grpc.ServicerContext
            ) -> Iterator[None]:
    """One call of ``name`` while it runs: counted, gated (:meth:`Switches.gate`), traced;
    a missing path (or a folder address that names a file) becomes NOT_FOUND, an existing
    one ALREADY_EXISTS, another OSError INTERNAL."""
    try:
        with service.switches.running(name):
            service.switches.gate(name, context)
            trace(name, "(stream)" if hasattr(request, "__next__")
                  else str(request).replace("\n", " ")[:300])
            yield
    except (FileNotFoundError, ValueError) as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, f"not found: {exc}")
    except FileExistsError as exc:
        context.abort(grpc.StatusCode.ALREADY_EXISTS, f"exists: {exc}")
    except NotADirectoryError as exc:  # a folder is a prefix: a file has none
        context.abort(grpc.StatusCode.NOT_FOUND, f"no folder: {exc}")
    except OSError as exc:
        context.abort(grpc.StatusCode.INTERNAL, str(exc))


def gated(method: Callable[..., Any]) -> Callable[..., Any]:
    """A handler run inside :func:`_served` (answers and streamed answers alike)."""
    name = method.__name__

    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _served(self, name, request, context):
            return method(self, request, context)

    def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with _served(self, name, request, context):
            yield from method(self, request, context)

    wrapped = streaming if inspect.isgeneratorfunction(method) else handler
    wrapped.__name__ = name
    return wrapped


class Service:
    """Shared state of every servicer."""

    def __init__(self, tree: Tree, switches: Switches) -> None:
        self.tree = tree
        self.switches = switches


class Capabilities(Service, cap_grpc.CapabilitiesServiceServicer):
    @gated
    def ListServices(self, request: Any, context: Any) -> Any:
        return cap.ListServicesResponse(services=[
            cap.ServiceEntry(service_name=name, service_versions=["v1alpha"])
            for name, service in SERVICES])

    @gated
    def ListTopLevelAddresses(self, request: Any, context: Any) -> Any:
        return cap.ListTopLevelAddressesResponse(
            items=[cap.TopLevelAddressEntry(top_level_address=self.tree.prefix)])

    @gated
    def ListRoutes(self, request: Any, context: Any) -> Any:
        return cap.ListRoutesResponse()


class FileObjects(Service, fos_grpc.FileObjectServiceServicer):
    @gated
    def Stat(self, request: Any, context: Any) -> Any:
        path = self.tree.path(request.resource_address)
        if not path.is_file():  # a folder is no resource (the library then lists it)
            raise FileNotFoundError(request.resource_address)
        return fos.StatResponse(resource_info=self.tree.info(path))

    @gated
    def Enumerate(self, request: Any, context: Any) -> Iterator[Any]:
        path = self.tree.path(request.resource_address)
        items = [fo.AddressInfo(resource_address=self.tree.address(p),
                                metadata=self.tree.metadata(p))
                 for p in sorted(path.iterdir()) if p.is_file()]
        yield fos.EnumerateResponse(items=items)

    def _read(self, path: Path) -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    @gated
    def Read(self, request: Any, context: Any) -> Iterator[Any]:
        path = self.tree.from_identity(request.resource_identity)
        yield fos.ReadResponse(metadata=self.tree.metadata(path))
        for chunk in self._read(path):
            yield fos.ReadResponse(chunk=fo.Chunk(chunk=chunk))

    @gated
    def ReadFromAddress(self, request: Any, context: Any) -> Iterator[Any]:
        path = self.tree.path(request.resource_address)
        if not path.is_file():
            raise FileNotFoundError(request.resource_address)
        yield fos.ReadFromAddressResponse(resource_info=self.tree.info(path))
        for chunk in self._read(path):
            yield fos.ReadFromAddressResponse(chunk=fo.Chunk(chunk=chunk))

    @gated
    def FetchWriteTypeInfo(self, request: Any, context: Any) -> Any:
        body = fos.WriteTypeForSizeInterval(minimum_data_object_size=0,
                                            maximum_data_object_size=1 << 62,
                                            preferred_upload_method=fos.UPLOAD_PREFERENCE_BODY)
        return fos.FetchWriteTypeInfoResponse(write_type_intervals=[body])

    @gated
    def Write(self, requests: Any, context: Any) -> Iterator[Any]:
        first = next(requests)
        path = self.tree.path(first.params.destination_resource_address)
        if path.is_dir():
            raise IsADirectoryError(str(path))
        # The destination is checked (and its folders made) before the chunks are accepted:
        # an answer that ends the call while the library is still sending chunks sometimes
        # aborts the client process (docs/backends/nucleus.md, Writes).
        path.parent.mkdir(parents=True, exist_ok=True)
        yield fos.WriteResponse(write_chunks_accepted=fos.WriteChunksAccepted())
        partial = path.with_name(f".{path.name}.upload-{threading.get_ident()}")
        try:
            with open(partial, "wb") as f:
                for request in requests:
                    f.write(request.chunk.chunk)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        self.tree.record(path)
        yield fos.WriteResponse(resource_info=self.tree.info(path))

    @gated
    def Delete(self, request: Any, context: Any) -> Any:
        path = self.tree.path(request.resource_address)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        return fos.DeleteResponse()

    @gated
    def Copy(self, request: Any, context: Any) -> Any:
        source = self.tree.from_identity(request.source_resource_identity)
        target = self.tree.path(request.destination_resource_address)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        self.tree.record(target)
        return fos.CopyResponse(resource_identity=self.tree.identity(target))

    @gated
    def Move(self, request: Any, context: Any) -> Any:
        source = self.tree.path(request.source_resource_address)
        target = self.tree.path(request.destination_resource_address)
        if not source.exists():
            raise FileNotFoundError(request.source_resource_address)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        self.tree.record(target)
        return fos.MoveResponse(resource_identity=self.tree.identity(target))


class FileFolders(Service, ff_grpc.FileFolderServiceServicer):
    @gated
    def CreateFolder(self, request: Any, context: Any) -> Any:
        path = self.tree.path(request.folder.uri)
        path.mkdir(parents=True)
        return ff.CreateFolderResponse()

    @gated
    def GetFolderMode(self, request: Any, context: Any) -> Any:
        return ff.GetFolderModeResponse(folder_mode=ff.FOLDER_MODE_NATIVE)

    def _children(self, request: Any) -> tuple[list[Path], list[Path]]:
        path = self.tree.path(request.folder.uri)
        children = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                          or ".upload-" not in p.name)
        return [p for p in children if p.is_dir()], [p for p in children if not p.is_dir()]

    @gated
    def List(self, request: Any, context: Any) -> Iterator[Any]:
        folders, files = self._children(request)
        yield ff.ListResponse(
            subfolder_addresses=[ff.FolderAddress(uri=self.tree.address(p, True))
                                 for p in folders],
            sub_resource_addresses=[self.tree.address(p) for p in files])

    @gated
    def ListStat(self, request: Any, context: Any) -> Iterator[Any]:
        folders, files = self._children(request)
        entries = []
        for p in files:
            with contextlib.suppress(FileNotFoundError):
                entries.append(ff.ListItem(resource_address=self.tree.address(p),
                                           resource_info=self.tree.info(p)))
        yield ff.ListStatResponse(
            subfolder_addresses=[ff.FolderAddress(uri=self.tree.address(p, True))
                                 for p in folders],
            entries=entries)

    @gated
    def DeleteFolder(self, request: Any, context: Any) -> Any:
        shutil.rmtree(self.tree.path(request.folder.uri))
        return ff.DeleteFolderResponse()


class Versions(Service, ver_grpc.VersioningServiceServicer):
    @gated
    def EnumerateVersions(self, request: Any, context: Any) -> Iterator[Any]:
        path = self.tree.path(request.resource_address)
        if not path.is_file():
            raise FileNotFoundError(request.resource_address)
        self.tree.record(path)
        with self.tree.lock:
            history = list(self.tree.history.get(str(path), []))
        items = []
        for number, (version, mtime_ns) in enumerate(history, 1):
            stamp = timestamp_pb2.Timestamp()
            stamp.FromNanoseconds(mtime_ns)
            identity = fo.ResourceIdentity(
                encoded_identity=json.dumps([request.resource_address, version]))
            items.append(ver.VersionInfo(
                resource_info=fo.ResourceInfo(resource_identity=identity, metadata=fo.Metadata(
                    data_object_size=path.stat().st_size, last_modified_timestamp=stamp)),
                sorting_key=f"{number:08d}",
                resource_address=f"{request.resource_address}?checkpoint={number}"))
        yield ver.EnumerateVersionsResponse(items=items,
                                            versions_order=ver.VERSIONS_ORDER_OLDEST_FIRST)


class Metadata(Service, md_grpc.MetadataServiceServicer):
    """User metadata per resource, in memory (the library stores a content hash there)."""

    def __init__(self, tree: Tree, switches: Switches) -> None:
        super().__init__(tree, switches)
        self.values: dict[tuple[str, str], tuple[Any, str]] = {}
        self.lock = threading.Lock()

    def _update(self, address: str, key: str, value: Any) -> str:
        with self.lock:
            etag = str(len(self.values) + 1)
            self.values[(address, key)] = (value, etag)
        return etag

    @gated
    def UpdateMetadata(self, request: Any, context: Any) -> Any:
        etag = self._update(request.uri, request.user_metadata_key, request.user_metadata)
        return md.UpdateMetadataResponse(etag=etag)

    @gated
    def GetMetadata(self, request: Any, context: Any) -> Any:
        with self.lock:
            found = [(key, self.values.get((request.uri, key)))
                     for key in request.user_metadata_keys]
        return md.GetMetadataResponse(user_metadata=[
            md.GetMetadataResponse.UserMetadataEntry(
                key=key, value=md.UserMetadataValue(value=value[0], etag=value[1]))
            for key, value in found if value is not None])

    @gated
    def GetMetadataBatch(self, request: Any, context: Any) -> Iterator[Any]:
        results = []
        with self.lock:
            for index, entry in enumerate(request.requests):
                where = entry.resource_location
                uri = (where.resource_address or where.resource_identity.encoded_identity
                       or where.folder_address.uri)
                value = self.values.get((uri, entry.user_metadata_key))
                if value is None:
                    error = md.BatchErrorEntry(code=md.BatchErrorEntry.CODE_NOT_FOUND)
                    results.append(md.GetMetadataBatchResponseEntry(error=error,
                                                                    request_index=index))
                else:
                    found = md.UserMetadataValue(value=value[0], etag=value[1])
                    results.append(md.GetMetadataBatchResponseEntry(success=found,
                                                                    request_index=index))
        yield md.GetMetadataBatchResponse(results=results)

    @gated
    def DeleteMetadata(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.values.pop((request.uri, request.user_metadata_key), None)
        return md.DeleteMetadataResponse()


class Events(Service, ev_grpc.EventConsumerServiceServicer):
    """Non-durable events: each stream gets the changes whose resource matches its filters."""

    def __init__(self, tree: Tree, switches: Switches) -> None:
        super().__init__(tree, switches)
        self.streams: list[tuple[list[Any], queue.Queue[Any]]] = []
        self.lock = threading.Lock()

    def publish(self, event_type: str, address: str) -> None:
        """Send ``event_type`` (``omni.storage.created``...) for ``address`` to subscribers."""
        if self.switches.get("drop_events"):
            return
        delay = float(self.switches.get("event_delay") or 0)
        if delay:
            threading.Timer(delay, self._send, (event_type, address)).start()
        else:
            self._send(event_type, address)

    def _send(self, event_type: str, address: str) -> None:
        event = ev.Event(event_type=event_type)
        event.message.update({"resource_address": address})
        event.occurred_at.GetCurrentTime()
        event.published_at.GetCurrentTime()
        with self.lock:
            streams = list(self.streams)
        for groups, inbox in streams:
            if any(_matches(group, event_type, address) for group in groups):
                trace("event", event_type, address)
                inbox.put(event)

    @gated
    def ConsumeNonDurableEvents(self, requests: Any, context: Any) -> Iterator[Any]:
        groups: list[Any] = []
        inbox: queue.Queue[Any] = queue.Queue()
        entry = (groups, inbox)
        stop = threading.Event()

        def read_filters() -> None:
            try:
                for request in requests:
                    trace("filters", str(request).replace("\n", " ")[:400])
                    groups[:] = list(request.filter_groups)
                    inbox.put("ack")
            except grpc.RpcError:
                pass
            stop.set()
            inbox.put(None)

        with self.lock:
            self.streams.append(entry)
        threading.Thread(target=read_filters, daemon=True).start()
        try:
            yield ev.ConsumeNonDurableEventsResponse(reconnect_token="r",
                                                     supports_filter_update_acks=True)
            while context.is_active() and not stop.is_set():
                try:
                    item = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item == "ack":
                    yield ev.ConsumeNonDurableEventsResponse(
                        filter_update_ack=ev.FilterUpdateAck(applied_filter_groups=groups))
                elif item is not None:
                    yield ev.ConsumeNonDurableEventsResponse(events=[item])
        finally:
            with self.lock:
                self.streams.remove(entry)


def _matches(group: Any, event_type: str, address: str) -> bool:
    if group.event_type and group.event_type != event_type:
        return False
    for flt in group.filters:
        if flt.filter_type == ev.ResourceFilter.FILTER_TYPE_EQ and address == flt.resource_id:
            return True
        if flt.filter_type in (ev.ResourceFilter.FILTER_TYPE_STARTS_WITH_LAZY,
                               ev.ResourceFilter.FILTER_TYPE_STARTS_WITH_GREEDY) \
                and address.startswith(flt.resource_id):
            return True
    return not group.filters


class Watcher:
    """inotify on every folder of the tree: each change becomes an event (unless quiet)."""

    MASK = (inotify_simple.flags.CREATE | inotify_simple.flags.DELETE
            | inotify_simple.flags.CLOSE_WRITE | inotify_simple.flags.MOVED_FROM
            | inotify_simple.flags.MOVED_TO | inotify_simple.flags.ATTRIB)

    def __init__(self, tree: Tree, events: Events, switches: Switches) -> None:
        self.tree, self.events, self.switches = tree, events, switches
        self.notify = inotify_simple.INotify()
        self.folders: dict[int, Path] = {}
        self._add(tree.root)

    def _add(self, folder: Path) -> None:
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            with contextlib.suppress(OSError):
                self.folders[self.notify.add_watch(sub, self.MASK)] = sub

    def run(self) -> None:
        flags = inotify_simple.flags
        while True:
            for change in self.notify.read():
                folder = self.folders.get(change.wd)
                if folder is None or not change.name or ".upload-" in change.name:
                    continue
                path = folder / change.name
                is_dir = bool(change.mask & flags.ISDIR)
                if is_dir and change.mask & (flags.CREATE | flags.MOVED_TO):
                    self._add(path)
                if change.mask & (flags.DELETE | flags.MOVED_FROM):
                    kind = "omni.storage.deleted"
                else:
                    kind = "omni.storage.created"
                    if not is_dir:
                        self.tree.record(path)
                if change.mask & flags.CREATE and not is_dir:
                    continue  # the CLOSE_WRITE that follows reports it with its content
                if self.switches.get("quiet"):
                    continue
                self.events.publish(kind, self.tree.address(path, is_dir))


class Control(BaseHTTPRequestHandler):
    """Discovery (GET /api/v1/services), switches (POST /control), counts (GET /stats)."""

    peer: Peer

    def log_message(self, format: str, *args: Any) -> None:
        trace("http", format % args)

    def _json(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        grpc_url = f"http://127.0.0.1:{self.peer.grpc_port}"
        if self.path.startswith("/api/v1/services"):
            self._json({"schema-version": 1, "services": [
                {"type": kind, "grpc": grpc_url} for kind in DISCOVERED]})
        elif self.path == "/stats":
            with self.peer.switches.lock:
                self._json({"calls": dict(self.peer.switches.calls),
                            "peak": dict(self.peer.switches.peak)})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/control":
            if body.pop("reset_stats", False):
                with self.peer.switches.lock:
                    self.peer.switches.calls.clear()
                    self.peer.switches.peak.clear()
            self.peer.switches.update(body)
            self._json({"ok": True})
        else:
            self._json({"error": "not found"}, 404)


class Peer:
    """The whole server: gRPC services, discovery/control HTTP, inotify watcher."""

    def __init__(self, root: Path, host: str, grpc_port: int, http_port: int) -> None:
        self.switches = Switches()
        self.tree = Tree(root, host)
        self.grpc_port = grpc_port
        self.events = Events(self.tree, self.switches)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                                  options=[("grpc.max_receive_message_length", 64 << 20),
                                           ("grpc.max_send_message_length", 64 << 20),
                                           ("grpc.so_reuseport", 0)])
        cap_grpc.add_CapabilitiesServiceServicer_to_server(
            Capabilities(self.tree, self.switches), self.server)
        fos_grpc.add_FileObjectServiceServicer_to_server(
            FileObjects(self.tree, self.switches), self.server)
        ff_grpc.add_FileFolderServiceServicer_to_server(
            FileFolders(self.tree, self.switches), self.server)
        ver_grpc.add_VersioningServiceServicer_to_server(
            Versions(self.tree, self.switches), self.server)
        md_grpc.add_MetadataServiceServicer_to_server(
            Metadata(self.tree, self.switches), self.server)
        ev_grpc.add_EventConsumerServiceServicer_to_server(self.events, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        handler = type("Handler", (Control,), {"peer": self})
        ThreadingHTTPServer.allow_reuse_address = True
        self.http = ThreadingHTTPServer(("127.0.0.1", http_port), handler)
        self.watcher = Watcher(self.tree, self.events, self.switches)

    def serve(self) -> None:
        self.server.start()
        threading.Thread(target=self.watcher.run, daemon=True).start()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        print("ready", flush=True)
        self.server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--host", default="peerhost")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--token")
    args = parser.parse_args()
    peer = Peer(args.root.resolve(), args.host, args.grpc_port, args.http_port)
    if args.token:
        peer.switches.update({"token": args.token})
    peer.serve()


if __name__ == "__main__":
    main()
