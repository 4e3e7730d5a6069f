"""The HTTP side of the NodeODX driver: the token, one ``httpx.AsyncClient``, and THE one
place where the node's replies become :mod:`assetfs.errors` types (:func:`node_error`).

The node answers almost every error with HTTP 200 and ``{"error": "..."}`` (or
``{"success": false, "error": "..."}``), so every JSON reply is inspected, not only the
status code (docs/backends/nodeodx.md, Errors). The token travels only as ``?token=``; log
lines never show a query string (:class:`RedactQuery` on the ``httpx`` and ``httpcore``
loggers).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import ssl
import stat as stat_module
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpcore
import httpx
import trio

from ... import errors
from ..http import LargeReadBackend, tls_error

log = logging.getLogger(__name__)

CHUNK = 1 << 20
"""Bytes per socket read and per piece of an uploaded file."""
TOKEN_ENV = "ASSETFS_NODEODX_TOKEN"
"""Environment variable holding the node's token (when no ``-o token_file`` is given)."""

_QUERY = re.compile(r"\?[^\s\"']*")


def redact(text: str) -> str:
    """``text`` with every URL query string replaced by ``?<redacted>``."""
    return _QUERY.sub("?<redacted>", text)


class RedactQuery(logging.Filter):
    """Rewrites a log record's message with its query strings redacted (the token is one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; only its text changes."""
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = redact(message), ()
        return True


for _name in ("httpx", "httpcore"):
    if not any(isinstance(f, RedactQuery) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(RedactQuery())


class SessionLost(errors.NotFound):
    """The node no longer knows an upload session (``Invalid uuid (not initialized)``: it
    restarted, or a failed commit deleted it)."""


class NotReady(errors.NotFound):
    """The task's archive is not available (``Asset not ready``)."""


class CannotRestart(errors.AssetFSError):
    """The node refused a restart (``Task cannot be restarted``: the task is QUEUED)."""

    errno = errno.EBUSY


def read_token(options: Mapping[str, Any]) -> str:
    """The token from ``-o token_file=PATH`` (mode 0600, owned by the caller; the first
    non-empty line, or a ``token=...`` line) or ``$ASSETFS_NODEODX_TOKEN``; "" for none.

    Raises PermissionDenied for a credentials file others can read, that is not the
    caller's or cannot be read; BadURL for ``-o token=`` (argv is visible to every user)."""
    if options.get("token") is not None:
        raise errors.BadURL(
            f"never pass the token in -o token=: use ${TOKEN_ENV} or -o token_file=PATH "
            "(a mode 0600 file)")
    path = options.get("token_file")
    if not path:
        return os.environ.get(TOKEN_ENV, "").strip()
    try:
        info = os.stat(path)
    except OSError as exc:
        raise errors.PermissionDenied(f"cannot read token file {path}: {exc.strerror}") from exc
    if info.st_mode & 0o077:
        raise errors.PermissionDenied(
            f"token file {path} has mode {stat_module.S_IMODE(info.st_mode):04o}; it must not "
            f"be readable by others: chmod 600 {path}")
    if info.st_uid != os.getuid():
        raise errors.PermissionDenied(f"token file {path} is not yours")
    with open(path, encoding="utf-8") as stream:
        lines = [line.strip() for line in stream if line.strip()]
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "token":
            return value.strip()
    if lines:
        return lines[0]
    raise errors.PermissionDenied(f"token file {path} holds no token")


def node_error(problem: Any, what: str, url: str) -> errors.AssetFSError:
    """The project's exception for a failed exchange with the node: ``problem`` is the
    ``error`` text of a JSON reply, an ``httpx.Response`` that is not the expected JSON,
    or an ``httpx`` exception. The mapping (docs/backends/nodeodx.md, Errors):

    - ``... not found`` -> NotFound; ``Invalid uuid (not initialized)`` -> SessionLost;
      ``Asset not ready`` -> NotReady; ``Invalid authentication token`` -> PermissionDenied;
      an option error (``[{"name":..,"error":..}]``) -> InvalidName (EINVAL);
      ``Task cannot be restarted`` -> CannotRestart (EBUSY); other texts -> AssetFSError;
    - HTTP 404 (an HTML page: not a NodeODX route) -> NotSupported; 5xx -> Unavailable;
    - timeouts -> TimedOut; connection and transport failures -> Unavailable; TLS
      verification failures -> AssetFSError naming ``-o ca_bundle``/``-o insecure``.
    """
    if isinstance(problem, str):
        text = problem.strip()
        message = f"{what}: {text}"
        if text.startswith("Invalid uuid (not initialized)"):
            return SessionLost(message, url=url)
        if text.endswith("not found"):
            return errors.NotFound(message, url=url)
        if text.startswith("Asset not ready"):
            return NotReady(message, url=url)
        if text.startswith("Invalid authentication token"):
            return errors.PermissionDenied(message, url=url)
        if text.startswith("[") and '"error"' in text:
            return errors.InvalidName(f"{what}: the node refused options: {text}", url=url)
        if text.startswith("Task cannot be restarted"):
            return CannotRestart(message, url=url)
        return errors.AssetFSError(message, url=url)
    if isinstance(problem, httpx.Response):
        status = problem.status_code
        if status == 404:
            return errors.NotSupported(f"{what}: HTTP 404 (is this a NodeODX node?)", url=url)
        if status >= 500:
            return errors.Unavailable(f"{what}: HTTP {status}", url=url)
        return errors.AssetFSError(f"{what}: unexpected reply (HTTP {status})", url=url)
    if isinstance(problem, httpx.TimeoutException):
        return errors.TimedOut(f"{what}: no answer in time", url=url)
    if isinstance(problem, httpx.ConnectError):
        cause = tls_error(problem)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return errors.AssetFSError(
                f"{what}: TLS certificate not trusted ({cause.verify_message}); pass "
                "-o ca_bundle=PATH or -o insecure", url=url)
        return errors.Unavailable(f"{what}: cannot connect ({redact(str(problem))})", url=url)
    if isinstance(problem, httpx.HTTPError):
        return errors.Unavailable(f"{what}: {redact(str(problem)) or type(problem).__name__}",
                                  url=url)
    return errors.AssetFSError(f"{what}: {problem}", url=url)


class NodeClient:
    """Calls to one node. ``base_url`` is ``http(s)://HOST:PORT``; ``url`` the mount URL
    (for messages); ``timeout`` seconds per HTTP call (connect, each read, each write)."""

    def __init__(self, base_url: str, url: str, token: str, timeout: float,
                 options: Mapping[str, Any]) -> None:
        self.base_url = base_url
        self.url = url
        self._token = token
        bundle = options.get("ca_bundle")
        try:
            context = ssl.create_default_context(cafile=bundle or None)
        except (OSError, ssl.SSLError) as exc:
            raise errors.AssetFSError(f"cannot load CA bundle {bundle}: {exc}") from exc
        if options.get("insecure"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        self.http = httpx.AsyncClient(base_url=base_url, verify=context, limits=limits,
                                      timeout=httpx.Timeout(timeout), follow_redirects=False)
        direct = getattr(self.http, "_transport", None)
        if isinstance(direct, httpx.AsyncHTTPTransport):
            # 1 MiB per socket read instead of httpcore's 64 KiB, as the vSphere driver
            # does (its rest.py explains the private attribute): a 512 MiB archive costs
            # 512 reads in the daemon's one trio thread instead of 8192
            direct._pool = httpcore.AsyncConnectionPool(
                ssl_context=context, max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=LargeReadBackend(CHUNK))

    def params(self, **extra: Any) -> dict[str, Any]:
        """Query parameters of a call: ``extra`` plus the token, when there is one."""
        return {**extra, "token": self._token} if self._token else dict(extra)

    async def close(self) -> None:
        """Close the connections; never raises."""
        with contextlib.suppress(httpx.HTTPError):
            await self.http.aclose()

    async def call(self, method: str, endpoint: str, what: str, path: str = "/",
                   **kwargs: Any) -> Any:
        """One request; the decoded JSON reply. Raises what :func:`node_error` gives for an
        ``error`` key, ``success: false``, a non-JSON reply or a transport failure."""
        url = self.url.rstrip("/") + path if path != "/" else self.url
        params = self.params(**kwargs.pop("params", {}))
        try:
            resp = await self.http.request(method, endpoint, params=params, **kwargs)
        except httpx.HTTPError as exc:
            raise node_error(exc, what, url) from None
        if resp.status_code != 200:
            raise node_error(resp, what, url)
        try:
            body = resp.json()
        except ValueError:
            raise node_error(resp, what, url) from None
        if isinstance(body, dict) and (body.get("error") or body.get("success") is False):
            raise node_error(str(body.get("error") or "refused"), what, url)
        return body


def file_part(field: str, name: str, source: str, size: int
              ) -> tuple[dict[str, str], AsyncIterator[bytes]]:
    """A ``multipart/form-data`` body holding local file ``source`` (``size`` bytes) as
    field ``field`` with file name ``name``: (headers, body in pieces of :data:`CHUNK`).

    httpx's own multipart encoder reads files 64 KiB at a time, 16 times the trio steps per
    byte of this one (a copy-in of 800 MiB of images is 12800 of them); the body is the
    same (RFC 7578; the file name quoted as httpx does: ``"`` as ``%22``)."""
    boundary = os.urandom(16).hex()
    quoted = name.replace("\\", "\\\\").replace('"', "%22")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{quoted}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}",
               "content-length": str(len(head) + size + len(tail))}

    async def body() -> AsyncIterator[bytes]:
        yield head
        left = size
        with open(source, "rb") as stream:
            while left > 0:
                piece = await trio.to_thread.run_sync(stream.read, min(CHUNK, left))
                if not piece:
                    raise errors.AssetFSError(f"{source} is shorter than {size} bytes")
                left -= len(piece)
                yield piece
        yield tail

    return headers, body()
