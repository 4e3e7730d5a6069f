"""The REST session of the vSphere driver: login (again on 401), calls with deadlines, and
the one place where HTTP statuses, vAPI error types and transport failures become
:mod:`assetfs.errors` types (:meth:`RestClient.error`).
"""

from __future__ import annotations

import logging
import os
import ssl
import stat as stat_module
from collections.abc import Callable, Mapping
from typing import Any

import httpcore
import httpx
import trio

from ... import errors
from ..http import LargeReadBackend, tls_error

log = logging.getLogger(__name__)

PASSWORD_ENV = "ASSETFS_VSPHERE_PASSWORD"
"""Environment variable holding the password (when no ``credentials`` file is given)."""

SESSION_HEADER = "vmware-api-session-id"
SESSION_API = "/rest/com/vmware/cis/session"
CONTENT_API = "/rest/com/vmware/content"
REBUILD_PREFIX = ".assetfs-rebuild-"
_LOGIN = "log in"
CHUNK = 1 << 20


class HttpxBody:
    """A streamed httpx GET reply, read piece by piece."""

    def __init__(self, resp: httpx.Response) -> None:
        self.status = resp.status_code
        self._resp = resp
        self._pieces = resp.aiter_raw().__aiter__()

    async def next_piece(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        try:
            return await self._pieces.__anext__()
        except StopAsyncIteration:
            return b""

    async def error_response(self) -> httpx.Response:
        """The reply with its body read, for :meth:`RestClient.error`."""
        await self._resp.aread()
        return self._resp


class RestClient:
    """One REST session with a vCenter (or vcsim) at ``base_url`` (``https://HOST:PORT``).

    ``user`` is the login name (a credentials file may give it); ``options`` the mount's
    ``-o`` options (``credentials``, ``ca_bundle``, ``insecure``); ``timeout`` (seconds)
    bounds every HTTP call; ``describe`` maps a driver path to the URL errors name.
    Construction does no I/O: :meth:`open` logs in.
    """

    def __init__(
        self,
        base_url: str,
        user: str,
        options: Mapping[str, Any],
        timeout: float,
        describe: Callable[[str], str],
    ) -> None:
        self.base_url = base_url
        self.user = user
        self.timeout = timeout
        self.describe = describe
        self._options = options
        self._password: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._session: str | None = None
        self._login_lock = trio.Lock()

    async def open(self) -> None:
        """Read the password, make the HTTP client (once) and log in.

        Raises PermissionDenied (no password, wrong credentials), BadURL (no user name),
        Unavailable (host unreachable), AssetFSError (TLS verification)."""
        if self._client is None:
            self._password = self._read_password()
            if not self.user:
                raise errors.BadURL(
                    f"no user name: use vsphere://USER@HOST/...: {self.describe('/')!r}"
                )
            self._client = self._make_client()
        await self.login(None)

    async def close(self) -> None:
        """Log out and close connections; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                if self._session:
                    await client.delete(SESSION_API, headers={SESSION_HEADER: self._session})
            except httpx.HTTPError:
                pass
            await client.aclose()
        self._session = None

    def _read_password(self) -> str:
        """The password from ``-o credentials=PATH`` (mode 0600) or ``$ASSETFS_VSPHERE_PASSWORD``.

        Raises PermissionDenied when there is none or the file is readable by others."""
        path = self._options.get("credentials")
        if path:
            try:
                info = os.stat(path)
            except OSError as exc:
                raise errors.PermissionDenied(
                    f"cannot read credentials file {path}: {exc.strerror}"
                ) from exc
            if info.st_mode & 0o077:
                raise errors.PermissionDenied(
                    f"credentials file {path} has mode {stat_module.S_IMODE(info.st_mode):04o};"
                    f" it must not be readable by others: chmod 600 {path}"
                )
            if info.st_uid != os.getuid():
                raise errors.PermissionDenied(f"credentials file {path} is not yours")
            with open(path, encoding="utf-8") as stream:
                lines = [line.strip() for line in stream if line.strip()]
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            if "password" in fields:
                if not self.user and fields.get("user"):
                    self.user = fields["user"].strip()
                return fields["password"].strip()
            if lines:
                return lines[0]
            raise errors.PermissionDenied(f"credentials file {path} holds no password")
        password = os.environ.get(PASSWORD_ENV)
        if password:
            return password
        raise errors.PermissionDenied(
            f"no password: set ${PASSWORD_ENV} or pass -o credentials=PATH (a mode 0600 file)"
        )

    def _make_client(self) -> httpx.AsyncClient:
        """The httpx client: TLS from the system CAs, ``ca_bundle`` or ``insecure``; proxies
        from the environment as httpx applies them; direct connections read :data:`CHUNK`
        bytes at a time (:class:`~assetfs.drivers.http.LargeReadStream`).

        httpx 0.28 takes no network backend, so the client's direct transport gets an
        httpcore pool built with the client's limits plus :class:`LargeReadBackend`
        (``_transport`` and ``_pool`` are private to httpx; were they renamed, the client
        would keep its own pool and only the read size would fall back to 64 KiB)."""
        bundle = self._options.get("ca_bundle")
        try:
            context = ssl.create_default_context(cafile=bundle or None)
        except (OSError, ssl.SSLError) as exc:
            raise errors.AssetFSError(f"cannot load CA bundle {bundle}: {exc}") from exc
        if self._options.get("insecure"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx default
        client = httpx.AsyncClient(
            base_url=self.base_url,
            verify=context,
            limits=limits,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
        )
        direct = getattr(client, "_transport", None)
        if isinstance(direct, httpx.AsyncHTTPTransport):
            direct._pool = httpcore.AsyncConnectionPool(
                ssl_context=context,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=LargeReadBackend(CHUNK),
            )
        return client

    @property
    def session_id(self) -> str | None:
        """The REST session id in use (tests expire it server-side)."""
        return self._session

    async def login(self, stale: str | None) -> str:
        """Log in (again, if ``stale`` is still the current session) and return the id."""
        async with self._login_lock:
            if self._session is not None and self._session != stale:
                return self._session
            client = self.http()
            try:
                resp = await client.post(
                    SESSION_API,
                    auth=(self.user, self._password or ""),
                    headers={"vmware-use-header-authn": "true"},
                )
            except httpx.HTTPError as exc:
                raise self.error(exc, _LOGIN) from exc
            value = self._value(resp, _LOGIN)
            if not isinstance(value, str) or not value:
                raise errors.AssetFSError(
                    "log in: the server sent no session id", url=self.describe("/")
                )
            if stale is not None:
                log.info("vsphere: REST session expired; logged in again at %s", self.base_url)
            self._session = value
            return value

    def http(self) -> httpx.AsyncClient:
        """The HTTP client; raises Unavailable before :meth:`open` and after :meth:`close`."""
        if self._client is None:
            raise errors.Unavailable("not connected", url=self.describe("/"))
        return self._client

    def error(
        self, problem: httpx.Response | Exception, what: str, path: str = "/"
    ) -> errors.AssetFSError:
        """The project's exception for a failed HTTP exchange: THE one place where this
        driver translates wire-level errors (module docstring lists the mapping).

        ``problem`` is a non-2xx response (its body already read), an ``httpx`` exception
        or a ``ValueError`` from a reply that is not the expected JSON."""
        url = self.describe(path)
        if isinstance(problem, httpx.TimeoutException):
            return errors.TimedOut(f"{what}: no answer from {self.base_url} in time", url=url)
        if isinstance(problem, httpx.ConnectError):
            cause = tls_error(problem)
            if isinstance(cause, ssl.SSLCertVerificationError):
                return errors.AssetFSError(
                    f"{what}: TLS certificate of {self.base_url} not trusted "
                    f"({cause.verify_message}); pass -o ca_bundle=PATH or -o insecure",
                    url=url,
                )
            if isinstance(cause, ssl.SSLError):
                return errors.AssetFSError(
                    f"{what}: TLS handshake with {self.base_url} failed ({cause.reason}); "
                    "is it http? then pass -o http",
                    url=url,
                )
            text = str(problem) or repr(problem.__cause__ or problem.__context__)
            return errors.Unavailable(f"{what}: cannot reach {self.base_url}: {text}", url=url)
        if isinstance(problem, httpx.TransportError):
            return errors.Unavailable(
                f"{what}: connection to {self.base_url} failed: "
                f"{problem.__class__.__name__}: {problem}",
                url=url,
            )
        if isinstance(problem, httpx.HTTPError):
            return errors.AssetFSError(f"{what}: {problem}", url=url)
        if isinstance(problem, ValueError):
            return errors.AssetFSError(f"{what}: unexpected reply: {problem}", url=url)
        if not isinstance(problem, httpx.Response):
            return errors.AssetFSError(f"{what}: {problem}", url=url)
        status = problem.status_code
        kind, message = "", ""
        try:
            body = problem.json()
            if isinstance(body, dict):
                kind = str(body.get("type") or "")
                value = body.get("value")
                if isinstance(value, dict):
                    kind = kind or str(value.get("error_type") or "")
                    messages = value.get("messages") or []
                    message = "; ".join(
                        str(m.get("default_message", m)) if isinstance(m, dict) else str(m)
                        for m in messages
                    )
        except (ValueError, UnicodeDecodeError):
            message = problem.text.strip()[:200]
        kind = kind.rsplit(".", 1)[-1].lower()
        detail = (
            f"{what}: HTTP {status}"
            + (f" {kind}" if kind else "")
            + (f": {message}" if message else "")
        )
        by_kind: dict[str, type[errors.AssetFSError]] = {
            "already_exists": errors.AlreadyExists,
            "not_found": errors.NotFound,
            "invalid_argument": errors.InvalidName,
            "invalid_element_type": errors.InvalidName,
            "unauthorized": errors.PermissionDenied,
            "unauthenticated": errors.PermissionDenied,
            "resource_busy": errors.Locked,
            "concurrent_change": errors.Locked,
            "not_allowed_in_current_state": errors.Locked,
            "unsupported": errors.NotSupported,
            "service_unavailable": errors.Unavailable,
            "timed_out": errors.TimedOut,
        }
        if kind in by_kind:
            return by_kind[kind](detail, url=url)
        if status in (401, 403) and what == _LOGIN:
            return errors.PermissionDenied(
                f"login refused for user {self.user!r} (wrong user name or password)",
                url=self.base_url,
            )
        if status in (401, 403):
            return errors.PermissionDenied(detail, url=url)
        if status == 404:
            return errors.NotFound(detail, url=url)
        if status == 409:
            return errors.AlreadyExists(detail, url=url)
        if status in (502, 503, 504, 429):
            return errors.Unavailable(detail, url=url)
        if status == 500 and "no such file" in message.lower():
            return errors.NotFound(detail, url=url)
        return errors.AssetFSError(detail, url=url)

    def _value(self, resp: httpx.Response, what: str, path: str = "/") -> Any:
        """The ``value`` of a 2xx ``{"value": ...}`` reply (None for an empty body);
        raises the translated error for any other reply."""
        if not resp.is_success:
            raise self.error(resp, what, path)
        if not resp.content.strip():
            return None
        try:
            body = resp.json()
        except ValueError as exc:
            raise self.error(exc, what, path) from exc
        return body.get("value") if isinstance(body, dict) else body

    async def call(
        self,
        method: str,
        endpoint: str,
        what: str,
        path: str = "/",
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One REST call with the session header; logs in again once on 401.

        Returns the reply's ``value``. Every call is bounded by ``timeout``."""
        stale: str | None = None
        for _ in range(2):
            session = self._session if stale is None else await self.login(stale)
            if session is None:
                session = await self.login(None)
            try:
                resp = await self.http().request(
                    method,
                    endpoint,
                    json=body,
                    params=params,
                    headers={SESSION_HEADER: session},
                )
            except httpx.HTTPError as exc:
                raise self.error(exc, what, path) from exc
            if resp.status_code == 401 and stale is None:
                stale = session
                continue
            return self._value(resp, what, path)
        raise errors.PermissionDenied(
            f"{what}: refused after logging in again", url=self.describe(path)
        )
