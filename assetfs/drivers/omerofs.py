"""OMERO.fs driver: a read-only view of the tree an OMERO.fs ``FileServer`` exposes, kept
coherent by the events its ``MonitorServer`` pushes (``omero.grid.monitors`` over ZeroC Ice).

URL forms (the path is an absolute path *on the server machine*; fileIds are host paths)::

    omerofs://HOST:PORT/absolute/path      FileServer at "FileServer:tcp -h HOST -p PORT"
    omerofs:///absolute/path  -o fileserver=PROXY[,monitor=PROXY][,locator=PROXY]

Mount options (``-o key=value``; times in seconds, sizes in bytes):

- ``fileserver``: an Ice proxy string for the FileServer (``FileServer:tcp -h h -p 4064`` or,
  behind IceGrid, ``FileServer@FileServerAdapter`` with ``locator``). Overrides HOST:PORT.
- ``monitor``: the MonitorServer, as ``HOST:PORT``, ``PORT`` or an Ice proxy string. Default:
  the FileServer's host at PORT+1 (the stock servers are two processes on two ports).
  ``monitor=off`` disables events (the VFS then relies on its metadata timeouts).
- ``fileserver_id`` / ``monitor_id``: object identities (default ``FileServer`` /
  ``MonitorServer``, the stock ``omero.fs.*ServerIdString``).
- ``locator``: ``Ice.Default.Locator``, e.g. ``IceGrid/Locator:tcp -h grid -p 4061``.
- ``call_timeout``: Ice invocation timeout of one call (default 10); ``connect_timeout``
  (default 5). The mount's own ``-o timeout=`` bounds a whole request, retries included.
- ``sha1_timeout``: invocation timeout of ``getSHA1``, which reads the whole file on the
  server (default 300).
- ``block_size``: bytes per ``readBlock`` call (default 256 KiB: small calls pipeline best
  against the single-threaded server, measured). The Ice message limit of our
  communicator is raised to fit (the server's replies are bounded by *our* MessageSizeMax, and
  with Ice's default of 1024 KB a 1 MiB reply raises ``Ice.MemoryLimitException``).
- ``read_parallel``: ``readBlock`` calls in flight for one :meth:`OmeroFSDriver.read`, and in
  the fetch process over all its requests (default 4).
- ``callback_host``: address our ``MonitorClient`` adapter listens on (default ``127.0.0.1``;
  set it to an address the MonitorServer can reach when it runs on another machine).
- ``monitor_check``: seconds between liveness checks of the MonitorServer (default 1).
- any ``Ice.*`` / ``IceSSL.*`` key is passed to the Ice communicator as a property.

The block cache's reads (:meth:`OmeroFSDriver.read_into`) run in a fetch process of their own
(:mod:`assetfs.drivers.omerofs_fetch`), which writes the bytes straight into the cache files:
in the daemon, Ice's reply unmarshalling and the FUSE request path compete for one GIL.

Quirks of the real servers this driver is shaped by (see ``docs/backends/omero-fs.md``):

- ``getBulkDirectory`` stats names relative to the server's working directory, so listings
  are ``getDirectory`` plus one ``getStats`` per child, issued in parallel (AMI, no threads).
- ``isFile``/``isDir``/``fileExists`` say True for missing paths: existence is ``getStats``.
- mtimes are Ice 32-bit floats (128 s steps at today's epoch), so an entry's ``version`` is
  ``"<size>:<mtime_ns>:<ctime_ns>"`` plus, once this mount has seen a Create/Modify/Delete
  event for the path, ``":<session>.<n>"`` (a per-process id and an event counter). A change
  that keeps the size and lands in the same 128 s bucket is thus caught by its event; one made
  while no daemon runs is caught only if size, mtime or ctime bucket moved.
- errors are ``omero.OmeroFSError`` with only ``reason`` filled; the errno text inside it is the
  only way to tell ENOENT from EACCES. :func:`translate` is the one place that reads it.
- events: one Persistent monitor, PathMode Follow, event types listed explicitly (``All``
  delivers nothing); a stopped monitor cannot be restarted, so a lost one is replaced by a new
  one and a ``RESYNC`` of ``/`` is sent (events for an unreachable client are dropped, not
  replayed). ``getMonitorState`` always fails, so liveness is a ping plus "is it still the
  same connection" (a restarted server means a new connection and a forgotten monitor).
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import Ice  # type: ignore[import-not-found]
import omero  # type: ignore[import-not-found]
import omero_FS_ice  # type: ignore[import-not-found]  # noqa: F401  (omero.grid.monitors)
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
)
from .omerofs_fetch import FetchWorker

log = logging.getLogger(__name__)

monitors: Any = omero.grid.monitors  # the generated Ice module

KiB = 1024
MiB = 1024 * KiB
DEFAULT_BLOCK = 256 * KiB
LIST_PARALLEL = 32
"""getStats calls in flight for one listing."""

_ERRNO = re.compile(r"\[Errno (\d+)\]")
_BY_ERRNO: dict[int, type[errors.AssetFSError]] = {
    2: errors.NotFound,  # ENOENT
    1: errors.PermissionDenied,  # EPERM
    13: errors.PermissionDenied,  # EACCES
    20: errors.NotADirectory,  # ENOTDIR
    21: errors.IsADirectory,  # EISDIR
    22: errors.InvalidName,  # EINVAL
    36: errors.InvalidName,  # ENAMETOOLONG
    5: errors.Unavailable,  # EIO on the server's disk: maybe transient
}


def translate(exc: BaseException, url: str) -> errors.AssetFSError:
    """The one place where Ice and OMERO.fs errors become :mod:`assetfs.errors` types.

    - ``omero.OmeroFSError``: only ``reason`` is filled (``"Failed to get  /x stats :
      [Errno 2] No such file or directory: '/x'"``); the ``[Errno N]`` inside it picks the
      type (ENOENT -> NotFound, EACCES/EPERM -> PermissionDenied, ...), else a plain EIO error.
    - Ice timeouts (invocation, connect, connection) -> :class:`~assetfs.errors.TimedOut`.
    - Ice connection-level failures (refused, lost, no endpoint, object gone because the
      server restarted under another identity, communicator shut down) ->
      :class:`~assetfs.errors.Unavailable`, which callers retry.
    - ``Ice.MemoryLimitException`` (a reply above our MessageSizeMax) and anything else ->
      a non-retryable EIO error naming the Ice exception.
    """
    if isinstance(exc, errors.AssetFSError):
        return exc
    if isinstance(exc, omero.OmeroFSError):
        reason = str(getattr(exc, "reason", "") or exc)
        match = _ERRNO.search(reason)
        if match:
            cls = _BY_ERRNO.get(int(match.group(1)), errors.AssetFSError)
        elif "No such file" in reason:
            cls = errors.NotFound
        elif "Permission denied" in reason:
            cls = errors.PermissionDenied
        else:
            cls = errors.AssetFSError
        return cls(" ".join(reason.split()), url=url)
    name = type(exc).__name__
    if isinstance(exc, Ice.TimeoutException):
        return errors.TimedOut(f"OMERO.fs server did not answer ({name})", url=url)
    if isinstance(
        exc,
        (
            Ice.SocketException,
            Ice.DNSException,
            Ice.NoEndpointException,
            Ice.ObjectNotExistException,
            Ice.CommunicatorDestroyedException,
            Ice.ObjectAdapterDeactivatedException,
            Ice.CloseConnectionException,
            Ice.ConnectionNotValidatedException,
        ),
    ):
        return errors.Unavailable(f"OMERO.fs server unreachable ({name})", url=url)
    if isinstance(exc, Ice.MemoryLimitException):
        return errors.AssetFSError(
            "reply larger than Ice.MessageSizeMax (lower block_size)", url=url
        )
    return errors.AssetFSError(f"OMERO.fs call failed: {name}: {exc}", url=url)


def _float_ns(seconds: float) -> int:
    """An Ice ``float`` time in seconds (32-bit: 128 s steps) as integer nanoseconds."""
    return round(float(seconds)) * 1_000_000_000


def new_communicator(properties: Mapping[str, str]) -> Any:
    """An Ice communicator with ``properties`` (the daemon's and the fetch process's)."""
    init = Ice.InitializationData()
    init.properties = Ice.createProperties()
    for key, value in properties.items():
        init.properties.setProperty(key, value)
    return Ice.initialize(init)


class OmeroFSDriver(Driver):
    """Read-only OMERO.fs store with push events. See the module docstring for URL/options."""

    schemes: ClassVar[tuple[str, ...]] = ("omerofs",)
    capabilities: ClassVar[Capabilities] = Capabilities(
        writable=False, read_mode=ReadMode.RANGED, push_events=True, rename=False
    )
    lazy_xattrs: ClassVar[tuple[str, ...]] = ("sha1",)
    poll_interval: float = 60.0
    """Seconds between safety-net re-lists of watched folders (see :meth:`run_events`)."""
    declared_options: ClassVar[tuple[opt.Option, ...]] = (
        opt.Option("fileserver", opt.text, "", "Ice proxy of the FileServer (overrides HOST:PORT)"),
        opt.Option("monitor", opt.text, "",
                   "MonitorServer as HOST:PORT, PORT or a proxy (default PORT+1); off: no events"),
        opt.Option("fileserver_id", opt.text, "FileServer", "FileServer object identity"),
        opt.Option("monitor_id", opt.text, "MonitorServer", "MonitorServer object identity"),
        opt.Option("locator", opt.text, "", "Ice.Default.Locator (behind IceGrid)"),
        opt.Option("call_timeout", opt.seconds, 10.0, "Ice invocation timeout of one call"),
        opt.Option("connect_timeout", opt.seconds, 5.0, "Ice connect timeout"),
        opt.Option("sha1_timeout", opt.seconds, 300.0, "invocation timeout of getSHA1"),
        opt.Option("block_size", opt.size, DEFAULT_BLOCK, "bytes per readBlock call"),
        opt.Option("read_parallel", opt.integer, 4, "readBlock calls in flight"),
        opt.Option("callback_host", opt.text, "127.0.0.1",
                   "address our MonitorClient adapter listens on"),
        opt.Option("monitor_check", opt.seconds, 1.0,
                   "seconds between liveness checks of the MonitorServer"),
        opt.Option("Ice.*", opt.text, None, "an Ice communicator property"),
        opt.Option("IceSSL.*", opt.text, None, "an IceSSL communicator property"),
    )

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        if parts.scheme.lower() != "omerofs":
            raise errors.BadURL(f"not an omerofs: URL: {url!r}")
        root = unquote(parts.path) or "/"
        if not root.startswith("/"):
            raise errors.BadURL(f"the path must be absolute on the server: {url!r}")
        self.root = posixpath.normpath(root) if root != "/" else "/"
        if self.root.startswith("//"):
            self.root = "/" + self.root.lstrip("/")
        opts = self.options
        fs_id = opts.get("fileserver_id", "FileServer")
        ms_id = opts.get("monitor_id", "MonitorServer")
        self._fs_proxy = opts.get("fileserver", "")
        host, port = parts.hostname, None
        try:
            port = parts.port
        except ValueError as exc:
            raise errors.BadURL(f"bad port in {url!r}") from exc
        if not self._fs_proxy:
            if not host or port is None:
                raise errors.BadURL(
                    f"expected omerofs://HOST:PORT/path or -o fileserver=PROXY: {url!r}"
                )
            self._fs_proxy = f"{fs_id}:tcp -h {host} -p {port}"
        monitor = opts.get("monitor", "")
        self.events_enabled = monitor.lower() not in ("off", "none", "no", "0")
        if not monitor or not self.events_enabled:
            self._ms_proxy = f"{ms_id}:tcp -h {host} -p {port + 1}" if host and port else ""
        elif re.fullmatch(r"\d+", monitor):
            self._ms_proxy = f"{ms_id}:tcp -h {host or '127.0.0.1'} -p {monitor}"
        elif re.fullmatch(r"[\w.\-]+:\d+", monitor):
            mhost, mport = monitor.rsplit(":", 1)
            self._ms_proxy = f"{ms_id}:tcp -h {mhost} -p {mport}"
        else:
            self._ms_proxy = monitor
        if self.events_enabled and not self._ms_proxy:
            raise errors.BadURL("no MonitorServer: give -o monitor=PROXY or monitor=off")
        self.timeout = float(opts.get("call_timeout", 10.0))
        self.connect_timeout = float(opts.get("connect_timeout", 5.0))
        self.sha1_timeout = float(opts.get("sha1_timeout", 300.0))
        self.block_size = int(opts.get("block_size", DEFAULT_BLOCK))
        if not 1 <= self.block_size <= 64 * MiB:
            raise errors.BadURL("block_size must be 1 B .. 64 MiB")
        self.read_parallel = max(1, int(opts.get("read_parallel", 4)))
        self.callback_host = opts.get("callback_host", "127.0.0.1")
        self.monitor_check = float(opts.get("monitor_check", 1.0))
        self._locator = opts.get("locator", "")
        self._ice_props = {
            k: v for k, v in opts.items() if k.startswith(("Ice.", "IceSSL.")) and v is not None
        }
        self._session = uuid.uuid4().hex[:8]
        self._generation: dict[str, int] = {}
        self._resyncs = 0
        self._monitor_ids: list[str] = []
        self._sha1: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._communicator: Any = None
        self._fs: Any = None
        self._fs_sha1: Any = None
        self._ms: Any = None
        self._fetcher: FetchWorker | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.monitor_id = ""
        """The id of the live monitor ("" while there is none); for status and tests."""
        self.monitor_generation = 0
        """How many monitors this driver created (1 after the first start)."""

    # --- plumbing -----------------------------------------------------------------
    def _abs(self, path: str) -> str:
        """The server-side fileId of a driver path."""
        if path == "/":
            return self.root
        return self.root.rstrip("/") + path

    def _rel(self, file_id: str) -> str | None:
        """The driver path of a server fileId, or None when it is outside the root."""
        file_id = posixpath.normpath(file_id) if file_id not in ("", "/") else "/"
        if file_id == self.root:
            return "/"
        prefix = self.root.rstrip("/") + "/"
        if file_id.startswith(prefix):
            return "/" + file_id[len(prefix) :]
        return None

    def _ice_properties(self) -> dict[str, str]:
        size_kb = max(1024, (self.block_size + MiB - 1) // KiB + 64)
        props = {
            # Replies carry up to block_size bytes plus a small header.
            "Ice.MessageSizeMax": str(size_kb),
            "Ice.Override.ConnectTimeout": str(int(self.connect_timeout * 1000)),
            # One immediate transparent retry (Ice's default); our caller retries with backoff.
            "Ice.RetryIntervals": "0",
            # Keep connections open while idle: a closed connection is how we spot a
            # restarted MonitorServer, so it must not be closed for idleness.
            "Ice.ACM.Client.Close": "0",
            "Ice.ACM.Client.Heartbeat": "0",
            "Ice.ThreadPool.Client.Size": "2",
            "Ice.ThreadPool.Client.SizeMax": "4",
            # One dispatch thread for MonitorClient callbacks: events stay in order.
            "Ice.ThreadPool.Server.Size": "1",
            "Ice.ThreadPool.Server.SizeMax": "1",
            "Ice.Warn.Connections": "0",
        }
        if self._locator:
            props["Ice.Default.Locator"] = self._locator
        props.update(self._ice_props)
        return props

    async def _call(self, prx: Any, op: str, *args: Any, path: str = "/") -> Any:
        """Run ``prx.op(*args)`` as an Ice AMI call and await its result in trio.

        The response arrives on an Ice client thread, which only stores it and wakes us through
        the trio token (never blocking). The proxy carries the invocation timeout; a trio
        deadline a little longer backs it up. Errors go through :func:`translate`.
        """
        if self._communicator is None or self._token is None:
            raise errors.Unavailable("not connected", url=self.describe(path))
        token = self._token
        done = trio.Event()
        box: list[tuple[bool, Any]] = []

        def finish(ok: bool, value: Any) -> None:
            box.append((ok, value))
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        def response(*result: Any) -> None:
            finish(True, result[0] if len(result) == 1 else result or None)

        def exception(exc: BaseException) -> None:
            finish(False, exc)

        try:
            getattr(prx, "begin_" + op)(*args, _response=response, _ex=exception)
        except Exception as exc:  # Ice may fail synchronously (e.g. destroyed communicator)
            raise translate(exc, self.describe(path)) from exc
        backstop = max(self.timeout, self.sha1_timeout if op == "getSHA1" else 0) + 5
        with trio.move_on_after(backstop):
            await done.wait()
        if not box:
            raise errors.TimedOut(f"{op}: no answer in {backstop:g}s", url=self.describe(path))
        ok, value = box[0]
        if ok:
            return value
        raise translate(value, self.describe(path)) from value

    # --- lifecycle ----------------------------------------------------------------
    async def connect(self) -> None:
        """Create the Ice communicator and proxies, then check the root is a folder.

        Raises NotFound/NotADirectory for a bad root, Unavailable when the FileServer cannot
        be reached within ``connect_timeout`` + ``call_timeout``, BadURL for a bad proxy string.
        """
        self._token = trio.lowlevel.current_trio_token()
        if self._communicator is None:
            self._communicator = new_communicator(self._ice_properties())
            try:
                base = self._communicator.stringToProxy(self._fs_proxy)
                fs = monitors.FileServerPrx.uncheckedCast(base)
                self._fs = fs.ice_invocationTimeout(int(self.timeout * 1000))
                self._fs_sha1 = fs.ice_invocationTimeout(int(self.sha1_timeout * 1000))
                if self.events_enabled:
                    ms = monitors.MonitorServerPrx.uncheckedCast(
                        self._communicator.stringToProxy(self._ms_proxy)
                    )
                    self._ms = ms.ice_invocationTimeout(int(self.timeout * 1000))
            except Ice.ProxyParseException as exc:
                await self.close()
                raise errors.BadURL(f"bad Ice proxy string: {exc.str}") from exc
        await super().connect()
        if self._fetcher is None:
            settings = {
                "proxy": self._fs_proxy,
                "properties": self._ice_properties(),
                "call_timeout": self.timeout,
                "block_size": self.block_size,
                "parallel": self.read_parallel,
            }
            self._fetcher = FetchWorker(settings, self.timeout + self.connect_timeout + 2)
        await self._fetcher.start()

    async def close(self) -> None:
        """Stop the fetch process and destroy the communicator (in a worker thread: destroy
        waits for pending calls)."""
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            await fetcher.close()
        communicator, self._communicator = self._communicator, None
        if communicator is not None:
            try:
                await trio.to_thread.run_sync(communicator.destroy)
            except Exception as exc:  # close must not raise
                log.debug("Ice communicator destroy: %s", exc)

    # --- metadata -----------------------------------------------------------------
    def _version(self, path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
        """``size:mtime_ns:ctime_ns``, plus ``:<session>.r<resyncs>.e<events>`` once a resync
        or an event for ``path`` happened in this process (mtimes alone are 128 s coarse)."""
        version = f"{size}:{mtime_ns}:{ctime_ns}"
        tags = []
        if self._resyncs:
            tags.append(f"r{self._resyncs}")
        generation = self._generation.get(path)
        if generation:
            tags.append(f"e{generation}")
        return f"{version}:{self._session}." + ".".join(tags) if tags else version

    def _entry(self, path: str, name: str, stats: Any) -> Entry:
        is_dir = stats.type == monitors.FileType.Dir
        size = int(stats.size)
        mtime_ns, ctime_ns = _float_ns(stats.mTime), _float_ns(stats.cTime)
        return Entry(
            name=name,
            kind=Kind.DIR if is_dir else Kind.FILE,
            size=0 if is_dir else size,
            mtime_ns=mtime_ns,
            version="" if is_dir else self._version(path, size, mtime_ns, ctime_ns),
            mode=0o555 if is_dir else 0o444,
            metadata={"owner": str(stats.owner)} if stats.owner else {},
        )

    async def stat(self, path: str) -> Entry:
        """``getStats`` of the path. Times are whole seconds (128 s steps, see module doc).

        Raises NotFound, PermissionDenied, Unavailable/TimedOut.
        """
        stats = await self._call(self._fs, "getStats", self._abs(path), path=path)
        name = posixpath.basename(path) if path != "/" else ""
        return self._entry(path, name, stats)

    async def list(self, path: str) -> list[Entry]:
        """``getDirectory`` then ``getStats`` of every child, up to 32 in flight.

        Children that vanish between the two calls are left out. Raises NotFound,
        NotADirectory, PermissionDenied, Unavailable/TimedOut.
        """
        names = await self._call(self._fs, "getDirectory", self._abs(path), "", path=path)
        entries: list[Entry | None] = [None] * len(names)
        limit = trio.Semaphore(LIST_PARALLEL)
        failure: list[errors.AssetFSError] = []

        async def one(index: int, raw: str) -> None:
            name = raw.rstrip("/")
            child = path.rstrip("/") + "/" + name
            async with limit:
                try:
                    stats = await self._call(self._fs, "getStats", self._abs(child), path=child)
                except errors.NotFound:
                    return
                except errors.AssetFSError as exc:
                    failure.append(exc)
                    return
            entries[index] = self._entry(child, name, stats)

        async with trio.open_nursery() as nursery:
            for index, raw in enumerate(names):
                if raw.rstrip("/"):
                    nursery.start_soon(one, index, raw)
        if failure:
            raise failure[0]
        return [e for e in entries if e is not None]

    # --- data ---------------------------------------------------------------------
    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` through ``readBlock`` calls of at most
        ``block_size`` bytes, ``read_parallel`` in flight; fewer bytes only at EOF.

        ``readBlock`` returns ``b''`` at or past EOF (no error) and the remainder near it.
        Raises NotFound, IsADirectory, PermissionDenied, Unavailable/TimedOut.
        """
        if offset < 0 or size < 0:
            raise errors.InvalidName("negative offset or size", url=self.describe(path))
        if size == 0:
            return b""
        file_id = self._abs(path)
        block = self.block_size
        starts = list(range(offset, offset + size, block))
        chunks: list[bytes | None] = [None] * len(starts)
        limit = trio.Semaphore(self.read_parallel)
        eof_at: list[int] = []
        failure: list[errors.AssetFSError] = []

        async def one(index: int, start: int, cancel: trio.CancelScope | None) -> None:
            if eof_at and start >= eof_at[0]:
                return
            want = min(block, offset + size - start)
            async with limit:
                if eof_at and start >= eof_at[0]:
                    return
                try:
                    data = await self._call(self._fs, "readBlock", file_id, start, want, path=path)
                except errors.AssetFSError as exc:
                    if cancel is None:
                        raise
                    failure.append(exc)  # raised below, not as an ExceptionGroup
                    cancel.cancel()
                    return
            chunks[index] = data
            if len(data) < want:
                end = start + len(data)
                if not eof_at or end < eof_at[0]:
                    eof_at[:] = [end]

        if len(starts) == 1:
            await one(0, starts[0], None)
        else:
            async with trio.open_nursery() as nursery:
                for index, start in enumerate(starts):
                    nursery.start_soon(one, index, start, nursery.cancel_scope)
            if failure:
                raise failure[0]
        out = []
        for chunk in chunks:
            if chunk is None:
                break
            out.append(chunk)
            if len(chunk) < block:
                break
        return b"".join(out)

    async def read_into(self, path: str, offset: int, size: int, fd: int) -> int:
        """Write up to ``size`` bytes at ``offset`` into local file ``fd`` at the same offset;
        return how many (fewer only at EOF). The ``readBlock`` calls (``block_size`` bytes,
        ``read_parallel`` in flight) run in the fetch process, which writes into ``fd``.

        Raises NotFound, IsADirectory, PermissionDenied, Unavailable/TimedOut (also when the
        fetch process died: the next call starts a new one), NoSpace.
        """
        if offset < 0 or size < 0:
            raise errors.InvalidName("negative offset or size", url=self.describe(path))
        if self._fetcher is None:
            raise errors.Unavailable("not connected", url=self.describe(path))
        if size == 0:
            return 0
        return await self._fetcher.read_into(
            self._abs(path), offset, size, fd, self.describe(path)
        )

    async def xattr(self, path: str, key: str) -> bytes | None:
        """``sha1``: the lowercase hex SHA-1 of a file from ``getSHA1`` (the server reads the
        whole file, so this has its own ``sha1_timeout``), cached per file version.

        Returns None for other keys and for folders. Raises NotFound, Unavailable/TimedOut.
        """
        if key != "sha1":
            return None
        entry = await self.stat(path)
        if entry.is_dir:
            return None
        cache_key = (path, entry.version)
        digest = self._sha1.get(cache_key)
        if digest is None:
            digest = str(await self._call(self._fs_sha1, "getSHA1", self._abs(path), path=path))
            self._sha1[cache_key] = digest
            while len(self._sha1) > 1024:
                self._sha1.popitem(last=False)
        return digest.encode()

    # --- change events -------------------------------------------------------------
    async def run_events(self, sink: EventSink) -> None:
        """Keep one Persistent/Follow monitor on the root and forward its events to ``sink``.

        Our ``MonitorClient`` servant lives on its own adapter (``tcp -h callback_host``);
        ``fsEventHappened`` runs on an Ice dispatch thread and hands the batch to trio with
        ``trio.from_thread.run`` (so a slow consumer slows the server's callback, which then
        batches, as the real server does). Create -> CREATED, Modify -> UPDATED, Delete ->
        DELETED (a rename is Delete + Create). Every ``monitor_check`` seconds the
        MonitorServer is pinged:

        - ping fails, later answers on the SAME connection (a hung server): the monitor is
          kept, ``RESYNC "/"`` is sent (callbacks to us may have failed meanwhile);
        - the connection is new (server restarted, monitor forgotten): a new monitor is created
          once the server answers and ``RESYNC "/"`` is sent, since missed events are never
          replayed. Older monitors are not destroyed then: if the server process is in fact
          the same one, the old monitor still covers the subfolders the new one cannot (below).

        The real server keeps its watched folders in ONE registry per process, never emptied:
        a monitor created after another one on the same tree (our re-creation, a remount, a
        second mount) gets no events from the subfolders the earlier one watched. As a safety
        net the folders the VFS watches are also re-listed every ``poll_interval`` seconds
        (default 60, ``poll_interval=0`` turns it off) and diffed, as polling stores are.
        """
        if not self.events_enabled:
            await super().run_events(sink)
            return
        token = trio.lowlevel.current_trio_token()
        driver = self

        class Client(monitors.MonitorClient):  # type: ignore[misc, name-defined]
            def fsEventHappened(self, monitor_id: str, events: Any, current: Any = None) -> None:
                batch = [(str(e.fileId), e.type) for e in events]
                try:
                    trio.from_thread.run(driver._deliver, sink, monitor_id, batch, trio_token=token)
                except (trio.RunFinishedError, trio.Cancelled):
                    pass
                except Exception as exc:  # never let a Python error become an Ice exception
                    log.warning("dropping OMERO.fs events: %s", exc)

        communicator = self._communicator
        if communicator is None:
            raise errors.Unavailable("not connected", url=self.url)
        adapter = communicator.createObjectAdapterWithEndpoints(
            f"assetfs-monitor-client-{uuid.uuid4().hex[:8]}", f"tcp -h {self.callback_host}"
        )
        identity = Ice.Identity(name=uuid.uuid4().hex, category="assetfs")
        client = monitors.MonitorClientPrx.uncheckedCast(adapter.add(Client(), identity))
        adapter.activate()
        try:
            async with trio.open_nursery() as nursery:
                if self.poll_interval > 0:
                    nursery.start_soon(self.poll, sink)
                await self._supervise_monitor(client, sink)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._drop_monitors()
            try:
                await trio.to_thread.run_sync(adapter.destroy)
            except Exception as exc:
                log.debug("adapter destroy: %s", exc)

    async def _create_monitor(self, client: Any) -> str:
        monitor_id = str(
            await self._call(
                self._ms,
                "createMonitor",
                monitors.MonitorType.Persistent,
                # Listed one by one: WatchEventType.All delivers nothing in the real server.
                [
                    monitors.WatchEventType.Creation,
                    monitors.WatchEventType.Modification,
                    monitors.WatchEventType.Deletion,
                ],
                monitors.PathMode.Follow,  # Recurse misses new subfolders, Flat all of them
                self.root,
                [],  # whitelist: ignored by the server
                [],  # blacklist: ignored by the server
                0.0,  # timeout: only for Inactivity monitors (which do not work)
                0,  # blockSize 0: one callback per server poll (100 ms) with all events
                False,  # ignoreSysFiles: ignored by the server
                False,  # ignoreDirEvents: we want folder Create/Delete
                False,  # platformCheck
                client,
            )
        )
        self._monitor_ids.append(monitor_id)
        self.monitor_id = monitor_id
        await self._call(self._ms, "startMonitor", monitor_id)
        return monitor_id

    async def _supervise_monitor(self, client: Any, sink: EventSink) -> None:
        delay = 0.2
        connection = ""
        lost = False  # events may have been missed since the last good check
        while True:
            try:
                await self._call(self._ms, "ice_ping")
                current = self._connection_name()
                if current != connection or not self.monitor_id:
                    await self._create_monitor(client)
                    self.monitor_generation += 1
                    log.info("OMERO.fs monitor %s on %s", self.monitor_id, self.root)
                    self.events_ready.set()
                connection = current
            except errors.AssetFSError as exc:
                log.debug("OMERO.fs monitor not (re)created: %s; retry in %.1fs", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            if lost:
                lost = False
                self._bump_all()
                await sink.send(ChangeEvent(ChangeKind.RESYNC, "/"))
            while not lost:
                await trio.sleep(self.monitor_check)
                try:
                    await self._call(self._ms, "ice_ping")
                except errors.AssetFSError as exc:
                    log.warning("OMERO.fs monitor server lost (%s)", exc)
                    lost = True
                else:
                    if self._connection_name() != connection:
                        log.warning("OMERO.fs monitor server reconnected: new monitor")
                        lost = True

    def _connection_name(self) -> str:
        connection = self._ms.ice_getCachedConnection() if self._ms is not None else None
        return connection.toString() if connection is not None else ""

    async def _drop_monitors(self) -> None:
        """Stop and destroy every monitor we created, best effort (servers may be gone)."""
        self.monitor_id = ""
        while self._monitor_ids:
            monitor_id = self._monitor_ids.pop()
            for op in ("stopMonitor", "destroyMonitor"):
                try:
                    await self._call(self._ms, op, monitor_id)
                except errors.AssetFSError as exc:
                    log.debug("%s %s: %s", op, monitor_id, exc)
                    break

    def _bump(self, path: str) -> None:
        self._generation[path] = self._generation.get(path, 0) + 1

    def _bump_all(self) -> None:
        """After lost events any cached version may be stale: move every version on."""
        self._resyncs += 1

    async def _deliver(
        self, sink: EventSink, monitor_id: str, batch: list[tuple[str, Any]]
    ) -> None:
        """Map one ``fsEventHappened`` batch to ChangeEvents (runs in trio)."""
        if monitor_id not in self._monitor_ids:
            log.debug("ignoring %d events of unknown monitor %s", len(batch), monitor_id)
            return
        kinds: dict[Any, ChangeKind] = {
            monitors.EventType.Create: ChangeKind.CREATED,
            monitors.EventType.Modify: ChangeKind.UPDATED,
            monitors.EventType.Delete: ChangeKind.DELETED,
        }
        for file_id, event_type in batch:
            kind = kinds.get(event_type)
            path = self._rel(file_id)
            if kind is None or path is None:
                log.debug("OMERO.fs event ignored: %s %s", event_type, file_id)
                continue
            self._bump(path)
            try:
                await sink.send(ChangeEvent(kind, path))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
