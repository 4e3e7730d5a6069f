"""ZeroC Ice plumbing of the OMERO.fs driver, shared by the daemon and the fetch process:
the communicator's properties, the one translation of Ice and OMERO.fs errors, and
:class:`IceSession`, which awaits Ice's asynchronous calls from trio.

Facts it relies on are in docs/omerofs.md (error shapes, float mtimes, message size).
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Mapping
from typing import Any

import Ice
import omero
import omero_FS_ice  # noqa: F401  (omero.grid.monitors)
import trio

from ... import errors
from ...bridge import Handoff

log = logging.getLogger(__name__)

monitors: Any = omero.grid.monitors  # the generated Ice module

KiB = 1024
MiB = 1024 * KiB

_ERRNO = re.compile(r"\[Errno (\d+)\]")
_BY_ERRNO: dict[int, type[errors.AssetFSError]] = {
    errno.ENOENT: errors.NotFound,
    errno.EPERM: errors.PermissionDenied,
    errno.EACCES: errors.PermissionDenied,
    errno.ENOTDIR: errors.NotADirectory,
    errno.EISDIR: errors.IsADirectory,
    errno.EINVAL: errors.InvalidName,
    errno.ENAMETOOLONG: errors.InvalidName,
    errno.EIO: errors.Unavailable,  # EIO on the server's disk: maybe transient
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


def float_ns(seconds: float) -> int:
    """An Ice ``float`` time in seconds (32-bit: 128 s steps) as integer nanoseconds."""
    return round(float(seconds)) * 1_000_000_000


def ice_properties(
    block_size: int, connect_timeout: float, locator: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The communicator properties of a mount: a message limit that fits replies of
    ``block_size`` bytes, the connect timeout (seconds), the IceGrid ``locator`` (may be
    empty), then the user's ``Ice.*``/``IceSSL.*`` options in ``extra``, which win."""
    size_kb = max(1024, (block_size + MiB - 1) // KiB + 64)
    props = {
        # Replies carry up to block_size bytes plus a small header.
        "Ice.MessageSizeMax": str(size_kb),
        "Ice.Override.ConnectTimeout": str(int(connect_timeout * 1000)),
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
    if locator:
        props["Ice.Default.Locator"] = locator
    props.update(extra)
    return props


def new_communicator(properties: Mapping[str, str]) -> Any:
    """An Ice communicator with ``properties`` (the daemon's and the fetch process's)."""
    init = Ice.InitializationData()
    init.properties = Ice.createProperties()
    for key, value in properties.items():
        init.properties.setProperty(key, value)
    return Ice.initialize(init)


class IceSession:
    """One Ice communicator of the daemon with its proxies: ``fs`` (the FileServer, calls
    bounded by ``call_timeout`` seconds), ``fs_sha1`` (the same, bounded by ``sha1_timeout``)
    and ``ms`` (the MonitorServer; None when ``ms_proxy`` is empty).

    Construction makes no network call (Ice connects on the first call). Raises BadURL for
    a proxy string Ice cannot parse.
    """

    def __init__(
        self,
        properties: Mapping[str, str],
        fs_proxy: str,
        ms_proxy: str,
        call_timeout: float,
        sha1_timeout: float,
    ) -> None:
        self.call_timeout = call_timeout
        self.sha1_timeout = sha1_timeout
        self.communicator = new_communicator(properties)
        try:
            fs = monitors.FileServerPrx.uncheckedCast(self.communicator.stringToProxy(fs_proxy))
            self.fs = fs.ice_invocationTimeout(int(call_timeout * 1000))
            self.fs_sha1 = fs.ice_invocationTimeout(int(sha1_timeout * 1000))
            self.ms: Any = None
            if ms_proxy:
                ms = monitors.MonitorServerPrx.uncheckedCast(
                    self.communicator.stringToProxy(ms_proxy)
                )
                self.ms = ms.ice_invocationTimeout(int(call_timeout * 1000))
        except Ice.ProxyParseException as exc:
            self.communicator.destroy()  # nothing was called yet: returns at once
            raise errors.BadURL(f"bad Ice proxy string: {exc.str}") from exc

    async def call(self, prx: Any, op: str, *args: Any, url: str) -> Any:
        """Run ``prx.op(*args)`` as an Ice asynchronous call and await its result in trio.

        The answer arrives on an Ice client thread, which only hands it over (never
        blocking). The proxy carries the invocation timeout; a trio deadline 5 s longer
        backs it up (TimedOut). Errors go through :func:`translate` with ``url``.
        """
        answer: Handoff[Any] = Handoff()

        def response(*result: Any) -> None:
            answer.set_result(result[0] if len(result) == 1 else result or None)

        try:
            getattr(prx, "begin_" + op)(*args, _response=response, _ex=answer.set_exception)
        except Exception as exc:  # Ice may fail synchronously (e.g. destroyed communicator)
            raise translate(exc, url) from exc
        backstop = max(self.call_timeout, self.sha1_timeout if op == "getSHA1" else 0) + 5
        with trio.move_on_after(backstop):
            try:
                return await answer.wait()
            except Exception as exc:
                raise translate(exc, url) from exc
        raise errors.TimedOut(f"{op}: no answer in {backstop:g}s", url=url)

    @staticmethod
    def connection_name(prx: Any) -> str:
        """The name of the connection ``prx`` uses now ("" when none): a new name means the
        server was restarted (or the connection was lost and made again)."""
        connection = prx.ice_getCachedConnection() if prx is not None else None
        return connection.toString() if connection is not None else ""

    async def close(self) -> None:
        """Destroy the communicator, in a worker thread (destroy waits for pending calls).
        Never raises."""
        try:
            await trio.to_thread.run_sync(self.communicator.destroy)
        except Exception as exc:
            log.debug("Ice communicator destroy: %s", exc)
