"""The OMERO.fs fetch process, the daemon's side: ``readBlock`` calls in a process of their own
(:mod:`.fetch_process`), written straight into the block cache's files.

Why a process: in the daemon, Ice's client threads (which unmarshal every reply into a Python
``bytes``) and the FUSE request path (pyfuse3 and trio) share one GIL and one core's worth of
Python time. Measured on a 2-core machine, a cold 256 MiB read through the mount cost the
daemon 0.6 s of CPU (0.4 s on the trio thread, 0.2 s on Ice threads) against 0.11 s for a plain
``readBlock`` loop, and ran at 0.3-0.45 of that loop's speed. Here the daemon only sends one
small request per cache block and reads one small reply; the bytes go from the socket to the
cache file inside this process and reach the daemon through the page cache.

Protocol, over one ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair (each message one JSON object;
the child's end is its standard input):

- first message, daemon -> process: the settings (``proxy``, ``properties``, ``call_timeout``
  in seconds, ``block_size`` in bytes, ``parallel``), see :meth:`FetchWorker.__init__`;
- request, daemon -> process: ``{"id", "file_id", "offset", "size", "url"}`` with one file
  descriptor attached (``SCM_RIGHTS``): write ``size`` bytes of ``file_id`` from ``offset``
  into that file at the same offset, in ``readBlock`` calls of ``block_size`` bytes, at most
  ``parallel`` calls in flight over all requests (the stock server answers one call at a time;
  a few in flight keep it busy while the replies travel);
- reply, process -> daemon: ``{"id", "size"}`` (bytes written: fewer than asked only at EOF)
  or ``{"id", "error", "message"}`` where ``error`` names an :mod:`assetfs.errors` type chosen
  by :func:`.ice.translate`, which runs in the process.

A request whose caller gave up (timeout) is still served: its bytes are the content of that
range, and requests are served in order, so a later request for the same range writes last.

Lifetime: the process exits as soon as its socket reports end-of-file, that is when the daemon
closes it (:meth:`FetchWorker.close`) or dies, SIGKILL included (the kernel closes the
daemon's end). It looks between two calls, so at worst one ``call_timeout`` later. The daemon
starts a new process when the old one died, and kills one that owes replies and has sent
nothing for ``call_timeout + connect_timeout + 2`` seconds (every call in it ends within
``call_timeout`` after connecting, so it is stuck).
"""

from __future__ import annotations

import array
import itertools
import json
import logging
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ... import errors

log = logging.getLogger(__name__)

MESSAGE_MAX = 1 << 16
"""Bytes of the largest message either side sends (settings, requests and replies are small)."""
PROCESS_MODULE = f"{__package__}.fetch_process"
"""The module the process runs (``python -m``); not imported here, so that running it does
not find it imported already."""


@dataclass(eq=False)
class _Pending:
    """A request the daemon waits on; ``reply`` is set by the receiver task."""

    done: trio.Event = field(default_factory=trio.Event)
    reply: dict[str, Any] | None = None


class FetchWorker:
    """The daemon's side of the fetch process: starts it, sends requests, matches replies.

    ``settings`` is the first message (see the module docstring); ``silence`` (seconds) is how
    long the process may owe replies without sending any before it counts as stuck and is
    killed. The process is started by :meth:`start` and again by :meth:`read_into` after it
    died.
    """

    def __init__(self, settings: Mapping[str, Any], silence: float) -> None:
        self._settings = json.dumps(dict(settings)).encode()
        self._silence = silence
        self._lock = trio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._socket: trio.socket.SocketType | None = None
        self._stopped: trio.Event | None = None
        self._owed = 0
        """Requests sent to the running process and not answered yet (also those whose
        caller gave up waiting: the process still owes their replies)."""
        self._progress = 0.0
        """trio time of the last reply, or of the request that ended a time of owing none."""
        self._closing = False

    async def start(self) -> None:
        """Start the fetch process unless one runs, and wait until it is ready (its Ice
        communicator made, its connection to the FileServer tried). Raises Unavailable when
        it cannot start or is not ready within ``silence`` seconds."""
        async with self._lock:
            if self._socket is not None:
                return
            self._closing = False
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                with theirs:
                    process = await trio.lowlevel.open_process(
                        [sys.executable, "-m", PROCESS_MODULE],
                        stdin=theirs.fileno(),
                        # Not in the daemon's process group: a Ctrl-C meant for a foreground
                        # mount must not kill calls in flight; the process ends with its socket.
                        start_new_session=True,
                    )
            except OSError as exc:
                ours.close()
                raise errors.Unavailable(f"cannot start the OMERO.fs fetch process: {exc}") from exc
            channel = trio.socket.from_stdlib_socket(ours)
            ready = b""
            try:
                await channel.send(self._settings)
                with trio.move_on_after(self._silence):
                    ready = await channel.recv(MESSAGE_MAX)
            except OSError as exc:
                log.warning("OMERO.fs fetch process %d: %s", process.pid, exc)
            finally:
                if not ready:  # it exited (its error is in our log), hangs, or we were cancelled
                    channel.close()
                    with trio.CancelScope(shield=True):
                        process.kill()
                        await process.wait()
            if not ready:
                raise errors.Unavailable(
                    f"the OMERO.fs fetch process did not start (exit status {process.returncode})"
                )
            self._socket = channel
            self._owed = 0
            self._stopped = trio.Event()
            trio.lowlevel.spawn_system_task(self._receive, process, channel, self._stopped)

    async def read_into(self, file_id: str, offset: int, size: int, fd: int, url: str) -> int:
        """Write ``size`` bytes of server file ``file_id`` from ``offset`` into local file
        ``fd`` at the same offset, in the fetch process; return how many (fewer only at EOF).

        Raises what :func:`.ice.translate` gives for the server's errors
        (NotFound, PermissionDenied, Unavailable/TimedOut, ...), NoSpace when the local disk
        is full, and Unavailable when the fetch process died or was killed as stuck meanwhile
        (the next call starts a new one).
        """
        if self._socket is None:
            await self.start()
        channel = self._socket
        if channel is None:  # it died at once
            raise errors.Unavailable("the OMERO.fs fetch process exited", url=url)
        request_id = next(self._ids)
        pending = _Pending()
        self._pending[request_id] = pending
        message = json.dumps(
            {"id": request_id, "file_id": file_id, "offset": offset, "size": size, "url": url}
        ).encode()
        try:
            if not self._owed:
                self._progress = trio.current_time()
            self._owed += 1
            try:
                await channel.sendmsg(
                    [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
                )
            except (OSError, trio.ClosedResourceError) as exc:
                self._owed -= 1
                raise errors.Unavailable(f"OMERO.fs fetch process gone ({exc})", url=url) from exc
            await pending.done.wait()
        finally:
            del self._pending[request_id]
        reply = pending.reply
        if reply is None:
            raise errors.Unavailable("the OMERO.fs fetch process exited", url=url)
        if "error" in reply:
            kind = getattr(errors, str(reply["error"]), errors.AssetFSError)
            if not (isinstance(kind, type) and issubclass(kind, errors.AssetFSError)):
                kind = errors.AssetFSError
            raise kind(str(reply["message"]), url=url)
        return int(reply["size"])

    async def _receive(
        self, process: trio.Process, channel: trio.socket.SocketType, stopped: trio.Event
    ) -> None:
        """Hand replies to their waiters until the process goes; then reap it and fail what
        is still pending (runs as a trio system task: it must not raise)."""
        try:
            while True:
                with trio.move_on_after(self._silence / 4):
                    data = await channel.recv(MESSAGE_MAX)
                    if not data:
                        break
                    self._progress = trio.current_time()
                    self._owed -= 1
                    reply = json.loads(data)
                    pending = self._pending.get(int(reply["id"]))
                    if pending is not None:
                        pending.reply = reply
                        pending.done.set()
                    continue
                if self._owed and trio.current_time() - self._progress > self._silence:
                    log.warning(
                        "OMERO.fs fetch process %d sent nothing for %gs and owes %d replies: "
                        "killed", process.pid, self._silence, self._owed)
                    process.kill()
                    break
        except Exception as exc:  # a system task must not raise: log, then clean up below
            if not self._closing:
                log.warning("OMERO.fs fetch process %d: %s", process.pid, exc)
        finally:
            if self._socket is channel:
                self._socket = None
            channel.close()
            for pending in self._pending.values():
                pending.done.set()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            if not self._closing:
                log.warning("OMERO.fs fetch process %d exited (%s); a new one starts on the "
                            "next read", process.pid, process.returncode)
            stopped.set()

    async def close(self) -> None:
        """Close our end of the socket and wait (up to 5 s, then SIGKILL) for the process to
        exit. Never raises."""
        self._closing = True
        channel, stopped = self._socket, self._stopped
        if channel is not None:
            channel.close()
        if stopped is not None:
            with trio.CancelScope(shield=True):
                await stopped.wait()
