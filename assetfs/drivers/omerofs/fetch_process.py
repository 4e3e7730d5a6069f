"""The OMERO.fs fetch process itself (``python -m assetfs.drivers.omerofs.fetch_process``,
started by :class:`.fetch.FetchWorker`, whose module docstring gives the protocol): serves
``readBlock`` requests from its standard input, a socket, and writes the bytes into the
file descriptors that come with them."""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ... import errors
from ...localio import pwrite_all
from .fetch import MESSAGE_MAX
from .ice import monitors, new_communicator, translate


@dataclass(eq=False)
class _Job:
    """One request being served: ``parts`` readBlock calls still to finish."""

    request_id: int
    file_id: str
    offset: int
    url: str
    fd: int
    parts: int
    received: dict[int, int] = field(default_factory=dict)
    error: errors.AssetFSError | None = None


class _Fetcher:
    """Serves requests in one thread: keeps ``parallel`` ``readBlock`` calls in flight (Ice
    asynchronous invocations, in request order), collects each reply in turn and writes it
    into its request's file; the last call of a request sends its reply. Requests are taken
    from the socket between calls. One Python thread, so no GIL hand-offs: measured, one thread
    per call in flight cost the process half again as much CPU per MiB, and one plain call at a
    time leaves the server idle while we write."""

    def __init__(self, settings: Mapping[str, Any], channel: socket.socket) -> None:
        self._communicator = new_communicator(settings["properties"])
        proxy = monitors.FileServerPrx.uncheckedCast(
            self._communicator.stringToProxy(settings["proxy"])
        )
        self._proxy = proxy.ice_invocationTimeout(int(float(settings["call_timeout"]) * 1000))
        self._block = int(settings["block_size"])
        self._parallel = int(settings["parallel"])
        self._channel = channel
        self._waiting: collections.deque[tuple[_Job, int, int]] = collections.deque()
        self._in_flight: collections.deque[tuple[_Job, int, Any]] = collections.deque()

    def connect(self) -> None:
        """Open the connection to the FileServer now, so the first read does not wait for it
        (best effort: a server that is down now is retried by every call)."""
        with contextlib.suppress(Exception):
            self._proxy.ice_getConnection()

    def serve(self) -> None:
        """Serve requests until the socket reports end-of-file, then return."""
        while True:
            idle = not (self._waiting or self._in_flight)
            while True:  # take every request that has arrived; wait for one only when idle
                # (recv_fds ignores its flags argument in Python 3.11: no MSG_DONTWAIT)
                self._channel.setblocking(idle)
                try:
                    message, fds, _flags, _address = socket.recv_fds(self._channel, MESSAGE_MAX, 1)
                except BlockingIOError:
                    break
                if not message:
                    return
                if fds:
                    self._submit(json.loads(message), fds[0])
                idle = False
            while self._waiting and len(self._in_flight) < self._parallel:
                job, start, want = self._waiting.popleft()
                try:
                    call = self._proxy.begin_readBlock(job.file_id, start, want)
                except Exception as exc:  # Ice may fail at once (e.g. destroyed communicator)
                    call = exc
                self._in_flight.append((job, start, call))
            if self._in_flight:
                self._collect(*self._in_flight.popleft())

    def _submit(self, request: Mapping[str, Any], fd: int) -> None:
        """Queue the ``readBlock`` calls of one request (owning ``fd`` from now on)."""
        offset, size = int(request["offset"]), int(request["size"])
        starts = range(offset, offset + size, self._block)
        job = _Job(int(request["id"]), str(request["file_id"]), offset, str(request["url"]), fd,
                   parts=len(starts))
        if not starts:
            self._finish(job)
        self._waiting.extend((job, s, min(self._block, offset + size - s)) for s in starts)

    def _collect(self, job: _Job, start: int, call: Any) -> None:
        """Wait for one call's reply and write it into its request's file."""
        size, error = 0, None
        try:
            if isinstance(call, Exception):
                raise call
            data = self._proxy.end_readBlock(call)
            pwrite_all(job.fd, data, start)
            size = len(data)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            error = (errors.NoSpace if full else errors.AssetFSError)(f"cache file: {exc}")
        except Exception as exc:  # an Ice or OMERO.fs error: translate() knows them all
            error = translate(exc, job.url)
        job.received[start] = size
        if error is not None and job.error is None:
            job.error = error
        job.parts -= 1
        if not job.parts:
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        """Reply (bytes written from the start up to the first short part, or the first
        error) and close the request's file."""
        os.close(job.fd)
        reply: dict[str, Any] = {"id": job.request_id}
        if job.error is not None:
            reply["error"] = type(job.error).__name__
            reply["message"] = job.error.args[0] if job.error.args else ""
        else:
            position = job.offset
            while position in job.received:
                got = job.received[position]
                position += got
                if got < self._block:
                    break
            reply["size"] = position - job.offset
        with contextlib.suppress(OSError):  # the daemon is gone: main() is about to exit
            self._channel.send(json.dumps(reply).encode())


def main() -> None:
    """Entry point of the fetch process (standard input being its socket). Exits 0 when the
    socket closes."""
    logging.basicConfig(level=logging.WARNING, format="fetch process: %(levelname)s %(message)s")
    channel = socket.socket(fileno=0)
    first = channel.recv(MESSAGE_MAX)
    if not first:
        return
    fetcher = _Fetcher(json.loads(first), channel)
    fetcher.connect()
    channel.send(b'{"ready": true}')
    fetcher.serve()
    # The daemon closed its end or died: calls still in flight have no one to report to.
    # Leave without waiting for them (destroying the communicator would).
    os._exit(0)


if __name__ == "__main__":
    main()
