"""vSphere Content Library through its classic ``/rest`` API, with ``httpx``.

URL: ``vsphere://USER@HOST[:PORT]/`` mounts every library of the server,
``vsphere://USER@HOST/LIBRARY`` one library (``/LIBRARY/ITEM`` one item). The tree is
``/<library>/<item>/<file>``: libraries and items are folders, an item's files are files.

Options (``-o``):

- ``http``: speak plain http (the test simulator); default https, port 443 (80 with http);
- ``insecure``: do not verify the server's TLS certificate; ``ca_bundle=PATH``: trust the
  PEM certificates in PATH (a self-signed vCenter);
- ``credentials=PATH``: a file holding the password (one line, or ``password=...`` and
  optionally ``user=...`` lines); it must be mode 0600 (no group/other bits) and owned by
  the caller. Otherwise the password comes from ``$ASSETFS_VSPHERE_PASSWORD``. Never argv;
- ``call_timeout=SECONDS`` (30): the connect/read/write/pool timeout of every HTTP call
  (``-o timeout`` stays the core's per-request deadline and is not passed to drivers);
- ``prepare_timeout=SECONDS`` (120): how long a download session may take to reach
  ``PREPARED`` (a real vCenter may first pull a subscribed item);
- ``keepalive=SECONDS`` (120): transfer sessions are kept alive this often while in use;
- ``item_type=TYPE`` (``file``): the type of items created by ``mkdir``;
- ``datastore=ID``: datastore id for libraries created by ``mkdir`` at the top level (else
  the storage backing of an existing library is reused);
- ``spool_dir=PATH``: scratch space for the simulator's item rebuild (see below).

Transport: every REST call, upload and download goes through one ``httpx.AsyncClient``.

Units: sizes in bytes, times in seconds unless a name says ``_ns``.

Errors: every HTTP status, vAPI error type and transport failure is translated in one place,
:meth:`VsphereDriver._error`, into :mod:`assetfs.errors` types: 401/403 -> PermissionDenied,
404 -> NotFound, ``already_exists`` -> AlreadyExists, ``invalid_argument`` -> InvalidName,
``resource_busy``/``not_allowed_in_current_state`` -> Locked, 502/503/504, connection and
read failures -> Unavailable, timeouts -> TimedOut, TLS verification failures -> a plain
AssetFSError naming ``-o ca_bundle``/``-o insecure``.

Server quirks handled here (vcsim from govmomi 0.24.2; a real vCenter may differ):

- **No ranged read**: the download endpoint ignores ``Range`` and replies 200 with the whole
  body (chunked, no Content-Length), so ``capabilities.ranged_read`` is False and content is
  read with :meth:`~VsphereDriver.open_stream`. :meth:`~VsphereDriver.read` still works: it
  uses a 206 reply when the server honours Range and otherwise skips to ``offset``.
- **One global lock**: the simulator serves every ``/rest`` request, data transfers included,
  under one mutex, so no other call is answered while a download or upload is in flight.
  Consumers of :meth:`open_stream` should drain it promptly; the driver never makes a second
  call while it holds a transfer open (except a keep-alive, which has a short deadline).
- **No change signal**: item ``content_version``/``size``/``last_modified_time`` never change
  and files carry no checksum, so a file's ``version`` combines the file's ``version``,
  size, checksum (when given) and how many entries share its name. On vcsim a replacement
  of the same size made by another client's item rebuild is therefore not seen as a change
  (a REST re-upload is: it adds an entry); a real vCenter bumps the file's ``version``.
- **Duplicate file names**: uploading a name that exists adds a second entry (the bytes on
  disk are replaced); listings show one file per name, the last entry. A write therefore
  removes the old file in the same update session (``updatesession/file ~action=remove``).
  The simulator answers that call by deleting the whole session and never removes the
  file; the driver detects it (the session is gone) and falls back to **rebuilding the
  item**: a hidden ``.assetfs-rebuild-*`` item receives the surviving files (spooled to
  local disk, since the global lock forbids piping a download into an upload) plus the new
  one, the old item is deleted and the new one renamed. The item id changes; the cost is
  the item's size. ``rm`` of a file uses the same path.
- **PREPARED for missing files**: preparing an unknown file name succeeds and the GET then
  fails with 500, so the file is looked up before any download session is made.
- **Error shapes**: not found is 404 with a plain-text body, ``~action=get`` of an unknown
  file is 200 ``{"value": null}``, bad JSON 400 with an empty body, file system errors 500
  plain text, duplicate item names 400 ``{"type": "...already_exists"}``; empty lists come
  back as ``{"value": null}``. Duplicate library names are allowed: the oldest keeps its
  name, the others show as ``NAME~<first 8 of id>``.
- **Lists carry ids only**: a listing costs one GET per child; they run 8 at a time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import ssl
import stat as stat_module
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import trio

from .. import errors
from .base import Capabilities, Driver, Entry, Kind, split

log = logging.getLogger(__name__)

PASSWORD_ENV = "ASSETFS_VSPHERE_PASSWORD"
"""Environment variable holding the password (when no ``credentials`` file is given)."""

SESSION_HEADER = "vmware-api-session-id"
_SESSION = "/rest/com/vmware/cis/session"
_CL = "/rest/com/vmware/content"
_REBUILD_PREFIX = ".assetfs-rebuild-"
_LOGIN = "log in"
_CHUNK = 1 << 20
_LIST_PARALLEL = 8
_FALSE = {"0", "false", "no", "off"}
_T = TypeVar("_T")


def _flag(options: Mapping[str, Any], name: str) -> bool:
    """True when option ``name`` is present as a bare flag or with a true-ish value."""
    if name not in options:
        return False
    value = options[name]
    return value is None or str(value).strip().lower() not in _FALSE


def parse_time_ns(text: str | None) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time such as
    ``2026-11-22T03:10:13.493902606Z`` (nanosecond digits kept); 0 when absent or bad."""
    if not text:
        return 0
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text)
    if not match:
        return 0
    import datetime as dt

    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        when = dt.datetime.fromisoformat(base + zone)
    except ValueError:
        return 0
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(when.timestamp()) * 1_000_000_000 + nanos


@dataclass(frozen=True)
class _Where:
    """A driver path resolved to server names: ``names`` is (library, item, file)[:depth]."""

    path: str
    names: tuple[str, ...]

    @property
    def depth(self) -> int:
        """0 all libraries, 1 a library, 2 an item, 3 a file."""
        return len(self.names)


@dataclass(frozen=True)
class _File:
    """One file of an item as listed (the last entry of its name), with the entry count."""

    name: str
    size: int
    version: str
    checksum: str
    cached: bool | None
    copies: int


class _HttpxBody:
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
        """The reply with its body read, for :meth:`VsphereDriver._error`."""
        await self._resp.aread()
        return self._resp


@dataclass
class _Window:
    """Cuts ``[skip, skip+remaining)`` out of a body that arrives in pieces (``remaining``
    None: to the end). Used when a server ignores Range and sends the whole file."""

    skip: int
    remaining: int | None

    def take(self, data: bytes) -> bytes:
        """The part of the next piece ``data`` inside the window."""
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return b""
            data, self.skip = data[self.skip :], 0
        if self.remaining is not None:
            data = data[: self.remaining]
            self.remaining -= len(data)
        return data

    @property
    def done(self) -> bool:
        """True once the window is full."""
        return self.remaining == 0


class CrossLibrary(errors.NotSupported):
    """An item cannot move to another library in place (no server-side move)."""

    errno = errno.EXDEV


class VsphereDriver(Driver):
    """A vCenter content library service (or VMware's vcsim) mounted as folders.

    Construction does no I/O; :meth:`connect` logs in and checks the mounted library.
    """

    schemes = ("vsphere",)
    capabilities = Capabilities(
        writable=True,
        ranged_read=False,  # vcsim ignores Range (module docstring)
        local_path=False,
        push_events=False,
        rename=True,
    )

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        if parts.scheme.lower() not in self.schemes or not parts.hostname:
            raise errors.BadURL(f"expected vsphere://USER@HOST[:PORT]/[LIBRARY]: {url!r}")
        if parts.password is not None:
            raise errors.BadURL(
                f"put no password in the URL; use ${PASSWORD_ENV} or -o credentials=PATH"
            )
        self.user = unquote(parts.username or "")
        self.use_http = _flag(options, "http")
        scheme = "http" if self.use_http else "https"
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = parts.port or (80 if self.use_http else 443)
        self.base_url = f"{scheme}://{host}:{port}"
        self._prefix = tuple(unquote(p) for p in parts.path.split("/") if p)
        if len(self._prefix) > 2:
            raise errors.BadURL(f"a mount URL names at most /LIBRARY/ITEM: {url!r}")
        self.timeout = float(options.get("call_timeout") or 30)
        self.prepare_timeout = float(options.get("prepare_timeout") or 120)
        self.keepalive_interval = float(options.get("keepalive") or 120)
        self.item_type = options.get("item_type") or "file"
        self.datastore = options.get("datastore") or ""
        self.spool_dir = options.get("spool_dir") or tempfile.gettempdir()
        self._password: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._session: str | None = None
        self._login_lock = trio.Lock()
        self._library_ids: dict[str, str] = {}
        self._item_ids: dict[tuple[str, str], str] = {}
        self._item_locks: dict[str, trio.Lock] = {}
        self.remove_kills_session: bool | None = None
        """None until known; True on vcsim, whose update-session ``remove`` deletes the
        session instead of the file (module docstring)."""
        self.range_honoured: bool | None = None
        """None until a ranged GET was made; then whether the server replied 206."""

    # ------------------------------------------------------------------ connection --
    def _read_password(self) -> str:
        """The password from ``-o credentials=PATH`` (mode 0600) or ``$ASSETFS_VSPHERE_PASSWORD``.

        Raises PermissionDenied when there is none or the file is readable by others."""
        path = self.options.get("credentials")
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
        """The httpx client; its TLS context (system CAs, ``ca_bundle`` or ``insecure``) is
        shared with the raw download path."""
        bundle = self.options.get("ca_bundle")
        try:
            context = ssl.create_default_context(cafile=bundle or None)
        except (OSError, ssl.SSLError) as exc:
            raise errors.AssetFSError(f"cannot load CA bundle {bundle}: {exc}") from exc
        if _flag(self.options, "insecure"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._ssl_context = context
        return httpx.AsyncClient(
            base_url=self.base_url,
            verify=context,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
        )

    async def connect(self) -> None:
        """Log in, then check that the mounted library (or item) exists.

        Raises PermissionDenied (no password, wrong credentials), Unavailable (host
        unreachable), AssetFSError (TLS verification), NotFound (unknown library)."""
        if self._client is None:
            self._password = self._read_password()
            if not self.user:
                raise errors.BadURL(f"no user name: use vsphere://USER@HOST/...: {self.url!r}")
            self._client = self._make_client()
        await self._login(None)
        await super().connect()

    async def close(self) -> None:
        """Log out and close connections; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                if self._session:
                    await client.delete(_SESSION, headers={SESSION_HEADER: self._session})
            except httpx.HTTPError:
                pass
            await client.aclose()
        self._session = None

    @property
    def session_id(self) -> str | None:
        """The REST session id in use (tests expire it server-side)."""
        return self._session

    async def _login(self, stale: str | None) -> str:
        """Log in (again, if ``stale`` is still the current session) and return the id."""
        async with self._login_lock:
            if self._session is not None and self._session != stale:
                return self._session
            client = self._http()
            try:
                resp = await client.post(
                    _SESSION,
                    auth=(self.user, self._password or ""),
                    headers={"vmware-use-header-authn": "true"},
                )
            except httpx.HTTPError as exc:
                raise self._error(exc, _LOGIN) from exc
            value = self._value(resp, _LOGIN)
            if not isinstance(value, str) or not value:
                raise errors.AssetFSError("log in: the server sent no session id", url=self.url)
            if stale is not None:
                log.info("vsphere: REST session expired; logged in again at %s", self.base_url)
            self._session = value
            return value

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise errors.Unavailable("not connected", url=self.url)
        return self._client

    # ----------------------------------------------------------- error translation --
    def _error(
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
            cause: BaseException | None = problem
            while cause is not None and not isinstance(cause, ssl.SSLError):
                cause = cause.__cause__ or cause.__context__
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
            raise self._error(resp, what, path)
        if not resp.content.strip():
            return None
        try:
            body = resp.json()
        except ValueError as exc:
            raise self._error(exc, what, path) from exc
        return body.get("value") if isinstance(body, dict) else body

    async def _call(
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
            session = self._session if stale is None else await self._login(stale)
            if session is None:
                session = await self._login(None)
            try:
                resp = await self._http().request(
                    method,
                    endpoint,
                    json=body,
                    params=params,
                    headers={SESSION_HEADER: session},
                )
            except httpx.HTTPError as exc:
                raise self._error(exc, what, path) from exc
            if resp.status_code == 401 and stale is None:
                stale = session
                continue
            return self._value(resp, what, path)
        raise errors.PermissionDenied(
            f"{what}: refused after logging in again", url=self.describe(path)
        )

    async def _gather(self, fns: list[Callable[[], Awaitable[_T]]]) -> list[_T]:
        """Run ``fns`` at most ``_LIST_PARALLEL`` at a time; results in order."""
        results: list[Any] = [None] * len(fns)
        limiter = trio.CapacityLimiter(_LIST_PARALLEL)

        async def one(index: int) -> None:
            async with limiter:
                results[index] = await fns[index]()

        async with trio.open_nursery() as nursery:
            for index in range(len(fns)):
                nursery.start_soon(one, index)
        return results

    # ------------------------------------------------------------------ resolution --
    def _where(self, path: str) -> _Where:
        names = self._prefix + tuple(p for p in path.split("/") if p)
        if len(names) > 3:
            raise errors.NotFound("below a file", url=self.describe(path))
        return _Where(path, names)

    async def _library_infos(self) -> dict[str, dict[str, Any]]:
        """All libraries by shown name (duplicates as ``NAME~<id8>``, oldest plain)."""
        ids = await self._call("GET", f"{_CL}/library", "list libraries") or []

        def getter(lid: str) -> Callable[[], Awaitable[Any]]:
            return lambda: self._get_or_none(f"{_CL}/library/id:{lid}", "get library")

        infos = [i for i in await self._gather([getter(lid) for lid in ids]) if i]
        infos.sort(key=lambda i: (i.get("creation_time") or "", i.get("id") or ""))
        shown: dict[str, dict[str, Any]] = {}
        for info in infos:
            name = str(info.get("name") or info.get("id"))
            if name in shown:
                name = f"{name}~{str(info['id'])[:8]}"
            shown[name] = info
        self._library_ids = {name: str(info["id"]) for name, info in shown.items()}
        return shown

    async def _get_or_none(self, endpoint: str, what: str) -> Any:
        try:
            return await self._call("GET", endpoint, what)
        except errors.NotFound:
            return None

    async def _library(self, name: str, path: str) -> dict[str, Any]:
        """The library shown as ``name``. Raises NotFound."""
        lid = self._library_ids.get(name)
        if lid is not None:
            info = await self._get_or_none(f"{_CL}/library/id:{lid}", "get library")
            if info and name in (info.get("name"), f"{info.get('name')}~{lid[:8]}"):
                return dict(info)
        info = (await self._library_infos()).get(name)
        if info is None:
            raise errors.NotFound(f"no content library named {name!r}", url=self.describe(path))
        return dict(info)

    async def _item(self, library: dict[str, Any], name: str, path: str) -> dict[str, Any]:
        """The item ``name`` of ``library``. Raises NotFound."""
        lid = str(library["id"])
        if name.startswith(_REBUILD_PREFIX):
            raise errors.NotFound(url=self.describe(path))
        iid = self._item_ids.get((lid, name))
        if iid is not None:
            info = await self._get_or_none(f"{_CL}/library/item/id:{iid}", "get item")
            if info and info.get("name") == name and info.get("library_id") == lid:
                return dict(info)
            self._item_ids.pop((lid, name), None)
        ids = (
            await self._call(
                "POST",
                f"{_CL}/library/item",
                "find item",
                path,
                params={"~action": "find"},
                body={"spec": {"library_id": lid, "name": name}},
            )
            or []
        )
        for iid in ids:
            info = await self._get_or_none(f"{_CL}/library/item/id:{iid}", "get item")
            if info and info.get("name") == name and info.get("library_id") == lid:
                self._item_ids[(lid, name)] = str(iid)
                return dict(info)
        raise errors.NotFound(
            f"no item {name!r} in library {library.get('name')!r}", url=self.describe(path)
        )

    async def _items(self, library: dict[str, Any], path: str) -> list[dict[str, Any]]:
        lid = str(library["id"])
        ids = (
            await self._call(
                "GET", f"{_CL}/library/item", "list items", path, params={"library_id": lid}
            )
            or []
        )

        def getter(iid: str) -> Callable[[], Awaitable[Any]]:
            return lambda: self._get_or_none(f"{_CL}/library/item/id:{iid}", "get item")

        infos = [i for i in await self._gather([getter(i) for i in ids]) if i]
        infos = [i for i in infos if not str(i.get("name", "")).startswith(_REBUILD_PREFIX)]
        for info in infos:
            self._item_ids[(lid, str(info.get("name")))] = str(info["id"])
        return infos

    async def _files(self, item: dict[str, Any], path: str) -> dict[str, _File]:
        """The files of ``item`` by name; for a name listed twice (vcsim), the last entry."""
        listed = (
            await self._call(
                "GET",
                f"{_CL}/library/item/file",
                "list files",
                path,
                params={"library_item_id": str(item["id"])},
            )
            or []
        )
        files: dict[str, _File] = {}
        for raw in listed:
            name = str(raw.get("name") or "")
            if not name:
                continue
            checksum = raw.get("checksum_info") or {}
            copies = files[name].copies + 1 if name in files else 1
            files[name] = _File(
                name=name,
                size=int(raw.get("size") or 0),
                version=str(raw.get("version") or ""),
                checksum=(
                    f"{str(checksum.get('algorithm') or 'SHA1').lower()}:{checksum['checksum']}"
                    if checksum.get("checksum")
                    else ""
                ),
                cached=raw.get("cached"),
                copies=copies,
            )
        return files

    async def _resolve(
        self, where: _Where
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, _File | None]:
        """(library, item, file) infos down to ``where``'s depth. Raises NotFound."""
        library = item = None
        file = None
        if where.depth >= 1:
            library = await self._library(where.names[0], where.path)
        if where.depth >= 2 and library is not None:
            item = await self._item(library, where.names[1], where.path)
        if where.depth == 3 and item is not None:
            file = (await self._files(item, where.path)).get(where.names[2])
            if file is None:
                raise errors.NotFound(
                    f"no file {where.names[2]!r} in item {where.names[1]!r}",
                    url=self.describe(where.path),
                )
        return library, item, file

    # ------------------------------------------------------------------- entries --
    @staticmethod
    def _metadata(**values: Any) -> dict[str, str]:
        return {k: str(v) for k, v in values.items() if v not in (None, "")}

    def _library_entry(self, name: str, info: dict[str, Any]) -> Entry:
        return Entry(
            name=name,
            kind=Kind.DIR,
            mtime_ns=parse_time_ns(info.get("last_modified_time")),
            version=f"{info.get('id')}:{info.get('version') or ''}",
            mode=0o755,
            metadata=self._metadata(
                id=info.get("id"),
                type=info.get("type"),
                description=info.get("description"),
                version=info.get("version"),
            ),
        )

    def _item_entry(self, info: dict[str, Any]) -> Entry:
        return Entry(
            name=str(info.get("name")),
            kind=Kind.DIR,
            mtime_ns=parse_time_ns(info.get("last_modified_time")),
            version=f"{info.get('id')}:{info.get('content_version') or ''}:"
            f"{info.get('metadata_version') or ''}",
            mode=0o755,
            metadata=self._metadata(
                id=info.get("id"),
                type=info.get("type"),
                content_version=info.get("content_version"),
                metadata_version=info.get("metadata_version"),
                description=info.get("description"),
                size=info.get("size"),
            ),
        )

    def _file_entry(self, item: dict[str, Any], file: _File) -> Entry:
        """A file's entry. There is no per-file time, so ``mtime`` is the item's; the
        version is the file's own ``version``, size, checksum and copy count. Not the item
        id: the vcsim rebuild gives every file of the item a new one, and a sibling's
        changed version would look like a remote change to the core's write-back (a false
        conflict copy)."""
        return Entry(
            name=file.name,
            kind=Kind.FILE,
            size=file.size,
            mtime_ns=parse_time_ns(item.get("last_modified_time")),
            version=f"{file.version}:{file.size}:{file.checksum}:{file.copies}",
            mode=0o644,
            metadata=self._metadata(
                type=item.get("type"),
                content_version=item.get("content_version"),
                checksum=file.checksum,
                description=item.get("description"),
                version=file.version,
                item_id=item.get("id"),
            ),
        )

    def _root_entry(self) -> Entry:
        return Entry(name="", kind=Kind.DIR, mode=0o755)

    # ------------------------------------------------------------------ metadata --
    async def stat(self, path: str) -> Entry:
        """The entry at ``path``. Raises NotFound."""
        where = self._where(path)
        if where.depth == 0:
            await self._call("GET", f"{_CL}/library", "list libraries")
            return self._root_entry()
        library, item, file = await self._resolve(where)
        if where.depth == 1 and library is not None:
            entry = self._library_entry(where.names[0], library)
        elif where.depth == 2 and item is not None:
            entry = self._item_entry(item)
        elif item is not None and file is not None:
            entry = self._file_entry(item, file)
        else:  # pragma: no cover - _resolve raised
            raise errors.NotFound(url=self.describe(path))
        if path == "/":
            return Entry(
                "",
                entry.kind,
                entry.size,
                entry.mtime_ns,
                entry.version,
                entry.mode,
                entry.metadata,
            )
        return entry

    async def list(self, path: str) -> list[Entry]:
        """Libraries, items of a library, or files of an item. Raises NotFound,
        NotADirectory (a file)."""
        where = self._where(path)
        if where.depth == 3:
            await self._resolve(where)
            raise errors.NotADirectory(url=self.describe(path))
        if where.depth == 0:
            return [self._library_entry(n, i) for n, i in (await self._library_infos()).items()]
        library, item, _ = await self._resolve(where)
        if where.depth == 1 and library is not None:
            return [self._item_entry(i) for i in await self._items(library, path)]
        assert item is not None
        return [self._file_entry(item, f) for f in (await self._files(item, path)).values()]

    # ----------------------------------------------------------------------- data --
    async def _wait_prepared(self, sid: str, name: str, path: str) -> str:
        """Prepare ``name`` in download session ``sid``; poll until PREPARED (at most
        ``prepare_timeout`` s) and return its download URI. Raises TimedOut, AssetFSError."""
        endpoint = f"{_CL}/library/item/downloadsession/file/id:{sid}"
        info = await self._call(
            "POST",
            endpoint,
            "prepare download",
            path,
            params={"~action": "prepare"},
            body={"file_name": name},
        )
        deadline = time.monotonic() + self.prepare_timeout
        delay = 0.05
        while True:
            info = info or {}
            status = str(info.get("status") or "")
            uri = (info.get("download_endpoint") or {}).get("uri")
            if status == "PREPARED" and uri:
                return str(uri)
            if status == "ERROR":
                message = (info.get("error_message") or {}).get("default_message", "")
                raise errors.AssetFSError(
                    f"download of {name!r} failed to prepare: {message}", url=self.describe(path)
                )
            if time.monotonic() > deadline:
                raise errors.TimedOut(
                    f"download of {name!r} not PREPARED after {self.prepare_timeout:g}s "
                    f"(status {status or 'unknown'})",
                    url=self.describe(path),
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
            info = await self._call(
                "POST",
                endpoint,
                "download status",
                path,
                params={"~action": "get"},
                body={"file_name": name},
            )

    async def _end_session(self, kind: str, sid: str, path: str) -> None:
        """Delete a transfer session (``kind`` is ``download`` or ``update``) within 5 s,
        even when cancelled; failures are logged, not raised."""
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                await self._call(
                    "DELETE",
                    f"{_CL}/library/item/{kind}-session/id:{sid}",
                    f"delete {kind} session",
                    path,
                )
            except errors.NotFound:
                pass
            except errors.AssetFSError as exc:
                log.debug("vsphere: %s", exc)

    async def _keep_alive(self, kind: str, sid: str, path: str) -> None:
        """Extend a transfer session. Short deadline and errors ignored: on vcsim the
        call waits for the global lock held by the transfer itself."""
        with trio.move_on_after(min(5.0, self.timeout)):
            try:
                await self._call(
                    "POST",
                    f"{_CL}/library/item/{kind}-session/id:{sid}",
                    f"keep {kind} session alive",
                    path,
                    params={"~action": "keep-alive"},
                )
            except errors.AssetFSError as exc:
                log.debug("vsphere: %s", exc)

    @contextlib.asynccontextmanager
    async def _open_get(self, uri: str, headers: Mapping[str, str]) -> AsyncIterator[_HttpxBody]:
        """A GET of a transfer endpoint, as a body read piece by piece."""
        async with self._http().stream("GET", uri, headers=headers) as resp:
            yield _HttpxBody(resp)

    async def _download(
        self,
        item_id: str,
        name: str,
        path: str,
        expected: int | None,
        offset: int = 0,
        length: int | None = None,
    ) -> AsyncIterator[bytes]:
        """Bytes ``[offset, offset+length)`` of file ``name`` of item ``item_id`` (all when
        ``length`` is None) through a download session: create, prepare, wait PREPARED, GET,
        delete. Ranged when the server honours Range, else by skipping (vcsim).
        Raises Unavailable when the body is cut short of ``expected`` bytes."""
        sid = await self._call(
            "POST",
            f"{_CL}/library/item/download-session",
            "create download session",
            path,
            body={"create_spec": {"library_item_id": item_id}},
        )
        try:
            uri = await self._wait_prepared(str(sid), name, path)
            headers = {}
            ranged = offset > 0 or length is not None
            if ranged:
                end = "" if length is None else str(offset + length - 1)
                headers["Range"] = f"bytes={offset}-{end}"
            stale: str | None = None
            for _ in range(2):
                session = await self._login(stale) if stale else self._session or ""
                headers[SESSION_HEADER] = session
                try:
                    async with self._open_get(uri, headers) as resp:
                        if resp.status == 401 and stale is None:
                            stale = session
                            continue
                        if not 200 <= resp.status < 300:
                            reply = await resp.error_response()
                            raise self._error(reply, f"download {name!r}", path)
                        skip = 0
                        if ranged:
                            self.range_honoured = resp.status == 206
                            skip = 0 if self.range_honoured else offset
                        window = _Window(skip, length)
                        received, last_alive = 0, time.monotonic()
                        # Coalesce the transport's small pieces (vcsim sends ~32 KiB chunks)
                        # into _CHUNK-sized ones with one join: fewer, larger cache writes.
                        pieces: list[bytes] = []
                        pending = 0
                        while piece := await resp.next_piece():
                            received += len(piece)
                            pieces.append(piece)
                            pending += len(piece)
                            if pending < _CHUNK:
                                continue
                            chunk = window.take(b"".join(pieces))
                            pieces.clear()
                            pending = 0
                            if chunk:
                                yield chunk
                            if window.done:
                                return
                            if time.monotonic() - last_alive > self.keepalive_interval:
                                await self._keep_alive("download", str(sid), path)
                                last_alive = time.monotonic()
                        chunk = window.take(b"".join(pieces))
                        if chunk:
                            yield chunk
                        if not ranged and expected is not None and received != expected:
                            raise errors.Unavailable(
                                f"download of {name!r} ended at byte {received} of {expected}",
                                url=self.describe(path),
                            )
                        return
                except httpx.HTTPError as exc:
                    raise self._error(exc, f"download {name!r}", path) from exc
            raise errors.PermissionDenied(
                f"download {name!r}: refused after logging in again", url=self.describe(path)
            )
        finally:
            await self._end_session("download", str(sid), path)

    async def _file_for_read(self, path: str) -> tuple[dict[str, Any], _File]:
        where = self._where(path)
        if where.depth < 3:
            await self._resolve(where)
            raise errors.IsADirectory(url=self.describe(path))
        _, item, file = await self._resolve(where)
        assert item is not None and file is not None
        return item, file

    async def open_stream(self, path: str) -> AsyncIterator[bytes]:
        """The whole file as chunks of up to 1 MiB from offset 0, through one download
        session (deleted afterwards, also on cancellation or ``aclose``).

        Drain it promptly: vcsim answers nothing else while the transfer is open.
        Raises NotFound, IsADirectory, TimedOut (not PREPARED in time), Unavailable (cut
        short: fewer bytes than the listed size)."""
        item, file = await self._file_for_read(path)
        stream = self._download(str(item["id"]), file.name, path, file.size)
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``: one download session and one GET with Range.
        On a server that ignores Range (vcsim) the bytes before ``offset`` are read and
        dropped, so prefer :meth:`open_stream` there (``capabilities.ranged_read`` is False).
        """
        item, file = await self._file_for_read(path)
        if size <= 0 or offset >= file.size:
            return b""
        size = min(size, file.size - offset)
        stream = self._download(str(item["id"]), file.name, path, None, offset, size)
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            return b"".join([chunk async for chunk in chunks])

    # ---------------------------------------------------------------------- writes --
    def _lock(self, key: str) -> trio.Lock:
        return self._item_locks.setdefault(key, trio.Lock())

    async def _file_chunks(self, source: str, size: int) -> AsyncIterator[bytes]:
        async with await trio.open_file(source, "rb") as stream:
            left = size
            while left > 0:
                chunk = await stream.read(min(4 * _CHUNK, left))
                if not chunk:
                    raise errors.AssetFSError(f"{source} is shorter than {size} bytes")
                left -= len(chunk)
                yield chunk

    async def _put(self, uri: str, source: str, size: int, name: str, path: str) -> None:
        """PUT ``size`` bytes of local file ``source`` to an upload endpoint."""
        stale: str | None = None
        for _ in range(2):
            session = await self._login(stale) if stale else self._session or ""
            try:
                resp = await self._http().put(
                    uri,
                    content=self._file_chunks(source, size),
                    headers={
                        SESSION_HEADER: session,
                        "Content-Length": str(size),
                        "Content-Type": "application/octet-stream",
                    },
                )
            except httpx.HTTPError as exc:
                raise self._error(exc, f"upload {name!r}", path) from exc
            if resp.status_code == 401 and stale is None:
                stale = session
                continue
            if not resp.is_success:
                raise self._error(resp, f"upload {name!r}", path)
            return
        raise errors.PermissionDenied(
            f"upload {name!r}: refused after logging in again", url=self.describe(path)
        )

    async def _open_update(self, item_id: str, path: str) -> str:
        sid = await self._call(
            "POST",
            f"{_CL}/library/item/update-session",
            "create update session",
            path,
            body={"create_spec": {"library_item_id": item_id}},
        )
        return str(sid)

    async def _add_file(self, sid: str, name: str, source: str, size: int, path: str) -> None:
        """Add a PUSH file to update session ``sid`` and upload ``source`` to it."""
        info = (
            await self._call(
                "POST",
                f"{_CL}/library/item/updatesession/file/id:{sid}",
                "add file",
                path,
                params={"~action": "add"},
                body={"file_spec": {"name": name, "source_type": "PUSH", "size": size}},
            )
            or {}
        )
        uri = (info.get("upload_endpoint") or {}).get("uri")
        if not uri:
            raise errors.AssetFSError(
                f"add {name!r}: the server gave no upload endpoint", url=self.describe(path)
            )
        await self._put(str(uri), source, size, name, path)

    async def _complete(self, sid: str, path: str) -> None:
        """Complete update session ``sid``, wait (``prepare_timeout``) until DONE, delete it.

        Raises AssetFSError with the server's message when the session ends in ERROR."""
        endpoint = f"{_CL}/library/item/update-session/id:{sid}"
        # Once the bytes are sent, finishing must not be half-done by a cancellation: the
        # complete call is shielded (bounded by the call timeout); callers never cancel a
        # session after this point.
        with trio.CancelScope(shield=True):
            await self._call(
                "POST", endpoint, "complete upload", path, params={"~action": "complete"}
            )
        deadline = time.monotonic() + self.prepare_timeout
        delay = 0.05
        while True:
            try:
                info = await self._call("GET", endpoint, "upload status", path) or {}
            except errors.NotFound:
                return  # finished sessions may be removed at once
            state = str(info.get("state") or "")
            if state in ("DONE", ""):
                await self._end_session("update", sid, path)  # vcsim keeps it for an hour
                return
            if state in ("ERROR", "CANCELED"):
                message = (info.get("error_message") or {}).get("default_message", "")
                raise errors.AssetFSError(
                    f"upload {state.lower()}: {message}", url=self.describe(path)
                )
            if time.monotonic() > deadline:
                raise errors.TimedOut(
                    f"upload not DONE after {self.prepare_timeout:g}s", url=self.describe(path)
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _abort(self, sid: str, path: str) -> None:
        """Cancel and delete an update session (best effort, shielded, 5 s)."""
        with trio.move_on_after(5) as scope:
            scope.shield = True
            with contextlib.suppress(errors.AssetFSError):
                await self._call(
                    "POST",
                    f"{_CL}/library/item/update-session/id:{sid}",
                    "cancel upload",
                    path,
                    params={"~action": "cancel"},
                )
        await self._end_session("update", sid, path)

    async def _remove_in_session(self, sid: str, name: str, path: str) -> bool:
        """Remove file ``name`` within update session ``sid``. False when the server
        dropped the session instead (vcsim): nothing changed and ``sid`` is gone."""
        await self._call(
            "POST",
            f"{_CL}/library/item/updatesession/file/id:{sid}",
            "remove file",
            path,
            params={"~action": "remove"},
            body={"file_name": name},
        )
        try:
            await self._call(
                "GET", f"{_CL}/library/item/update-session/id:{sid}", "upload status", path
            )
        except errors.NotFound:
            if not self.remove_kills_session:
                log.info(
                    "vsphere: server drops the update session on file removal (vcsim); "
                    "replacing and removing files rebuild the item"
                )
            self.remove_kills_session = True
            return False
        self.remove_kills_session = False
        return True

    async def _create_item(
        self, library_id: str, name: str, item_type: str, description: str, path: str
    ) -> str:
        spec: dict[str, Any] = {"library_id": library_id, "name": name, "type": item_type}
        if description:
            spec["description"] = description
        iid = await self._call(
            "POST", f"{_CL}/library/item", "create item", path, body={"create_spec": spec}
        )
        return str(iid)

    async def _rebuild(
        self,
        library: dict[str, Any],
        item: dict[str, Any],
        path: str,
        drop: str,
        add: tuple[str, str, int] | None,
    ) -> None:
        """Replace ``item`` by a copy without file ``drop`` and with ``add`` (name, local
        source, size): the vcsim fallback for removing a file (module docstring).

        The old item is deleted only once the copy is complete; if renaming the copy then
        fails, the error names it."""
        lid, old_id, name = str(library["id"]), str(item["id"]), str(item["name"])
        files = await self._files(item, path)
        keep = [f for f in files.values() if f.name != drop and (add is None or f.name != add[0])]
        temp = f"{_REBUILD_PREFIX}{secrets.token_hex(4)}-{name}"[:200]
        new_id = await self._create_item(
            lid,
            temp,
            str(item.get("type") or self.item_type),
            str(item.get("description") or ""),
            path,
        )
        try:
            with tempfile.TemporaryDirectory(prefix="assetfs-vsphere-", dir=self.spool_dir) as d:
                uploads: list[tuple[str, str, int]] = []
                for index, file in enumerate(keep):
                    spool = os.path.join(d, str(index))
                    stream = self._download(old_id, file.name, path, file.size)
                    async with (
                        await trio.open_file(spool, "wb") as out,
                        contextlib.aclosing(stream) as chunks,  # type: ignore[type-var]
                    ):
                        async for chunk in chunks:
                            await out.write(chunk)
                    uploads.append((file.name, spool, file.size))
                if add is not None:
                    uploads.append(add)
                if uploads:
                    sid = await self._open_update(new_id, path)
                    try:
                        for file_name, source, size in uploads:
                            await self._add_file(sid, file_name, source, size, path)
                    except BaseException:
                        await self._abort(sid, path)
                        raise
                    await self._complete(sid, path)
            await self._call("DELETE", f"{_CL}/library/item/id:{old_id}", "delete item", path)
        except BaseException:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                try:
                    await self._call(
                        "DELETE", f"{_CL}/library/item/id:{new_id}", "delete item", path
                    )
                except errors.AssetFSError as exc:
                    log.warning("vsphere: could not delete scratch item %s: %s", temp, exc)
            raise
        self._item_ids.pop((lid, name), None)
        try:
            await self._call(
                "PATCH",
                f"{_CL}/library/item/id:{new_id}",
                "rename item",
                path,
                body={"update_spec": {"name": name}},
            )
        except errors.AssetFSError as exc:
            raise errors.AssetFSError(
                f"item {name!r} was rebuilt as {temp!r} but renaming it back failed: {exc}",
                url=self.describe(path),
            ) from exc
        self._item_ids[(lid, name)] = new_id

    def check_create(self, path: str, kind: Kind) -> None:
        """Files live only in items (``/LIBRARY/ITEM/FILE``) and folders only above them
        (libraries, items): anything else raises NotSupported (EOPNOTSUPP). No I/O."""
        depth = len(self._prefix) + len([p for p in path.split("/") if p])
        if kind is Kind.FILE and depth != 3:
            raise errors.NotSupported(
                "files live inside items: /LIBRARY/ITEM/FILE", url=self.describe(path)
            )
        if kind is Kind.DIR and depth == 3:
            raise errors.NotSupported(
                "an item holds files only; folders inside an item are not possible",
                url=self.describe(path),
            )
        if kind is Kind.DIR and split(path)[1].startswith(_REBUILD_PREFIX):
            raise errors.InvalidName(
                f"names starting with {_REBUILD_PREFIX} are reserved", url=self.describe(path)
            )

    async def write(self, path: str, source: str, size: int) -> Entry:
        """Upload local file ``source`` (``size`` bytes) as file ``path`` of an item,
        replacing a file of that name: one update session that removes the old file, adds
        the new one, PUTs the bytes and completes (waiting for DONE). On vcsim, replacing
        rebuilds the item (module docstring). Returns the new entry.

        Raises NotSupported for a path that is not inside an item (files live in items),
        NotFound (no such library/item), PermissionDenied, Unavailable, TimedOut."""
        where = self._where(path)
        if where.depth != 3:
            raise errors.NotSupported(
                "files live inside items: /LIBRARY/ITEM/FILE", url=self.describe(path)
            )
        library, item, _ = await self._resolve(_Where(path, where.names[:2]))
        assert library is not None and item is not None
        name = where.names[2]
        async with self._lock(str(item["id"])):
            item = await self._item(library, str(item["name"]), path)
            existing = await self._files(item, path)
            if name in existing and self.remove_kills_session:
                await self._rebuild(library, item, path, name, (name, source, size))
            else:
                sid = await self._open_update(str(item["id"]), path)
                try:
                    if name in existing and not await self._remove_in_session(sid, name, path):
                        sid = ""  # vcsim dropped it
                        await self._rebuild(library, item, path, name, (name, source, size))
                    else:
                        await self._add_file(sid, name, source, size, path)
                except BaseException:
                    if sid:
                        await self._abort(sid, path)
                    raise
                if sid:
                    await self._complete(sid, path)
            item = await self._item(library, str(item["name"]), path)
            file = (await self._files(item, path)).get(name)
            if file is None:
                raise errors.AssetFSError(
                    f"uploaded {name!r} is not listed afterwards", url=self.describe(path)
                )
            return self._file_entry(item, file)

    async def mkdir(self, path: str) -> Entry:
        """Create a library (top level; needs ``-o datastore=ID`` or an existing library
        whose storage backing is reused) or an item (type ``-o item_type``).

        Raises AlreadyExists, NotFound (no such library), NotSupported (inside an item:
        items hold files only)."""
        where = self._where(path)
        if where.depth == 0:
            raise errors.AlreadyExists(url=self.describe(path))
        if where.depth == 3:
            await self._resolve(_Where(path, where.names[:2]))
            raise errors.NotSupported(
                "an item holds files only; folders inside an item are not possible",
                url=self.describe(path),
            )
        if where.depth == 1:
            return await self._mkdir_library(where)
        library = await self._library(where.names[0], path)
        name = where.names[1]
        if name.startswith(_REBUILD_PREFIX):
            raise errors.InvalidName(
                f"names starting with {_REBUILD_PREFIX} are reserved", url=self.describe(path)
            )
        iid = await self._create_item(str(library["id"]), name, self.item_type, "", path)
        self._item_ids[(str(library["id"]), name)] = iid
        return self._item_entry(await self._item(library, name, path))

    async def _mkdir_library(self, where: _Where) -> Entry:
        path, name = where.path, where.names[0]
        libraries = await self._library_infos()
        if name in libraries:
            raise errors.AlreadyExists(url=self.describe(path))
        if self.datastore:
            backings = [{"type": "DATASTORE", "datastore_id": self.datastore}]
        else:
            backings = next(
                (
                    list(i["storage_backings"])
                    for i in libraries.values()
                    if i.get("storage_backings")
                ),
                [],
            )
        if not backings:
            raise errors.NotSupported(
                "creating a library needs a datastore: pass -o datastore=ID",
                url=self.describe(path),
            )
        await self._call(
            "POST",
            f"{_CL}/local-library",
            "create library",
            path,
            body={"create_spec": {"name": name, "type": "LOCAL", "storage_backings": backings}},
        )
        return self._library_entry(name, await self._library(name, path))

    async def remove(self, path: str, kind: Kind) -> None:
        """Delete a file (update session ``remove``; on vcsim an item rebuild), or an empty
        item or library. Raises NotFound, DirectoryNotEmpty, IsADirectory/NotADirectory
        when ``kind`` does not match, PermissionDenied (the mounted root)."""
        where = self._where(path)
        if path == "/" or where.depth == 0:
            raise errors.PermissionDenied(
                "the mounted root cannot be removed", url=self.describe(path)
            )
        library, item, _ = await self._resolve(where)
        is_file = where.depth == 3
        if kind is Kind.FILE and not is_file:
            raise errors.IsADirectory(url=self.describe(path))
        if kind is Kind.DIR and is_file:
            raise errors.NotADirectory(url=self.describe(path))
        assert library is not None
        if where.depth == 1:
            if await self._items(library, path):
                raise errors.DirectoryNotEmpty(url=self.describe(path))
            await self._call("DELETE", f"{_CL}/library/id:{library['id']}", "delete library", path)
            self._library_ids.pop(where.names[0], None)
            return
        assert item is not None
        async with self._lock(str(item["id"])):
            item = await self._item(library, where.names[1], path)
            files = await self._files(item, path)
            if where.depth == 2:
                if files:
                    raise errors.DirectoryNotEmpty(url=self.describe(path))
                await self._call(
                    "DELETE", f"{_CL}/library/item/id:{item['id']}", "delete item", path
                )
                self._item_ids.pop((str(library["id"]), where.names[1]), None)
                return
            name = where.names[2]
            if name not in files:
                raise errors.NotFound(url=self.describe(path))
            removed = False
            if not self.remove_kills_session:
                sid = await self._open_update(str(item["id"]), path)
                try:
                    removed = await self._remove_in_session(sid, name, path)
                except BaseException:
                    await self._abort(sid, path)
                    raise
                if removed:
                    await self._complete(sid, path)
            if not removed:
                await self._rebuild(library, item, path, name, None)

    async def rename(self, old: str, new: str) -> None:
        """Rename an item within its library, or a library (``PATCH ... update_spec``).

        Raises NotSupported for a file (the API cannot rename a file inside an item),
        CrossLibrary (EXDEV) for an item moved to another library, AlreadyExists when
        ``new`` is taken, NotFound."""
        src, dst = self._where(old), self._where(new)
        if src.depth != dst.depth or src.depth == 0:
            raise errors.NotSupported(
                "only items and libraries can be renamed", url=self.describe(old)
            )
        library, item, _ = await self._resolve(src)
        assert library is not None
        if src.depth == 3:
            raise errors.NotSupported(
                "the content library API cannot rename a file inside an item; copy it",
                url=self.describe(old),
            )
        if src.names == dst.names:
            return
        if src.depth == 1:
            if dst.names[0] in await self._library_infos():
                raise errors.AlreadyExists(url=self.describe(new))
            await self._call(
                "PATCH",
                f"{_CL}/library/id:{library['id']}",
                "rename library",
                old,
                body={"update_spec": {"name": dst.names[0]}},
            )
            self._library_ids.pop(src.names[0], None)
            return
        assert item is not None
        if src.names[0] != dst.names[0]:
            raise CrossLibrary(
                "items cannot move between libraries in place", url=self.describe(old)
            )
        if dst.names[1].startswith(_REBUILD_PREFIX):
            raise errors.InvalidName(url=self.describe(new))
        try:
            await self._item(library, dst.names[1], new)
        except errors.NotFound:
            pass
        else:
            raise errors.AlreadyExists(url=self.describe(new))
        async with self._lock(str(item["id"])):
            await self._call(
                "PATCH",
                f"{_CL}/library/item/id:{item['id']}",
                "rename item",
                old,
                body={"update_spec": {"name": dst.names[1]}},
            )
        lid = str(library["id"])
        self._item_ids.pop((lid, src.names[1]), None)
        self._item_ids[(lid, dst.names[1])] = str(item["id"])

    async def control(self, path: str, action: str, value: bytes) -> None:
        """``user.assetfs.description`` on a library or item sets its description.
        Raises NotSupported for other actions or for files."""
        where = self._where(path)
        if action != "description" or where.depth not in (1, 2):
            raise errors.NotSupported(f"action {action!r}", url=self.describe(path))
        library, item, _ = await self._resolve(where)
        text = value.decode("utf-8", "replace")
        if item is not None:
            await self._call(
                "PATCH",
                f"{_CL}/library/item/id:{item['id']}",
                "set description",
                path,
                body={"update_spec": {"description": text}},
            )
        elif library is not None:
            await self._call(
                "PATCH",
                f"{_CL}/library/id:{library['id']}",
                "set description",
                path,
                body={"update_spec": {"description": text}},
            )
