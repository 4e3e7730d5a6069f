"""Pieces the HTTP drivers (vSphere, NodeODX) share: 1 MiB socket reads for httpx
(:class:`LargeReadBackend`) and the TLS error behind a failed connect (:func:`tls_error`)."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore


def tls_error(problem: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind an httpx connect failure (its ``__cause__`` /
    ``__context__`` chain), or None: an ``ssl.SSLCertVerificationError`` means the server's
    certificate is not trusted, another ``SSLError`` a failed handshake (often plain http)."""
    cause: BaseException | None = problem
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    return cause


class LargeReadStream(httpcore.AsyncNetworkStream):
    """A connection that receives up to ``read_size`` bytes per read, however few httpcore
    asks for.

    httpcore reads HTTP/1.1 replies 64 KiB at a time (a class constant, not an option); a
    256 MiB download then costs 4096 socket reads, each a trio checkpoint and timeout scope
    in the daemon's one trio thread: about 0.25 s of CPU on vcsim. h11 takes whatever the
    read returns, so a larger read only means fewer round trips through that code."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, read_size: int) -> None:
        self._stream = stream
        self._read_size = read_size

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``max(max_bytes, read_size)`` bytes; ``b""`` at end of stream."""
        return await self._stream.read(max(max_bytes, self._read_size), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send all of ``buffer``."""
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """The connection upgraded to TLS, still reading ``read_size`` at a time."""
        stream = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return LargeReadStream(stream, self._read_size)

    def get_extra_info(self, info: str) -> Any:
        """What the underlying stream says about ``info`` (``ssl_object``, ...)."""
        return self._stream.get_extra_info(info)


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio network backend with :class:`LargeReadStream` connections
    (``read_size`` bytes per read). A documented httpcore extension point."""

    def __init__(self, read_size: int) -> None:
        self._backend = httpcore.TrioBackend()
        self._read_size = read_size

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A TCP connection to ``host``:``port``."""
        stream = await self._backend.connect_tcp(
            host, port, timeout, local_address, socket_options
        )
        return LargeReadStream(stream, self._read_size)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A connection to the Unix socket at ``path``."""
        stream = await self._backend.connect_unix_socket(path, timeout, socket_options)
        return LargeReadStream(stream, self._read_size)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (httpcore's retry back-off)."""
        await self._backend.sleep(seconds)
