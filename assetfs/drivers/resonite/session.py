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
from collections.abc import Mapping
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
        path = self.fixed or find_socket(self.environ)
        if path != self.socket or self._channel is None:
            self.close()
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

    async def call(self, service: str, rpc: str, request: Any, what: str, url: str) -> Any:
        """The reply of ``service``/``rpc`` (``"Inventory"``, ``"List"``) to ``request``.

        Raises what :func:`translate` gives (``what`` and ``url`` name the operation in the
        message), and :class:`~.discovery.SocketNotFound` / ``AmbiguousSocket`` when no
        single game socket is found.
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
            if isinstance(failure, errors.Unavailable) and not self.fixed:
                self.close()  # next call looks for the socket again
            raise failure from None

    def close(self) -> None:
        """Close the channel (a later call opens a new one); never raises."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
