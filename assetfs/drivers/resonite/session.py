"""One gRPC connection to the Resonite IO mod, used from trio: calls, the status-code
translation, and finding the game again after it restarted.

grpcio's synchronous channel runs each call on grpc's own threads; :meth:`Session.call`
starts it with ``future()`` and hands the result to trio through the trio token
(design: libraries that call back on their own threads cross into trio only that way),
so no trio task ever blocks on the network and a cancelled task cancels its rpc.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import trio

from ... import errors
from . import protocol
from .discovery import find_socket

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),  # thumbnails may pass grpcio's 4 MB default
    ("grpc.max_send_message_length", -1),
]


class GameState(errors.AssetFSError):
    """FAILED_PRECONDITION: the game's state forbids the call (not signed in, no focused
    world, a world that forbids spawning)."""

    errno = errno.EPERM


def translate(error: grpc.RpcError, what: str, url: str) -> errors.AssetFSError:
    """The :mod:`assetfs.errors` type of a gRPC status, as docs/backends/resonite.md lists
    the server's codes: NOT_FOUND -> NotFound, ALREADY_EXISTS -> AlreadyExists,
    INVALID_ARGUMENT -> InvalidName, FAILED_PRECONDITION -> :class:`GameState` (EPERM),
    UNAVAILABLE and CANCELLED -> Unavailable (retried), DEADLINE_EXCEEDED -> TimedOut,
    UNIMPLEMENTED -> NotSupported, PERMISSION_DENIED/UNAUTHENTICATED -> PermissionDenied,
    INTERNAL and anything else -> AssetFSError (EIO). The message carries the server's
    status detail."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    detail = (error.details() if isinstance(error, grpc.Call) else "") or code.name
    kinds: Mapping[grpc.StatusCode, type[errors.AssetFSError]] = {
        grpc.StatusCode.NOT_FOUND: errors.NotFound,
        grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
        grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidName,
        grpc.StatusCode.FAILED_PRECONDITION: GameState,
        grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
        grpc.StatusCode.CANCELLED: errors.Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: errors.TimedOut,
        grpc.StatusCode.UNIMPLEMENTED: errors.NotSupported,
        grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
        grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied,
    }
    return kinds.get(code, errors.AssetFSError)(f"{what}: {detail}", url=url)


class Session:
    """The channel to the game's socket.

    ``socket`` fixes the path (``-o socket``); otherwise it is found with
    :func:`~.discovery.find_socket` from ``environ``, again after every UNAVAILABLE, so a
    game that restarted (a new pid, a new socket) is found without a remount.
    ``timeout`` bounds each rpc (seconds).
    """

    def __init__(self, socket: str | None, environ: Mapping[str, str], timeout: float) -> None:
        self.fixed = Path(socket) if socket else None
        self.environ = environ
        self.timeout = timeout
        self.socket: Path | None = None
        self._channel: grpc.Channel | None = None
        self._stubs: dict[str, dict[str, Any]] = {}

    def _open(self) -> dict[str, dict[str, Any]]:
        if self._channel is not None:
            return self._stubs
        path = self.fixed or find_socket(self.environ)
        if self.socket is not None and path != self.socket:
            log.warning("Resonite IO: now using socket %s", path)
        self.socket = path
        self._channel = grpc.insecure_channel(f"unix:{os.path.abspath(path)}",
                                              options=CHANNEL_OPTIONS)
        self._stubs = {
            "Inventory": protocol.client(self._channel, protocol.INVENTORY),
            "Connection": protocol.client(self._channel, protocol.CONNECTION),
            "Info": protocol.client(self._channel, protocol.INFO),
        }
        return self._stubs

    async def call(self, service: str, rpc: str, request: Any, what: str, url: str,
                   again: bool = True) -> Any:
        """The reply of ``service``/``rpc`` (``"Inventory"``, ``"List"``) to ``request``.

        After UNAVAILABLE, when the game's socket has changed (it restarted), the call is
        made once more on the new socket (``again``): the old process is gone, so it
        cannot have made the change. Raises what :func:`translate` gives (``what`` and
        ``url`` name the operation in the message), and
        :class:`~.discovery.SocketNotFound` / ``AmbiguousSocket`` when no single game
        socket is found.
        """
        stub = self._open()[service][rpc]
        future = stub.future(request, timeout=self.timeout)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        try:
            return future.result()
        except grpc.RpcError as exc:
            failure = translate(exc, what, url)
        if not isinstance(failure, errors.Unavailable) or self.fixed:
            raise failure
        used = self.socket
        self.close()  # the next call looks for the socket again
        try:
            moved = find_socket(self.environ) != used
        except errors.Unavailable:
            moved = False
        if moved and again:
            return await self.call(service, rpc, request, what, url, again=False)
        raise failure

    def stub(self, service: str, rpc: str) -> Any:
        """The callable of ``service``/``rpc`` on the current channel (found and opened
        when needed), for :func:`call_many` in a worker thread. Raises SocketNotFound,
        AmbiguousSocket."""
        return self._open()[service][rpc]

    def failed(self, failure: errors.AssetFSError) -> None:
        """A call made outside :meth:`call` failed with ``failure``: after an Unavailable
        the next call looks for the socket again."""
        if isinstance(failure, errors.Unavailable) and not self.fixed:
            self.close()

    def close(self) -> None:
        """Close the channel (a later call opens a new one); never raises."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()


def call_many(
    stub: Any,
    requests: Sequence[Any],
    in_flight: int,
    timeout: float,
    on_reply: Callable[[int, Any], None],
    what: Callable[[int], str],
    url: str,
) -> list[tuple[int, errors.AssetFSError]]:
    """Blocking (run it in a worker thread): call ``stub`` with each of ``requests``,
    ``in_flight`` at a time, each with a deadline of ``timeout`` seconds, calling
    ``on_reply(index, reply)`` in this thread as replies arrive (in completion order).
    Returns the failures as ``(index, error)`` translated by :func:`translate` (``what``
    names request ``index`` in the message).

    One thread keeping a window of grpc futures open is what a direct grpcio client does
    for the same work; per-call hand-offs to trio cost more than the calls themselves.
    """
    finished: queue.SimpleQueue[tuple[int, grpc.Future[Any]]] = queue.SimpleQueue()
    failures: list[tuple[int, errors.AssetFSError]] = []
    queued = iter(enumerate(requests))
    running = 0

    def launch() -> bool:
        step = next(queued, None)
        if step is None:
            return False
        index, request = step
        future = stub.future(request, timeout=timeout)
        future.add_done_callback(lambda f, i=index: finished.put((i, f)))
        return True

    while running < in_flight and launch():
        running += 1
    while running:
        index, future = finished.get()
        running -= 1
        if launch():
            running += 1
        try:
            reply = future.result()
        except grpc.RpcError as exc:
            failures.append((index, translate(exc, what(index), url)))
            continue
        on_reply(index, reply)
    return failures
