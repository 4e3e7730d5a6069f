"""The OMERO.fs driver: URL and options, metadata and data calls (see the package docstring
for the URL forms, the options and the server quirks)."""

from __future__ import annotations

import functools
import posixpath
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import trio

from ... import bounded, errors
from ... import options as opt
from ..base import Capabilities, Driver, Entry, EventSink, ReadMode
from .entries import Versions, to_entry
from .fetch import FetchWorker
from .ice import IceSession, KiB, MiB, ice_properties
from .monitor import MonitorKeeper

DEFAULT_BLOCK = 256 * KiB
LIST_PARALLEL = 32
"""getStats calls in flight for one listing."""


class OmeroFSDriver(Driver):
    """Read-only OMERO.fs store with push events. See the module docstring for URL/options."""

    schemes: ClassVar[tuple[str, ...]] = ("omerofs",)
    capabilities: Capabilities = Capabilities(
        writable=False, read_mode=ReadMode.RANGED, push_events=True, rename=False
    )
    lazy_xattrs: tuple[str, ...] = ("sha1",)
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
        self._versions = Versions()
        self._sha1: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._ice: IceSession | None = None
        self._fetcher: FetchWorker | None = None
        self._monitor = MonitorKeeper(self.root, self._rel, self._versions, url)

    @property
    def monitor_id(self) -> str:
        """The id of the live monitor ("" while there is none); for status and tests."""
        return self._monitor.monitor_id

    @property
    def monitor_generation(self) -> int:
        """How many monitors this driver created (1 after the first start)."""
        return self._monitor.generation

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
        return ice_properties(self.block_size, self.connect_timeout, self._locator, self._ice_props)

    def _session(self, path: str = "/") -> IceSession:
        """The Ice session; raises Unavailable before :meth:`connect` and after :meth:`close`."""
        if self._ice is None:
            raise errors.Unavailable("not connected", url=self.describe(path))
        return self._ice

    async def _call(self, op: str, *args: Any, path: str = "/") -> Any:
        """``op(*args)`` on the FileServer (``getSHA1`` with its own timeout), errors
        translated with the URL of ``path``; see :meth:`.ice.IceSession.call`."""
        session = self._session(path)
        prx = session.fs_sha1 if op == "getSHA1" else session.fs
        return await session.call(prx, op, *args, url=self.describe(path))

    # --- lifecycle ----------------------------------------------------------------
    async def connect(self) -> None:
        """Create the Ice communicator and proxies, then check the root is a folder.

        Raises NotFound/NotADirectory for a bad root, Unavailable when the FileServer cannot
        be reached within ``connect_timeout`` + ``call_timeout``, BadURL for a bad proxy string.
        """
        if self._ice is None:
            self._ice = IceSession(
                self._ice_properties(),
                self._fs_proxy,
                self._ms_proxy if self.events_enabled else "",
                self.timeout,
                self.sha1_timeout,
            )
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
        session, self._ice = self._ice, None
        if session is not None:
            await session.close()

    # --- metadata -----------------------------------------------------------------
    async def stat(self, path: str) -> Entry:
        """``getStats`` of the path. Times are whole seconds (128 s steps, see module doc).

        Raises NotFound, PermissionDenied, Unavailable/TimedOut.
        """
        stats = await self._call("getStats", self._abs(path), path=path)
        name = posixpath.basename(path) if path != "/" else ""
        return to_entry(path, name, stats, self._versions)

    async def list(self, path: str) -> list[Entry]:
        """``getDirectory`` then ``getStats`` of every child, up to 32 in flight.

        Children that vanish between the two calls are left out. Raises NotFound,
        NotADirectory, PermissionDenied, Unavailable/TimedOut.
        """
        names = await self._call("getDirectory", self._abs(path), "", path=path)

        async def child(name: str) -> Entry | None:
            child = path.rstrip("/") + "/" + name
            try:
                stats = await self._call("getStats", self._abs(child), path=child)
            except errors.NotFound:
                return None
            return to_entry(child, name, stats, self._versions)

        jobs = [functools.partial(child, n.rstrip("/")) for n in names if n.rstrip("/")]
        return [e for e in await bounded.gather(jobs, LIST_PARALLEL) if e is not None]

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
        eof_at: list[int] = []  # where a short block ended: later blocks are not asked for

        async def one(start: int) -> bytes:
            if eof_at and start >= eof_at[0]:
                return b""
            want = min(block, offset + size - start)
            data: bytes = await self._call("readBlock", file_id, start, want, path=path)
            if len(data) < want:
                end = start + len(data)
                if not eof_at or end < eof_at[0]:
                    eof_at[:] = [end]
            return data

        jobs = [functools.partial(one, s) for s in range(offset, offset + size, block)]
        out = []
        for chunk in await bounded.gather(jobs, self.read_parallel):
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
            digest = str(await self._call("getSHA1", self._abs(path), path=path))
            self._sha1[cache_key] = digest
            while len(self._sha1) > 1024:
                self._sha1.popitem(last=False)
        return digest.encode()

    # --- change events -------------------------------------------------------------
    async def run_events(self, sink: EventSink) -> None:
        """Keep one Persistent/Follow monitor on the root and forward its events to ``sink``
        (:meth:`.monitor.MonitorKeeper.run`: hangs and restarts of the MonitorServer are
        handled there, with a ``RESYNC`` of ``/`` whenever events may have been lost).

        The real server keeps its watched folders in ONE registry per process, never emptied:
        a monitor created after another one on the same tree (our re-creation, a remount, a
        second mount) gets no events from the subfolders the earlier one watched. As a safety
        net the folders the VFS watches are also re-listed every ``poll_interval`` seconds
        (default 60, ``poll_interval=0`` turns it off) and diffed, as polling stores are.
        ``-o monitor=off`` leaves only that polling.
        """
        if not self.events_enabled:
            await super().run_events(sink)
            return
        session = self._session()
        async with trio.open_nursery() as nursery:
            if self.poll_interval > 0:
                nursery.start_soon(self.poll, sink)
            await self._monitor.run(
                session, sink, self.callback_host, self.monitor_check, self.events_ready
            )
