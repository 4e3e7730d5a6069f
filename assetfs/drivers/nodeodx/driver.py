"""The NodeODX driver: tasks as folders, synthesized files, staged tasks (see the package
docstring for the tree, options and quirks)."""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import logging
import shutil
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import trio

from ... import bounded, errors
from ... import options as opt
from ...config import default_cache_root, mount_id
from ..base import Capabilities, Driver, Entry, Kind, LocalRange, ReadMode
from .archive import Archives, Member
from .client import (
    TOKEN_ENV,
    NodeClient,
    NotReady,
    SessionLost,
    file_part,
    node_error,
    read_token,
)
from .staging import COMMIT_FILE, OPTIONS_FILE, Staged, parse_options, stored_name
from .tasks import FINISHED_WITH_RESULTS, NODE_DIR, Rendered, TaskState, folder_names

log = logging.getLogger(__name__)
INFO, CONSOLE, ARCHIVE, RESULTS = "info.json", "console.txt", "all.zip", "results"
HIDE_SECONDS = 60.0
"""How long a file removed inside a task stays hidden (so ``rm -r`` can empty it)."""
LIST_PARALLEL = 8
"""Task infos fetched at once while listing the top level."""


def _dir(name: str, mtime_ns: int = 0, **metadata: str) -> Entry:
    return Entry(name=name, kind=Kind.DIR, mtime_ns=mtime_ns, mode=0o755, metadata=metadata)


def _member_entry(task: TaskState, name: str, member: Member) -> Entry:
    """A file of ``results/``: its size, time and CRC-32 as the archive gives them."""
    return Entry(name=name, kind=Kind.FILE, size=member.size, mtime_ns=member.mtime_ns,
                 version=f"{task.uuid}:{member.crc:08x}:{member.size}")


class NodeODXDriver(Driver):
    """A NodeODX (or NodeODM) processing node mounted as a folder of tasks.

    Construction does no I/O; :meth:`connect` reads the token, asks ``/info`` (checking the
    token) and ``/options``."""

    schemes = ("nodeodx", "nodeodxs")
    capabilities = Capabilities(writable=True, read_mode=ReadMode.STREAM, push_events=False,
                                rename=False)
    poll_interval = 2.0
    declared_options: ClassVar[tuple[opt.Option, ...]] = (
        opt.Option("token_file", opt.text, "",
                   f"a mode 0600 file holding the node's token (else ${TOKEN_ENV})"),
        opt.Option("token", opt.text, None, "refused: a token in argv is visible to all"),
        opt.Option("poll_finished", opt.seconds, 30.0,
                   "how long the info of a finished task is kept"),
        opt.Option("call_timeout", opt.seconds, 30.0, "timeout of every HTTP call"),
        opt.Option("spool_dir", opt.text, "", "where result archives are downloaded"),
        opt.Option("insecure", opt.boolean, False, "do not verify the node's TLS certificate"),
        opt.Option("ca_bundle", opt.text, "", "trust the PEM certificates in this file"),
    )

    def __init__(self, url: str, options: Mapping[str, str]) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in self.schemes or not parts.hostname:
            raise errors.BadURL(f"expected nodeodx://HOST:PORT/ or nodeodxs://HOST:PORT/: "
                                f"{parts.scheme}://{parts.hostname}")
        if parts.query or parts.username or parts.password:
            raise errors.BadURL(
                f"put no token or user in the URL (it would show in ps and logs); use "
                f"${TOKEN_ENV} or -o token_file=PATH")
        if parts.path.strip("/"):
            raise errors.BadURL("a NodeODX URL names a node only: nodeodx://HOST:PORT/")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = parts.port or (443 if scheme == "nodeodxs" else 3000)
        self.url = f"{scheme}://{host}:{port}/"
        self.base_url = f"{'https' if scheme == 'nodeodxs' else 'http'}://{host}:{port}"
        self.poll_finished = float(self.options["poll_finished"])
        self.call_timeout = float(self.options["call_timeout"])
        spool = self.options["spool_dir"]
        self.spool = Path(spool) if spool else (
            default_cache_root() / f"nodeodx-spool-{mount_id(self.url)}")
        self._client: NodeClient | None = None
        self._archives: Archives | None = None
        self._tasks: dict[str, TaskState] = {}
        self._folders: dict[str, str] = {}
        self._listed_at = -1e9
        self._list_lock = trio.Lock()
        self._staged: dict[str, Staged] = {}
        self._offered: list[dict[str, Any]] = []
        self._node_files = {INFO: Rendered(), "options.json": Rendered()}
        self._started_ns = time.time_ns()
        """Shown as the time of the top folder and of ``.node``."""

    # --- connection ---------------------------------------------------------------
    @property
    def client(self) -> NodeClient:
        """The HTTP client (after :meth:`connect`). Raises Unavailable before."""
        if self._client is None:
            raise errors.Unavailable("not connected", url=self.url)
        return self._client

    @property
    def archives(self) -> Archives:
        """The result archive downloads (after :meth:`connect`)."""
        if self._archives is None:
            raise errors.Unavailable("not connected", url=self.url)
        return self._archives

    async def connect(self) -> None:
        """Read the token, check the node (``/info``: PermissionDenied for a wrong token,
        Unavailable when unreachable, NotSupported when it is no NodeODX node) and read
        ``/options``."""
        if self._client is None:
            token = read_token(self.options)
            self._client = NodeClient(self.base_url, self.url, token, self.call_timeout,
                                      self.options)
            self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in self.spool.glob("*.zip"):
                with contextlib.suppress(OSError):
                    stale.unlink()
            for folder in self.spool.glob("*.d"):
                shutil.rmtree(folder, ignore_errors=True)
            self._archives = Archives(self._client, self.spool)
        info = await self.client.call("GET", "/info", "node info")
        if not isinstance(info, dict) or "version" not in info:
            raise errors.NotSupported("the server's /info is not a NodeODX node's", url=self.url)
        self._node_files[INFO].update((json.dumps(info, indent=2) + "\n").encode())
        await self._read_options()
        await super().connect()

    async def _read_options(self) -> None:
        offered = await self.client.call("GET", "/options", "node options")
        self._offered = [o for o in offered if isinstance(o, dict)] if isinstance(
            offered, list) else []
        self._node_files["options.json"].update(
            (json.dumps(self._offered, indent=2) + "\n").encode())

    async def close(self) -> None:
        """Stop downloads, delete the spool, close connections; never raises. A staged
        task not committed lives only in this mount (the node hides upload sessions): it
        is named in the log, since it is gone with the mount."""
        for name, staged in self._staged.items():
            log.warning("/%s: staged task not committed, discarded with this mount (the "
                        "node drops its %d uploaded files after 48 h)", name,
                        len(staged.files))
        if self._archives is not None:
            self._archives.close()
        if self._client is not None:
            with trio.CancelScope(shield=True):
                await self._client.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.spool)

    def status(self) -> dict[str, Any]:
        """Archive downloads (bytes received/size per task uuid) and staged folders."""
        return {
            "archives": self._archives.status() if self._archives else {},
            "staged": {n: {"session": s.session, "files": len(s.files), "error": s.error}
                       for n, s in self._staged.items()},
        }

    # --- the task index -------------------------------------------------------------
    def _ttl(self, task: TaskState) -> float:
        return self.poll_interval / 2 if task.active or not task.code else self.poll_finished

    async def _fetch_info(self, task: TaskState) -> None:
        where = self.describe("/")
        info = await self.client.call("GET", f"/task/{task.uuid}/info", "task info", "/")
        if not isinstance(info, dict):
            raise node_error("task info is not an object", "task info", where)
        if task.take_info(info, time.monotonic()):  # a new run: a new archive will come
            self.archives.forget(task.uuid)

    async def _refresh(self, force: bool = False) -> None:
        """Re-read ``/task/list`` (at most every half poll interval unless ``force``) and
        the infos that are due (module docstring of .tasks: by status)."""
        async with self._list_lock:
            now = time.monotonic()
            if not force and now - self._listed_at < self.poll_interval / 2:
                return
            listed = await self.client.call("GET", "/task/list", "task list")
            uuids = [str(t.get("uuid")) for t in listed if isinstance(t, dict) and t.get("uuid")]
            for gone in set(self._tasks) - set(uuids):
                del self._tasks[gone]
                self.archives.forget(gone)
            due = []
            for uuid in uuids:
                task = self._tasks.setdefault(uuid, TaskState(uuid))
                if now - task.fetched >= self._ttl(task):
                    due.append(task)

            async def one(task: TaskState) -> None:
                try:
                    await self._fetch_info(task)
                except errors.NotFound:  # removed between the list and the info
                    self._tasks.pop(task.uuid, None)

            await bounded.gather([functools.partial(one, task) for task in due], LIST_PARALLEL)
            self._listed_at = time.monotonic()
            known = [t for t in self._tasks.values() if t.info]
            self._folders = folder_names(known, set(self._staged))

    async def _task(self, folder: str, path: str) -> TaskState:
        """The task shown as ``folder``, its info fresh for its status. Raises NotFound."""
        uuid = self._folders.get(folder)
        if uuid is None or uuid not in self._tasks:
            await self._refresh()
            uuid = self._folders.get(folder)
        task = self._tasks.get(uuid or "")
        if task is None:
            raise errors.NotFound(f"no task {folder!r}", url=self.describe(path))
        if time.monotonic() - task.fetched >= self._ttl(task):
            try:
                await self._fetch_info(task)
            except errors.NotFound:
                self._tasks.pop(task.uuid, None)
                self._folders.pop(folder, None)
                self.archives.forget(task.uuid)
                raise
        return task

    async def _console(self, task: TaskState) -> None:
        """Bring the console lines up to date (only new lines are fetched)."""
        now = time.monotonic()
        if task.lines_final or now - task.lines_fetched < self._ttl(task):
            return
        lines = await self.client.call("GET", f"/task/{task.uuid}/output", "task output",
                                       params={"line": len(task.lines)})
        task.take_lines([str(line) for line in lines] if isinstance(lines, list) else [], now)

    async def _asset(self, task: TaskState) -> int:
        """The archive's size in bytes (a HEAD), or -1 when it is not available."""
        if task.code not in FINISHED_WITH_RESULTS:
            return -1
        now = time.monotonic()
        if task.asset is not None and now - task.asset_checked < self.poll_finished:
            return task.asset
        endpoint = f"/task/{task.uuid}/download/{ARCHIVE}"
        try:
            resp = await self.client.http.head(endpoint, params=self.client.params())
        except httpx.HTTPError as exc:
            raise node_error(exc, "archive size", self.url) from None
        length = resp.headers.get("content-length", "")
        zipped = resp.headers.get("content-type", "").startswith("application/zip")
        size = int(length) if resp.status_code == 200 and zipped and length.isdigit() else -1
        if size != task.asset and task.asset is not None:
            self.archives.forget(task.uuid)
        task.asset, task.asset_checked = size, now
        return size

    # --- paths ----------------------------------------------------------------------
    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    async def _task_children(self, task: TaskState) -> dict[str, Entry]:
        await self._console(task)
        children = {INFO: task.info_file.entry(INFO), CONSOLE: task.console_file.entry(CONSOLE)}
        size = await self._asset(task)
        if size >= 0:
            created = int(task.info.get("dateCreated") or 0) * 1_000_000
            children[ARCHIVE] = Entry(name=ARCHIVE, kind=Kind.FILE, size=size,
                                      mtime_ns=created, version=f"{task.uuid}:{task.run}:{size}")
            children[RESULTS] = _dir(RESULTS, created)
        now = time.monotonic()
        return {n: e for n, e in children.items() if not task.is_hidden(n, now)}

    async def _results(self, task: TaskState, rel: list[str], path: str) -> dict[str, Entry]:
        """The children of ``results/<rel>``. Raises NotFound, NotADirectory."""
        try:
            members = await self.archives.members(task.uuid, self.describe(path))
        except NotReady:
            task.asset = -1
            raise
        prefix = "/".join(rel)
        children: dict[str, Entry] = {}
        now = time.monotonic()
        created = int(task.info.get("dateCreated") or 0) * 1_000_000
        for name, member in members.items():
            if prefix and not name.startswith(prefix + "/"):
                if name == prefix:
                    raise errors.NotADirectory(url=self.describe(path))
                continue
            rest = name[len(prefix) + 1:] if prefix else name
            first, _, deeper = rest.partition("/")
            if task.is_hidden("/".join([RESULTS, *rel, first]), now):
                continue
            if deeper:
                children.setdefault(first, _dir(first, created))
            else:
                children[first] = _member_entry(task, first, member)
        if prefix and not children:
            raise errors.NotFound(url=self.describe(path))
        return children

    async def _children(self, path: str) -> dict[str, Entry]:
        """The children of folder ``path``. Raises NotFound, NotADirectory."""
        parts = self._parts(path)
        if not parts:
            await self._refresh()
            entries = {NODE_DIR: _dir(NODE_DIR, self._started_ns)}
            for folder, uuid in self._folders.items():
                task = self._tasks.get(uuid)
                if task is not None:
                    entries[folder] = task.entry(folder)
            for name, staged in self._staged.items():
                entries[name] = staged.entry()
            return entries
        if parts[0] == NODE_DIR:
            if len(parts) > 1:
                raise errors.NotADirectory(url=self.describe(path))
            return {n: r.entry(n) for n, r in self._node_files.items()}
        found = self._staged.get(parts[0])
        if found is not None:
            if len(parts) > 1:
                raise errors.NotADirectory(url=self.describe(path))
            return dict(found.files)
        task = await self._task(parts[0], path)
        if len(parts) == 1:
            return await self._task_children(task)
        if parts[1] != RESULTS or task.is_hidden("/".join(parts[1:]), time.monotonic()):
            if parts[1] in (INFO, CONSOLE, ARCHIVE):
                raise errors.NotADirectory(url=self.describe(path))
            raise errors.NotFound(url=self.describe(path))
        if await self._asset(task) < 0:
            raise errors.NotFound("the task has no results (yet)", url=self.describe(path))
        return await self._results(task, parts[2:], path)

    async def stat(self, path: str) -> Entry:
        """The entry at ``path``. Raises NotFound. Only a path under ``results/`` waits for
        the archive (its index is at its end)."""
        parts = self._parts(path)
        if not parts:
            await self.client.call("GET", "/info", "node info")
            return _dir("", self._started_ns)
        if len(parts) == 1:
            if parts[0] == NODE_DIR:
                return _dir(NODE_DIR, self._started_ns)
            staged = self._staged.get(parts[0])
            if staged is not None:
                return staged.entry()
            return (await self._task(parts[0], path)).entry(parts[0])
        if len(parts) > 2 and parts[1] == RESULTS and parts[0] not in self._staged:
            return await self._result(parts, path)
        parent = "/" + "/".join(parts[:-1])
        if len(parts) == 2 and parts[0] == NODE_DIR and parts[1] == INFO:
            info = await self.client.call("GET", "/info", "node info")
            self._node_files[INFO].update((json.dumps(info, indent=2) + "\n").encode())
        entry = (await self._children(parent)).get(parts[-1])
        if entry is None:
            raise errors.NotFound(url=self.describe(path))
        return entry

    async def _result(self, parts: list[str], path: str) -> Entry:
        """The entry of ``results/<member or folder>``: answered as soon as the archive's
        bytes tell (the member's local header), not only once it is complete."""
        task = await self._task(parts[0], path)
        where = self.describe(path)
        if task.is_hidden("/".join(parts[1:]), time.monotonic()) or await self._asset(task) < 0:
            raise errors.NotFound(url=where)
        try:
            member = await self.archives.member(task.uuid, "/".join(parts[2:]), where)
        except NotReady:
            task.asset = -1
            raise
        if member is None:
            return _dir(parts[-1], int(task.info.get("dateCreated") or 0) * 1_000_000)
        return _member_entry(task, parts[-1], member)

    async def list(self, path: str) -> list[Entry]:
        """The children of folder ``path``. Raises NotFound, NotADirectory."""
        return list((await self._children(path)).values())

    def known_local_range(self, path: str) -> LocalRange | None:
        """The spool file holding ``path`` once it is whole, without I/O: a member of
        ``results/`` inflated and checked, or ``all.zip`` once downloaded (archive.py,
        ``Archives.local_copy``); the block cache then reads it in place and the kernel
        reads it for a read-only open (these files are never written through the mount).
        Else None, and the content comes by :meth:`open_stream`."""
        parts = self._parts(path)
        if len(parts) < 2 or self._archives is None:
            return None
        uuid = self._folders.get(parts[0])
        if uuid is None or uuid not in self._tasks:
            return None
        if parts[1:] == [ARCHIVE]:
            name = None
        elif parts[1] == RESULTS and len(parts) > 2:
            name = "/".join(parts[2:])
        else:
            return None
        copy = self._archives.local_copy(uuid, name)
        return None if copy is None else LocalRange(str(copy))

    async def open_stream(self, path: str) -> AsyncGenerator[bytes, None]:
        """The content of ``path`` from offset 0: synthesized text at once; ``all.zip``
        as it downloads; a member of ``results/`` once the archive is complete. Raises
        NotFound, IsADirectory, NotSupported (a staged image: not kept here)."""
        parts = self._parts(path)
        if len(parts) < 2:
            raise errors.IsADirectory(url=self.describe(path))
        where = self.describe(path)
        if parts[0] == NODE_DIR:
            rendered = self._node_files.get(parts[1])
            if rendered is None:
                raise errors.NotFound(url=where)
            yield rendered.data
            return
        staged = self._staged.get(parts[0])
        if staged is not None:
            if parts[1] == OPTIONS_FILE and staged.options_text is not None:
                yield staged.options_text
                return
            if parts[1] == COMMIT_FILE:
                return
            raise errors.NotSupported("a staged image cannot be read back from the node",
                                      url=where)
        task = await self._task(parts[0], path)
        if parts[1:] == [INFO]:
            yield task.info_file.data
        elif parts[1:] == [CONSOLE]:
            yield task.console_file.data
        elif parts[1:] == [ARCHIVE]:
            try:
                async for chunk in self.archives.stream_archive(task.uuid, where):
                    yield chunk
            except NotReady:
                task.asset = -1
                raise
        elif parts[1] == RESULTS and len(parts) > 2:
            try:
                async for chunk in self.archives.stream_member(task.uuid, "/".join(parts[2:]),
                                                               where):
                    yield chunk
            except NotReady:
                task.asset = -1
                raise
        else:
            raise errors.NotFound(url=where)

    # --- creating tasks -------------------------------------------------------------
    def check_create(self, path: str, kind: Kind) -> None:
        """Only task folders at the top (not ``.node``) and files directly in a staged
        folder can be created; anything in a committed task or ``.node`` is EROFS; a file
        at the top or a folder in a staged task is EOPNOTSUPP. No I/O."""
        parts = self._parts(path)
        where = self.describe(path)
        if len(parts) == 1:
            if kind is Kind.FILE:
                raise errors.NotSupported(
                    "the top level holds task folders only: mkdir one to stage a task",
                    url=where)
            if parts[0] == NODE_DIR:
                raise errors.InvalidName(f"{NODE_DIR} is reserved for the node's own files",
                                         url=where)
            return
        staged = self._staged.get(parts[0]) if parts else None
        if staged is None or len(parts) > 2:
            raise errors.ReadOnly("a committed task cannot be changed", url=where)
        if kind is Kind.DIR:
            raise errors.NotSupported("a task takes its images in one folder, without "
                                      "subfolders", url=where)

    def check_write(self, path: str) -> None:
        """New content can go only into a staged folder: a file of a committed task or of
        ``.node`` is EROFS, one at the top EOPNOTSUPP (as :meth:`check_create`). No I/O."""
        self.check_create(path, Kind.FILE)

    def uploads_last(self, path: str) -> bool:
        """``COMMIT`` in a staged folder is uploaded only after every other file there."""
        parts = self._parts(path)
        return len(parts) == 2 and parts[1] == COMMIT_FILE and parts[0] in self._staged

    def appends_only(self, path: str) -> bool:
        """``console.txt`` of a task only grows while it runs (``tail -f`` follows it)."""
        parts = self._parts(path)
        return len(parts) == 2 and parts[1] == CONSOLE and parts[0] in self._folders

    async def mkdir(self, path: str) -> Entry:
        """Stage a new task named after the folder. Raises AlreadyExists, InvalidName,
        NotSupported/ReadOnly where :meth:`check_create` refuses."""
        self.check_create(path, Kind.DIR)
        name = self._parts(path)[0]
        await self._refresh()
        if name in self._staged or name in self._folders:
            raise errors.AlreadyExists(url=self.describe(path))
        staged = self._staged[name] = Staged(name)
        return staged.entry()

    def _staged_for(self, path: str) -> tuple[Staged, str]:
        parts = self._parts(path)
        staged = self._staged.get(parts[0]) if parts else None
        self.check_create(path, Kind.FILE)
        assert staged is not None
        return staged, parts[1]

    async def write(self, path: str, source: str, size: int) -> Entry:
        """A file copied into a staged folder: an image (or ``*.txt`` GCP file) goes to the
        task's upload session (opened by the first one); ``options.json`` is checked and
        kept for the session; ``COMMIT`` commits (after every other file, the write-back
        sees to it). A problem with the options or the commit is recorded in the folder's
        ``user.assetfs.error`` and the log, not raised (the upload is not retried for it).
        Raises ReadOnly (committed task), NotSupported (top level), Unavailable."""
        staged, name = self._staged_for(path)
        if name == OPTIONS_FILE:
            with open(source, "rb") as stream:
                self._take_options(staged, stream.read(size))
            entry = staged.file_entry(name, size)
            staged.files[name] = entry
            return entry
        if name == COMMIT_FILE:
            entry = staged.file_entry(name, size)
            staged.files[name] = entry
            try:
                await self.commit(staged, path)
            except errors.Unavailable:
                raise
            except errors.AssetFSError as exc:
                log.warning("commit of %s refused: %s", self.describe(path), exc)
            return entry
        for _ in range(2):
            uuid = await self._session(staged, path)
            shown = stored_name(set(staged.files), name)
            try:
                await self._upload(uuid, name, source, size, path)
            except SessionLost:
                async with staged.lock:
                    if staged.session == uuid:
                        staged.lose_session()
                        log.warning("%s: %s", self.describe(path), staged.error)
                continue
            entry = staged.file_entry(shown, size)
            staged.files[shown] = entry
            staged.missing.discard(name)
            staged.taken_back.discard(shown)
            if not staged.missing and staged.error.startswith("the node lost"):
                staged.error = ""
            return entry
        raise errors.Unavailable("the node keeps losing the upload session",
                                 url=self.describe(path))

    def _take_options(self, staged: Staged, data: bytes) -> None:
        staged.options_text = data
        try:
            options = parse_options(data, self._offered)
        except errors.InvalidName as exc:
            staged.options, staged.options_error = None, str(exc)
            staged.error = str(exc)
            log.warning("%s: %s", self.describe("/" + staged.name), exc)
            return
        if staged.session is not None and options != staged.session_options:
            staged.options_error = staged.error = (
                f"{OPTIONS_FILE} changed after the first image was uploaded: the node takes "
                "options only when a task's upload begins; rm -r the folder and copy "
                f"{OPTIONS_FILE} before the images")
            log.warning("%s: %s", self.describe("/" + staged.name), staged.error)
            return
        staged.options, staged.options_error = options, ""
        if staged.error.startswith(OPTIONS_FILE):
            staged.error = ""

    async def _session(self, staged: Staged, path: str) -> str:
        """The staged task's upload session, opened with its name and options."""
        async with staged.lock:
            if staged.session is None:
                fields = {"name": (None, staged.name),
                          "options": (None, json.dumps(staged.options or [])),
                          "dateCreated": (None, str(staged.created_ns // 1_000_000))}
                reply = await self.client.call("POST", "/task/new/init", "open upload session",
                                               path, files=fields)
                staged.session = str(reply["uuid"])
                staged.session_options = staged.options or []
                log.info("staged task %s: upload session %s", staged.name, staged.session)
            return staged.session

    async def _upload(self, uuid: str, name: str, source: str, size: int, path: str) -> None:
        headers, body = file_part("images", name, source, size)
        await self.client.call("POST", f"/task/new/upload/{uuid}", "upload", path,
                               headers=headers, content=body)

    async def commit(self, staged: Staged, path: str) -> None:
        """Commit ``staged``: processing starts and the folder shows the task. Raises
        InvalidName (options), Incomplete (images missing, none, or taken back),
        AssetFSError (the node refused: it then dropped the session)."""
        async with staged.lock:
            if staged.committed:
                return
            staged.check_committable()
            uuid = staged.session
            assert uuid is not None
            try:
                await self.client.call("POST", f"/task/new/commit/{uuid}", "commit", path)
            except errors.Unavailable:
                raise
            except errors.AssetFSError as exc:
                staged.lose_session()
                staged.error = f"the node refused the commit and dropped the session: {exc}"
                raise errors.AssetFSError(staged.error, url=self.describe(path)) from None
            staged.committed = uuid
            self._staged.pop(staged.name, None)
            log.info("committed task %s (%s)", staged.name, uuid)
        await self._refresh(force=True)

    # --- removing and actions ---------------------------------------------------------
    async def remove(self, path: str, kind: Kind) -> None:
        """``rmdir`` of a staged folder discards it (the node drops the uncommitted session
        after 48 h); of a task folder removes the task on the node. A file removed in a
        staged folder is taken out of the view (an uploaded image stays in the session and
        the commit is refused); inside a task, files and folders are hidden for
        :data:`HIDE_SECONDS` so that ``rm -r`` can empty it. Raises NotFound, ReadOnly."""
        parts = self._parts(path)
        where = self.describe(path)
        if not parts or parts[0] == NODE_DIR:
            raise errors.ReadOnly(url=where)
        staged = self._staged.get(parts[0])
        if staged is not None:
            if len(parts) == 1:
                del self._staged[parts[0]]
                log.info("discarded staged task %s", parts[0])
                return
            entry = staged.files.pop(parts[1], None)
            if entry is None:
                raise errors.NotFound(url=where)
            if parts[1] == OPTIONS_FILE:
                staged.options_text = None
                if staged.session is None:
                    staged.options, staged.options_error = None, ""
            elif parts[1] != COMMIT_FILE:
                staged.taken_back.add(parts[1])
            return
        task = await self._task(parts[0], path)
        if len(parts) == 1:
            await self._action(task, "remove", path)
            self._tasks.pop(task.uuid, None)
            self._folders.pop(parts[0], None)
            self.archives.forget(task.uuid)
            return
        task.hidden["/".join(parts[1:])] = time.monotonic() + HIDE_SECONDS

    async def rename(self, old: str, new: str) -> None:
        """The node cannot rename tasks or files: NotSupported."""
        raise errors.NotSupported("the node cannot rename tasks or their files",
                                  url=self.describe(old))

    async def _action(self, task: TaskState, action: str, path: str,
                      options: builtins.list[dict[str, Any]] | None = None) -> None:
        body: dict[str, Any] = {"uuid": task.uuid}
        if options is not None:
            body["options"] = json.dumps(options)
        await self.client.call("POST", f"/task/{action}", action, path, data=body)
        task.fetched = -1e9

    async def control(self, path: str, action: str, value: bytes) -> None:
        """xattr actions: ``commit`` on a staged folder; ``cancel``, ``restart`` (value:
        optional options JSON, checked like ``options.json``) and ``remove`` on a task
        folder. Raises NotSupported elsewhere, and what the node or the commit raise."""
        parts = self._parts(path)
        where = self.describe(path)
        if len(parts) != 1 or parts[0] == NODE_DIR:
            raise errors.NotSupported(f"action {action!r}", url=where)
        staged = self._staged.get(parts[0])
        if staged is not None:
            if action != "commit":
                raise errors.NotSupported(f"a staged task takes only commit, not {action!r}",
                                          url=where)
            try:
                await self.commit(staged, path)
            except errors.AssetFSError as exc:
                if not isinstance(exc, errors.Unavailable):
                    staged.error = str(exc)
                    log.warning("commit of %s refused: %s", where, exc)
                raise
            return
        task = await self._task(parts[0], path)
        if action == "commit":
            return  # already committed
        if action not in ("cancel", "restart", "remove"):
            raise errors.NotSupported(f"action {action!r} (cancel, restart, remove)", url=where)
        options = parse_options(value, self._offered) if action == "restart" and value.strip(
            b"\0 \n") else None
        await self._action(task, action, path, options)
        if action in ("restart", "remove"):
            self.archives.forget(task.uuid)
        if action == "remove":
            self._tasks.pop(task.uuid, None)
            self._folders.pop(parts[0], None)
        with contextlib.suppress(errors.NotFound):
            await self._fetch_info(task)

    async def xattr(self, path: str, key: str) -> bytes | None:
        """``user.assetfs.download`` of ``all.zip``: ``RECEIVED/SIZE`` bytes of its
        download so far."""
        parts = self._parts(path)
        if key != "download" or len(parts) != 2 or parts[1] != ARCHIVE:
            return None
        uuid = self._folders.get(parts[0])
        download = self.archives.downloads.get(uuid or "")
        if download is None:
            return b"0/?"
        return f"{download.received}/{download.size if download.size is not None else '?'}".encode()
