"""Moving bytes through vSphere transfer sessions: download sessions (prepare, wait for
PREPARED, GET, delete), update sessions (add, PUT, complete; remove in session) and, for
vcsim whose ``remove`` deletes the session instead of the file, rebuilding an item (see the
package docstring).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from ... import errors
from ...backoff import Backoff
from .catalog import Catalog
from .rest import CHUNK, CONTENT_API, REBUILD_PREFIX, SESSION_HEADER, HttpxBody, RestClient

log = logging.getLogger(__name__)

POLL_BACKOFF = Backoff(base=0.05, cap=2.0, floor=1.0)
"""Waits between polls of a session not PREPARED or DONE yet: 50 ms doubling to 2 s."""


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


class Transfers:
    """Download and update sessions over ``rest``; rebuilds look items up in ``catalog``.

    ``prepare_timeout`` (seconds) bounds the wait for PREPARED and DONE, sessions in use are
    kept alive every ``keepalive_interval`` seconds, ``spool_dir`` holds an item's files
    during a rebuild, ``item_type`` is the type of a rebuilt item whose own type is unknown.
    ``transfer_origin`` (``scheme://host:port``, or None) replaces the scheme, host and port
    of every upload and download URL the server hands out (``-o transfers_via_url``): the
    server names its own listen address there whatever address the client used
    (docs/backends/vsphere-content-library.md, Network faults), which a client behind a
    proxy or a NAT cannot reach.
    """

    def __init__(
        self,
        rest: RestClient,
        catalog: Catalog,
        prepare_timeout: float,
        keepalive_interval: float,
        spool_dir: str,
        item_type: str,
        transfer_origin: str | None = None,
    ) -> None:
        self._rest = rest
        self._origin = httpx.URL(transfer_origin) if transfer_origin else None
        self._catalog = catalog
        self.prepare_timeout = prepare_timeout
        self.keepalive_interval = keepalive_interval
        self.spool_dir = spool_dir
        self.item_type = item_type
        self.remove_kills_session: bool | None = None
        """None until known; True on vcsim, whose update-session ``remove`` deletes the
        session instead of the file (package docstring)."""
        self.range_honoured: bool | None = None
        """None until a ranged GET was made; then whether the server replied 206."""

    async def _wait_prepared(self, sid: str, name: str, path: str) -> str:
        """Prepare ``name`` in download session ``sid``; poll until PREPARED (at most
        ``prepare_timeout`` s) and return its download URI. Raises TimedOut, AssetFSError."""
        endpoint = f"{CONTENT_API}/library/item/downloadsession/file/id:{sid}"
        deadline = time.monotonic() + self.prepare_timeout
        action, what = "prepare", "prepare download"
        attempt = 0
        while True:
            info = await self._rest.call(
                "POST", endpoint, what, path, params={"~action": action}, body={"file_name": name}
            )
            info = info or {}
            status = str(info.get("status") or "")
            uri = (info.get("download_endpoint") or {}).get("uri")
            if status == "PREPARED" and uri:
                return self._transfer_url(str(uri))
            if status == "ERROR":
                message = (info.get("error_message") or {}).get("default_message", "")
                raise errors.AssetFSError(
                    f"download of {name!r} failed to prepare: {message}",
                    url=self._rest.describe(path),
                )
            if time.monotonic() > deadline:
                raise errors.TimedOut(
                    f"download of {name!r} not PREPARED after {self.prepare_timeout:g}s "
                    f"(status {status or 'unknown'})",
                    url=self._rest.describe(path),
                )
            await trio.sleep(POLL_BACKOFF.delay(attempt))
            attempt += 1
            action, what = "get", "download status"

    def _transfer_url(self, uri: str) -> str:
        """``uri`` as the server gave it, or moved to ``transfer_origin`` when set."""
        if self._origin is None:
            return uri
        moved = httpx.URL(uri).copy_with(
            scheme=self._origin.scheme, host=self._origin.host, port=self._origin.port
        )
        return str(moved)

    async def _end_session(self, kind: str, sid: str, path: str) -> None:
        """Delete a transfer session (``kind`` is ``download`` or ``update``) within 5 s,
        even when cancelled; failures are logged, not raised."""
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                await self._rest.call(
                    "DELETE",
                    f"{CONTENT_API}/library/item/{kind}-session/id:{sid}",
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
        with trio.move_on_after(min(5.0, self._rest.timeout)):
            try:
                await self._rest.call(
                    "POST",
                    f"{CONTENT_API}/library/item/{kind}-session/id:{sid}",
                    f"keep {kind} session alive",
                    path,
                    params={"~action": "keep-alive"},
                )
            except errors.AssetFSError as exc:
                log.debug("vsphere: %s", exc)

    @contextlib.asynccontextmanager
    async def _open_get(self, uri: str, headers: Mapping[str, str]) -> AsyncIterator[HttpxBody]:
        """A GET of a transfer endpoint, as a body read piece by piece."""
        async with self._rest.http().stream("GET", uri, headers=headers) as resp:
            yield HttpxBody(resp)

    async def download(
        self,
        item_id: str,
        name: str,
        path: str,
        expected: int | None,
        offset: int = 0,
        length: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[offset, offset+length)`` of file ``name`` of item ``item_id`` (all when
        ``length`` is None) through a download session: create, prepare, wait PREPARED, GET,
        delete. Ranged when the server honours Range, else by skipping (vcsim).
        Raises Unavailable when the body is cut short of ``expected`` bytes."""
        sid = await self._rest.call(
            "POST",
            f"{CONTENT_API}/library/item/download-session",
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
                session = await self._rest.login(stale) if stale else self._rest.session_id or ""
                headers[SESSION_HEADER] = session
                try:
                    async with self._open_get(uri, headers) as resp:
                        if resp.status == 401 and stale is None:
                            stale = session
                            continue
                        if not 200 <= resp.status < 300:
                            reply = await resp.error_response()
                            raise self._rest.error(reply, f"download {name!r}", path)
                        skip = 0
                        if ranged:
                            self.range_honoured = resp.status == 206
                            skip = 0 if self.range_honoured else offset
                        window = _Window(skip, length)
                        received, last_alive = 0, time.monotonic()
                        # Coalesce the transport's small pieces (vcsim sends ~32 KiB chunks)
                        # into CHUNK-sized ones with one join: fewer, larger cache writes.
                        pieces: list[bytes] = []
                        pending = 0
                        while piece := await resp.next_piece():
                            received += len(piece)
                            pieces.append(piece)
                            pending += len(piece)
                            if pending < CHUNK:
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
                                url=self._rest.describe(path),
                            )
                        return
                except httpx.HTTPError as exc:
                    raise self._rest.error(exc, f"download {name!r}", path) from exc
            raise errors.PermissionDenied(
                f"download {name!r}: refused after logging in again", url=self._rest.describe(path)
            )
        finally:
            await self._end_session("download", str(sid), path)

    async def _file_chunks(self, source: str, size: int) -> AsyncIterator[bytes]:
        async with await trio.open_file(source, "rb") as stream:
            left = size
            while left > 0:
                chunk = await stream.read(min(4 * CHUNK, left))
                if not chunk:
                    raise errors.AssetFSError(f"{source} is shorter than {size} bytes")
                left -= len(chunk)
                yield chunk

    async def _put(self, uri: str, source: str, size: int, name: str, path: str) -> None:
        """PUT ``size`` bytes of local file ``source`` to an upload endpoint."""
        stale: str | None = None
        for _ in range(2):
            session = await self._rest.login(stale) if stale else self._rest.session_id or ""
            try:
                resp = await self._rest.http().put(
                    uri,
                    content=self._file_chunks(source, size),
                    headers={
                        SESSION_HEADER: session,
                        "Content-Length": str(size),
                        "Content-Type": "application/octet-stream",
                    },
                )
            except httpx.HTTPError as exc:
                raise self._rest.error(exc, f"upload {name!r}", path) from exc
            if resp.status_code == 401 and stale is None:
                stale = session
                continue
            if not resp.is_success:
                raise self._rest.error(resp, f"upload {name!r}", path)
            return
        raise errors.PermissionDenied(
            f"upload {name!r}: refused after logging in again", url=self._rest.describe(path)
        )

    async def open_update(self, item_id: str, path: str) -> str:
        """Create an update session on item ``item_id``; return its id."""
        sid = await self._rest.call(
            "POST",
            f"{CONTENT_API}/library/item/update-session",
            "create update session",
            path,
            body={"create_spec": {"library_item_id": item_id}},
        )
        return str(sid)

    async def add_file(self, sid: str, name: str, source: str, size: int, path: str) -> None:
        """Add a PUSH file to update session ``sid`` and upload ``source`` to it."""
        info = (
            await self._rest.call(
                "POST",
                f"{CONTENT_API}/library/item/updatesession/file/id:{sid}",
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
                f"add {name!r}: the server gave no upload endpoint", url=self._rest.describe(path)
            )
        await self._put(self._transfer_url(str(uri)), source, size, name, path)

    async def complete(self, sid: str, path: str) -> None:
        """Complete update session ``sid``, wait (``prepare_timeout``) until DONE, delete it.

        Raises AssetFSError with the server's message when the session ends in ERROR."""
        endpoint = f"{CONTENT_API}/library/item/update-session/id:{sid}"
        # Once the bytes are sent, finishing must not be half-done by a cancellation: the
        # complete call is shielded (bounded by the call timeout); callers never cancel a
        # session after this point.
        with trio.CancelScope(shield=True):
            await self._rest.call(
                "POST", endpoint, "complete upload", path, params={"~action": "complete"}
            )
        deadline = time.monotonic() + self.prepare_timeout
        attempt = 0
        while True:
            try:
                info = await self._rest.call("GET", endpoint, "upload status", path) or {}
            except errors.NotFound:
                return  # finished sessions may be removed at once
            state = str(info.get("state") or "")
            if state in ("DONE", ""):
                await self._end_session("update", sid, path)  # vcsim keeps it for an hour
                return
            if state in ("ERROR", "CANCELED"):
                message = (info.get("error_message") or {}).get("default_message", "")
                raise errors.AssetFSError(
                    f"upload {state.lower()}: {message}", url=self._rest.describe(path)
                )
            if time.monotonic() > deadline:
                raise errors.TimedOut(
                    f"upload not DONE after {self.prepare_timeout:g}s",
                    url=self._rest.describe(path),
                )
            await trio.sleep(POLL_BACKOFF.delay(attempt))
            attempt += 1

    async def abort(self, sid: str, path: str) -> None:
        """Cancel and delete an update session (best effort, shielded, 5 s)."""
        with trio.move_on_after(5) as scope:
            scope.shield = True
            with contextlib.suppress(errors.AssetFSError):
                await self._rest.call(
                    "POST",
                    f"{CONTENT_API}/library/item/update-session/id:{sid}",
                    "cancel upload",
                    path,
                    params={"~action": "cancel"},
                )
        await self._end_session("update", sid, path)

    async def remove_in_session(self, sid: str, name: str, path: str) -> bool:
        """Remove file ``name`` within update session ``sid``. False when the server
        dropped the session instead (vcsim): nothing changed and ``sid`` is gone."""
        await self._rest.call(
            "POST",
            f"{CONTENT_API}/library/item/updatesession/file/id:{sid}",
            "remove file",
            path,
            params={"~action": "remove"},
            body={"file_name": name},
        )
        try:
            await self._rest.call(
                "GET", f"{CONTENT_API}/library/item/update-session/id:{sid}", "upload status", path
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

    async def rebuild(
        self,
        library: dict[str, Any],
        item: dict[str, Any],
        path: str,
        drop: str,
        add: tuple[str, str, int] | None,
    ) -> None:
        """Replace ``item`` by a copy without file ``drop`` and with ``add`` (name, local
        source, size): the vcsim fallback for removing a file (package docstring).

        The old item is deleted only once the copy is complete; if renaming the copy then
        fails, the error names it."""
        lid, old_id, name = str(library["id"]), str(item["id"]), str(item["name"])
        files = await self._catalog.files(item, path)
        keep = [f for f in files.values() if f.name != drop and (add is None or f.name != add[0])]
        temp = f"{REBUILD_PREFIX}{secrets.token_hex(4)}-{name}"[:200]
        new_id = await self._catalog.create_item(
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
                    stream = self.download(old_id, file.name, path, file.size)
                    async with (
                        await trio.open_file(spool, "wb") as out,
                        contextlib.aclosing(stream) as chunks,
                    ):
                        async for chunk in chunks:
                            await out.write(chunk)
                    uploads.append((file.name, spool, file.size))
                if add is not None:
                    uploads.append(add)
                if uploads:
                    sid = await self.open_update(new_id, path)
                    try:
                        for file_name, source, size in uploads:
                            await self.add_file(sid, file_name, source, size, path)
                    except BaseException:
                        await self.abort(sid, path)
                        raise
                    await self.complete(sid, path)
            await self._rest.call(
                "DELETE", f"{CONTENT_API}/library/item/id:{old_id}", "delete item", path
            )
        except BaseException:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                try:
                    await self._rest.call(
                        "DELETE", f"{CONTENT_API}/library/item/id:{new_id}", "delete item", path
                    )
                except errors.AssetFSError as exc:
                    log.warning("vsphere: could not delete scratch item %s: %s", temp, exc)
            raise
        self._catalog.forget_item(lid, name)
        try:
            await self._rest.call(
                "PATCH",
                f"{CONTENT_API}/library/item/id:{new_id}",
                "rename item",
                path,
                body={"update_spec": {"name": name}},
            )
        except errors.AssetFSError as exc:
            raise errors.AssetFSError(
                f"item {name!r} was rebuilt as {temp!r} but renaming it back failed: {exc}",
                url=self._rest.describe(path),
            ) from exc
        self._catalog.remember_item(lid, name, new_id)
