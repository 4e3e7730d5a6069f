"""A NodeODX-compatible processing node for tests (Starlette on uvicorn), plus the fixture
side: start it in a subprocess on a listening socket the test process owns, restart it
(cleanly or not), stop it by pid, and a small synchronous client to arrange and check
node state independently of the driver under test.

It follows docs/backends/nodeodx.md quirk for quirk:

- errors are HTTP 200 + ``{"error": ...}`` (cancel/remove/restart: ``{"success": false,
  "error": ...}``); unknown routes are a 404 HTML page, as Express sends;
- the token, when the node has one, is read from the ``?token=`` query only;
- ``GET /task/{uuid}/download/all.zip`` ignores ``Range`` (200, whole body, no
  ``Accept-Ranges``); HEAD sends the headers only; other asset names: ``Invalid asset``;
  not finished: ``Asset not ready``;
- creation by ``init`` (multipart only; url-encoded bodies are ignored), ``upload`` (field
  ``images``, several files per request; ``*.txt`` go to ``gcp/`` and are not counted;
  a repeated name is stored as ``name_.jpg``) and ``commit``; a task is invisible before
  its commit; a failed commit deletes the upload session; single-shot ``/task/new`` too;
- statuses RUNNING (briefly, starting) -> QUEUED -> RUNNING -> COMPLETED with progress
  0 -> 93 -> 97 -> 100; the phase lengths are set by the test (``POST /_peer/timings``)
  and apply to tasks committed afterwards;
- ``maxImages``: single-shot ``/task/new`` errors at once; init/upload/commit returns a
  uuid and the task turns FAILED with an errorMessage;
- canceling a COMPLETED task makes it CANCELED and its all.zip stays downloadable;
  restarting a QUEUED task fails (``Task cannot be restarted``);
- one canned ``all.zip`` with the real member layout, generated at start;
- the task list is saved only on SIGTERM/SIGINT (and every ``--save-interval`` seconds):
  after a SIGKILL and start, tasks created since the last save are gone, and the fixture
  can delete result folders in between ("Asset not ready" afterwards).

Choices made where upstream is silent (docs/backends/nodeodx.md, "The test peer"):

- upload sessions live in memory: a restart loses every uncommitted session, and an
  upload to an unknown session answers ``{"error": "Invalid uuid (not initialized)"}``;
- a commit with no images fails (``Not enough images``) and deletes the session;
- the image limit message is ``Too many images (N), the maximum is M``;
- unknown option names are dropped silently; a bad value gives the node's message shape
  ``[{"name": ..., "error": "Cannot convert X to boolean"}]`` (``int``, ``float``;
  ``X is not a valid value for NAME`` for enums);
- a missing token is answered like a wrong one (``token does not match.``);
- uploaded images are not kept: their names, sizes and SHA-256 are (``GET /_peer/task``);
- console output: two lines at commit, twenty over the RUNNING phase, three at the end;
- ``outputs`` is recorded but the archive is not narrowed; ``webhook`` is never called;
- the canned archive is written by :mod:`zipfile`: sizes in the local headers, no data
  descriptors (whether the real node's writes them was not observed);
- a finished run's ``processingTime`` is its phase lengths plus an overhead of 1-999 ms
  drawn at each commit or restart, never the previous run's (a real run's wall-clock time
  does not repeat to the millisecond); the download sends no ``ETag`` or
  ``Last-Modified`` (none was observed on the node).

Peer-only routes (never used by the driver): ``POST /_peer/timings`` (JSON ``start``,
``queued``, ``running`` seconds, ``fail`` message or null), ``GET /_peer/task/{uuid}``,
``GET /_peer/sessions``, ``GET /_peer/stats`` (info requests per task), and the results a
finished task leaves, as a restarted task's new run would: ``PUT
/_peer/task/{uuid}/results/{member}`` (body: the member's bytes) adds or replaces one
member of the task's own all.zip, ``DELETE`` of it drops the member, ``DELETE
/_peer/task/{uuid}/results`` leaves an archive with no members; each writes a new archive
in place of the old one (a new file, so the canned one it may be linked to is untouched)
and answers ``{"members": [names]}``; with ``?rerun=1`` the task is also restarted, as a
run that leaves those results (no "Asset not ready" in between).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid as uuid_module
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

QUEUED, RUNNING, FAILED, COMPLETED, CANCELED = 10, 20, 30, 40, 50
BAD_TOKEN = "Invalid authentication token: token does not match."
TOKEN_ENV = "NODEODX_PEER_TOKEN"
"""Environment variable the peer process reads its token from (none: no token)."""

OPTIONS: list[dict[str, Any]] = [
    {"name": "dsm", "type": "bool", "value": "false", "domain": "bool",
     "help": "Use this tag to build a DSM (Digital Surface Model)."},
    {"name": "dtm", "type": "bool", "value": "false", "domain": "bool",
     "help": "Use this tag to build a DTM (Digital Terrain Model)."},
    {"name": "fast-orthophoto", "type": "bool", "value": "false", "domain": "bool",
     "help": "Skips dense reconstruction and 3D model generation."},
    {"name": "orthophoto-resolution", "type": "float", "value": "5", "domain": "float > 0.0",
     "help": "Orthophoto resolution in cm / pixel."},
    {"name": "min-num-features", "type": "int", "value": "10000", "domain": "integer",
     "help": "Minimum number of features to extract per image."},
    {"name": "feature-quality", "type": "enum", "value": "high",
     "domain": ["ultra", "high", "medium", "low", "lowest"],
     "help": "Set feature extraction quality."},
    {"name": "camera-lens", "type": "enum", "value": "auto",
     "domain": ["auto", "perspective", "brown", "fisheye", "spherical", "equirectangular",
                "dual"], "help": "Set a camera projection type."},
    {"name": "pc-classify", "type": "bool", "value": "false", "domain": "bool",
     "help": "Classify the point cloud outputs."},
]

ZIP_LAYOUT: dict[str, int] = {
    "3d_tiles/tileset.json": 2_000,
    "cameras.json": 1_500,
    "dsm_tiles/0/0/0.png": 20_000,
    "dtm_tiles/0/0/0.png": 20_000,
    "images.json": 3_000,
    "odm_dem/dsm.tif": 150_000,
    "odm_dem/dtm.tif": 150_000,
    "odm_georeferencing/odm_georeferenced_model.laz": 120_000,
    "odm_orthophoto/odm_orthophoto.tif": 300_000,
    "odm_report/report.pdf": 90_000,
    "odm_report/shots.geojson": 5_000,
    "odm_texturing/odm_textured_model_geo.obj": 80_000,
    "orthophoto_tiles/0/0/0.png": 20_000,
    "potree_pointcloud/ept.json": 2_000,
    "task_output.txt": 4_000,
}
"""Members of the canned all.zip and their sizes in bytes (about 1 MB, the real test mode's
layout); ``--big-member-mb`` makes the orthophoto that many MiB instead."""
BIG_MEMBER = "odm_orthophoto/odm_orthophoto.tif"


def member_bytes(name: str, size: int) -> bytes:
    """Deterministic, incompressible content of a canned member (tests compare with it)."""
    return random.Random(name).randbytes(size)


def build_archive(target: Path, layout: dict[str, int], pad: int = 0) -> None:
    """Write the canned all.zip: ``layout`` members (name -> bytes), deflated at level 1
    (incompressible content makes that nearly a copy), plus a ``pad`` bytes member."""
    tmp = target.with_suffix(".tmp")
    stamp = time.gmtime()[:6]
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, size in layout.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=size > (1 << 30)) as out:
                rng = random.Random(name)
                left = size
                while left:
                    piece = min(left, 8 << 20)
                    out.write(rng.randbytes(piece))
                    left -= piece
        if pad:
            with archive.open("odm_georeferencing/odm_georeferenced_model.ply", "w") as out:
                rng = random.Random("pad")
                left = pad
                while left:
                    piece = min(left, 8 << 20)
                    out.write(rng.randbytes(piece))
                    left -= piece
    tmp.replace(target)


def write_results(target: Path, members: dict[str, bytes]) -> None:
    """Write a task's own all.zip holding ``members`` (name -> bytes), deflated at level 1,
    as a new file that replaces ``target``."""
    tmp = target.with_suffix(".tmp")
    stamp = time.gmtime()[:6]
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=stamp), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(target)


def read_results(source: Path) -> dict[str, bytes]:
    """The members of the archive at ``source`` (name -> bytes); none if it is missing."""
    if not source.exists():
        return {}
    with zipfile.ZipFile(source) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# --- the server -------------------------------------------------------------------------
@dataclass
class Timings:
    """Phase lengths in seconds of a committed task, and an optional failure message."""

    start: float = 0.2
    queued: float = 0.3
    running: float = 1.0
    fail: str | None = None


@dataclass
class Image:
    """One uploaded file: stored name, size (bytes), SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


@dataclass
class Task:
    """A task (committed or still an upload session)."""

    uuid: str
    name: str | None
    date_created: int
    options: list[dict[str, Any]]
    images: list[Image] = field(default_factory=list)
    gcp: list[Image] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    committed: float = 0.0
    """Unix time of the commit (or of the last restart)."""
    timings: Timings = field(default_factory=Timings)
    canceled: float | None = None
    """Unix time of a cancel; the status is frozen from then on."""
    error: str | None = None
    overhead_ms: int = 0
    """What the run took past its phases (ms): a finished run's ``processingTime`` is the
    phases plus this, drawn at each commit and restart, never the previous run's."""

    def phase(self, now: float) -> tuple[int, float, float]:
        """(status code, progress 0..100, seconds since the commit), at ``now``."""
        at = min(now, self.canceled) if self.canceled is not None else now
        t = at - self.committed
        spec = self.timings
        running_start = spec.start + spec.queued
        end = running_start + spec.running
        if t < spec.start:
            code, progress = RUNNING, 0.0
        elif t < running_start:
            code, progress = QUEUED, 0.0
        elif t < end:
            fraction = (t - running_start) / spec.running if spec.running else 1.0
            code = RUNNING
            progress = 0.0 if fraction < 1 / 3 else 93.0 if fraction < 2 / 3 else 97.0
        elif self.error or spec.fail:
            code, progress = FAILED, 97.0
        else:
            code, progress = COMPLETED, 100.0
        if self.error and t >= spec.start:
            code = FAILED
        if self.canceled is not None and code != FAILED:
            code = CANCELED
        return code, progress, t

    def output(self, now: float) -> list[str]:
        """The console lines at ``now``."""
        code, _, t = self.phase(now)
        lines = [f"[INFO]    Initializing ODX {self.uuid} - {time.ctime(self.committed)}",
                 f"[INFO]    {len(self.images)} images"]
        spec = self.timings
        running_start = spec.start + spec.queued
        if self.error:
            return [*lines, f"[ERROR]   {self.error}"]
        if t >= running_start:
            share = (t - running_start) / spec.running if spec.running else 1.0
            steps = min(20, int(share * 20))
            lines += [f"[INFO]    running step {i + 1} of 20" for i in range(steps)]
        if code == FAILED:
            lines.append(f"[ERROR]   {spec.fail}")
        elif code == COMPLETED or (code == CANCELED and t >= running_start + spec.running):
            lines += ["[INFO]    ODX app finished", "Compressing all.zip:", "Done."]
        return lines


class Node:
    """The node's state: committed tasks, upload sessions, the canned archive."""

    def __init__(self, state: Path, token: str, max_images: int | None,
                 save_interval: float) -> None:
        self.state = state
        self.token = token
        self.max_images = max_images
        self.save_interval = save_interval
        self.tasks: dict[str, Task] = {}
        self.sessions: dict[str, Task] = {}
        self.timings = Timings()
        self.info_calls: dict[str, int] = {}
        """``GET /task/{uuid}/info`` requests answered, per uuid (``GET /_peer/stats``)."""
        self.archive = state / "all.zip"
        self.load()

    # persistence: only at clean shutdown or every save_interval
    def load(self) -> None:
        """Read the task list saved at the last clean shutdown (or periodic save)."""
        saved = self.state / "tasks.json"
        if not saved.exists():
            return
        for raw in json.loads(saved.read_text()):
            raw["images"] = [Image(**i) for i in raw["images"]]
            raw["gcp"] = [Image(**i) for i in raw["gcp"]]
            raw["timings"] = Timings(**raw["timings"])
            task = Task(**raw)
            self.tasks[task.uuid] = task

    def save(self) -> None:
        """Write the task list (SIGTERM/SIGINT and every ``save_interval`` seconds)."""
        tmp = self.state / "tasks.json.tmp"
        tmp.write_text(json.dumps([asdict(t) for t in self.tasks.values()]))
        tmp.replace(self.state / "tasks.json")

    def results(self, task: Task) -> Path:
        """The task's result folder's archive (a hard link to the canned one)."""
        return self.state / "data" / task.uuid / "all.zip"

    def finish(self, task: Task) -> None:
        """Give a committed task its result folder (the canned archive, linked)."""
        target = self.results(task)
        target.parent.mkdir(parents=True, exist_ok=True)
        if (target.parent / "lost").exists():
            return  # the fixture took this result folder away (an unclean restart)
        with contextlib.suppress(FileExistsError):
            os.link(self.archive, target)

    def info(self, task: Task, now: float, with_output: int | None) -> dict[str, Any]:
        code, progress, t = task.phase(now)
        status: dict[str, Any] = {"code": code}
        if code == FAILED:
            status["errorMessage"] = task.error or task.timings.fail or "failed"
        done = code in (COMPLETED, FAILED, CANCELED)
        spec = task.timings
        processing = int(1000 * (min(t, spec.start + spec.queued + spec.running) if done else t))
        processing += task.overhead_ms if done else 0
        body: dict[str, Any] = {
            "uuid": task.uuid,
            "dateCreated": task.date_created,
            "processingTime": processing,
            "status": status,
            "options": task.options,
            "imagesCount": len(task.images),
            "progress": progress,
        }
        if task.name is not None:
            body = {"uuid": task.uuid, "name": task.name, **{k: v for k, v in body.items()
                                                              if k != "uuid"}}
        if with_output is not None:
            body["output"] = task.output(now)[with_output:]
        return body


def check_options(raw: str) -> tuple[list[dict[str, Any]], str | None]:
    """Parse the ``options`` field; (kept options, error text or None)."""
    try:
        given = json.loads(raw) if raw else []
    except ValueError:
        return [], "Invalid options"
    if not isinstance(given, list):
        return [], "Invalid options"
    known = {o["name"]: o for o in OPTIONS}
    kept, problems = [], []
    for option in given:
        if not isinstance(option, dict) or option.get("name") not in known:
            continue
        spec, value = known[option["name"]], option.get("value")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        problem = None
        if spec["type"] == "bool" and text not in ("true", "false"):
            problem = f"Cannot convert {text} to boolean"
        elif spec["type"] == "int":
            try:
                int(text)
            except ValueError:
                problem = f"Cannot convert {text} to int"
        elif spec["type"] == "float":
            try:
                float(text)
            except ValueError:
                problem = f"Cannot convert {text} to float"
        elif spec["type"] == "enum" and text not in spec["domain"]:
            problem = f"{text} is not a valid value for {spec['name']}"
        if problem:
            problems.append({"name": spec["name"], "error": problem})
        else:
            kept.append({"name": spec["name"], "value": value})
    return kept, json.dumps(problems, separators=(",", ":")) if problems else None


def stored_name(existing: set[str], name: str) -> str:
    """A repeated file name is stored as ``name_.jpg`` (again: ``name__.jpg``)."""
    base = os.path.basename(name) or "image"
    while base in existing:
        stem, dot, ext = base.rpartition(".")
        base = f"{stem}_.{ext}" if dot else f"{base}_"
    return base


def make_app(node: Node) -> Any:
    """The Starlette application serving ``node``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def error(text: str) -> JSONResponse:
        return JSONResponse({"error": text})

    def denied(request: Request) -> JSONResponse | None:
        if node.token and request.query_params.get("token") != node.token:
            return error(BAD_TOKEN)
        return None

    def task_of(request: Request) -> Task | None:
        return node.tasks.get(request.path_params["uuid"])

    def allowed_task(request: Request) -> Task | JSONResponse:
        """The task a request names, or the answer when its token is wrong or the task
        unknown."""
        task = task_of(request)
        if (bad := denied(request)) is not None or task is None:
            return bad or error(f"{request.path_params['uuid']} not found")
        return task

    async def fields(request: Request) -> tuple[Any, list[Any]]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return {}, []  # url-encoded bodies are silently ignored
        form = await request.form(max_files=100_000, max_fields=1000)
        return form, form.getlist("images")

    async def store(task: Task, files: list[Any]) -> None:
        names = {i.name for i in task.images} | {g.name for g in task.gcp}
        for upload in files:
            digest, size = hashlib.sha256(), 0
            while chunk := await upload.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
            name = stored_name(names, upload.filename or "image")
            names.add(name)
            image = Image(name, size, digest.hexdigest())
            (task.gcp if name.lower().endswith(".txt") else task.images).append(image)
            await upload.close()

    def new_task(form: Any, request: Request) -> tuple[Task | None, str | None]:
        options, problem = check_options(str(form.get("options") or ""))
        if problem:
            return None, problem
        wanted = request.headers.get("set-uuid")
        uuid = wanted or str(uuid_module.uuid4())
        if uuid in node.tasks or uuid in node.sessions:
            return None, "Invalid set-uuid header"
        name = form.get("name")
        try:
            created = int(form.get("dateCreated") or time.time() * 1000)
        except ValueError:
            created = int(time.time() * 1000)
        outputs = json.loads(str(form.get("outputs") or "[]") or "[]")
        return Task(uuid, str(name) if name else None, created, options,
                    outputs=outputs if isinstance(outputs, list) else []), None

    def commit(task: Task) -> None:
        task.committed = time.time()
        task.overhead_ms = random.choice([ms for ms in range(1, 1000) if ms != task.overhead_ms])
        task.timings = Timings(**asdict(node.timings))
        if node.max_images is not None and len(task.images) > node.max_images:
            task.error = f"Too many images ({len(task.images)}), the maximum is {node.max_images}"
        node.tasks[task.uuid] = task

    async def info(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        active = sum(1 for t in node.tasks.values()
                     if t.phase(time.time())[0] in (QUEUED, RUNNING))
        return JSONResponse({
            "version": "2.3.1", "taskQueueCount": active, "totalMemory": 16 << 30,
            "availableMemory": 8 << 30, "cpuCores": os.cpu_count() or 1,
            "maxImages": node.max_images, "maxParallelTasks": 2,
            "engineVersion": "3.5.5", "engine": "odx"})

    async def options(request: Request) -> Response:
        return denied(request) or JSONResponse(OPTIONS)

    async def task_list(request: Request) -> Response:
        return denied(request) or JSONResponse([{"uuid": u} for u in node.tasks])

    async def task_info(request: Request) -> Response:
        task = allowed_task(request)
        if not isinstance(task, Task):
            return task
        node.info_calls[task.uuid] = node.info_calls.get(task.uuid, 0) + 1
        raw = request.query_params.get("with_output")
        try:
            with_output = int(raw) if raw is not None else None
        except ValueError:
            with_output = 0
        return JSONResponse(node.info(task, time.time(), with_output))

    async def task_output(request: Request) -> Response:
        task = allowed_task(request)
        if not isinstance(task, Task):
            return task
        try:
            line = int(request.query_params.get("line") or 0)
        except ValueError:
            line = 0
        return JSONResponse(task.output(time.time())[line:])

    async def download(request: Request) -> Response:
        task = allowed_task(request)
        if not isinstance(task, Task):
            return task
        if request.path_params["asset"] != "all.zip":
            return error("Invalid asset")
        code, _, t = task.phase(time.time())
        spec = task.timings
        finished_once = t >= spec.start + spec.queued + spec.running and not task.error
        if code == COMPLETED and not node.results(task).exists() and task.committed:
            node.finish(task)
        path = node.results(task)
        if not (code == COMPLETED or (code == CANCELED and finished_once)) or not path.exists():
            return error("Asset not ready")
        size = path.stat().st_size
        headers = {"content-length": str(size),
                   "content-disposition": 'attachment; filename="all.zip"'}
        if request.method == "HEAD":
            return Response(None, headers=headers, media_type="application/zip")

        async def body() -> Any:
            with open(path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    yield chunk

        return StreamingResponse(body(), headers=headers, media_type="application/zip")

    async def init(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        form, _ = await fields(request)
        task, problem = new_task(form, request)
        if task is None:
            return error(problem or "Invalid request")
        node.sessions[task.uuid] = task
        return JSONResponse({"uuid": task.uuid})

    async def upload(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        task = node.sessions.get(request.path_params["uuid"])
        _, files = await fields(request)
        if task is None:
            for f in files:
                await f.close()
            return error("Invalid uuid (not initialized)")
        if not files:
            return error("Need at least 1 file.")
        await store(task, files)
        return JSONResponse({"success": True})

    async def commit_route(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        task = node.sessions.pop(request.path_params["uuid"], None)
        if task is None:
            return error("Invalid uuid (not initialized)")
        if not task.images:
            return error("Not enough images")  # the session is gone: cannot retry
        commit(task)
        return JSONResponse({"uuid": task.uuid})

    async def single_shot(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        form, files = await fields(request)
        if node.max_images is not None and len(files) > node.max_images:
            return error(f"Too many images ({len(files)}), the maximum is {node.max_images}")
        task, problem = new_task(form, request)
        if task is None:
            return error(problem or "Invalid request")
        await store(task, files)
        if not task.images:
            return error("Not enough images")
        commit(task)
        return JSONResponse({"uuid": task.uuid})

    async def action_uuid(request: Request) -> tuple[str, Any]:
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = {}
            return str(body.get("uuid") or ""), body.get("options")
        form = await request.form()
        return str(form.get("uuid") or ""), form.get("options")

    async def action(request: Request) -> Response:
        if denied(request) is not None:
            return JSONResponse({"success": False, "error": BAD_TOKEN})
        uuid, new_options = await action_uuid(request)
        task = node.tasks.get(uuid)
        if task is None:
            return JSONResponse({"success": False, "error": f"{uuid} not found"})
        what = request.path_params["action"]
        now = time.time()
        if what == "cancel":
            if task.canceled is None:
                task.canceled = now
        elif what == "remove":
            del node.tasks[uuid]
            with contextlib.suppress(FileNotFoundError):
                node.results(task).unlink()
        elif what == "restart":
            if task.phase(now)[0] == QUEUED:
                return JSONResponse({"success": False, "error": "Task cannot be restarted"})
            if new_options:
                text = new_options if isinstance(new_options, str) else json.dumps(new_options)
                kept, problem = check_options(text)
                if problem:
                    return JSONResponse({"success": False, "error": problem})
                task.options = kept
            with contextlib.suppress(FileNotFoundError):
                node.results(task).unlink()
            task.canceled, task.error = None, None
            commit(task)
        else:
            return HTMLResponse(not_found_page(request), 404)
        return JSONResponse({"success": True})

    async def peer_timings(request: Request) -> Response:
        node.timings = Timings(**{**asdict(node.timings), **json.loads(await request.body())})
        return JSONResponse(asdict(node.timings))

    async def peer_task(request: Request) -> Response:
        task = task_of(request) or node.sessions.get(request.path_params["uuid"])
        if task is None:
            return error("not found")
        return JSONResponse(asdict(task))

    async def peer_results(request: Request) -> Response:
        task = task_of(request)
        if task is None:
            return error("not found")
        path = node.results(task)
        member = request.path_params.get("member")
        members = read_results(path) if member is not None else {}
        if request.method == "PUT" and member is not None:
            members[member] = await request.body()
        elif member is not None and members.pop(member, None) is None:
            return error(f"no {member} in the results")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_results(path, members)
        if request.query_params.get("rerun"):
            task.canceled, task.error = None, None
            commit(task)
        return JSONResponse({"members": sorted(members)})

    async def peer_sessions(request: Request) -> Response:
        return JSONResponse([asdict(t) for t in node.sessions.values()])

    async def peer_stats(request: Request) -> Response:
        return JSONResponse({"info_calls": node.info_calls})

    def not_found_page(request: Request) -> str:
        return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
                f"<title>Error</title></head>\n<body><pre>Cannot {request.method} "
                f"{request.url.path}</pre></body>\n</html>\n")

    async def missing(request: Request, exc: Exception) -> Response:
        return HTMLResponse(not_found_page(request), 404)

    routes = [
        Route("/info", info),
        Route("/options", options),
        Route("/task/list", task_list),
        Route("/task/{uuid}/info", task_info),
        Route("/task/{uuid}/output", task_output),
        Route("/task/{uuid}/download/{asset}", download, methods=["GET", "HEAD"]),
        Route("/task/new/init", init, methods=["POST"]),
        Route("/task/new/upload/{uuid}", upload, methods=["POST"]),
        Route("/task/new/commit/{uuid}", commit_route, methods=["POST"]),
        Route("/task/new", single_shot, methods=["POST"]),
        Route("/task/{action}", action, methods=["POST"]),
        Route("/_peer/timings", peer_timings, methods=["POST"]),
        Route("/_peer/task/{uuid}", peer_task),
        Route("/_peer/task/{uuid}/results", peer_results, methods=["DELETE"]),
        Route("/_peer/task/{uuid}/results/{member:path}", peer_results,
              methods=["PUT", "DELETE"]),
        Route("/_peer/sessions", peer_sessions),
        Route("/_peer/stats", peer_stats),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        async def periodic() -> None:
            while True:
                await asyncio.sleep(node.save_interval)
                node.save()

        saver = asyncio.ensure_future(periodic())
        try:
            yield
        finally:
            saver.cancel()
            node.save()  # a clean shutdown (SIGTERM/SIGINT) only: SIGKILL loses what is new

    return Starlette(routes=routes, exception_handlers={404: missing, 405: missing},
                     lifespan=lifespan)


def serve(args: argparse.Namespace) -> None:
    """Run the node on the inherited listening socket ``args.fd`` until SIGTERM/SIGINT."""
    import uvicorn

    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    pad = max(0, (args.zip_mb << 20) - sum(ZIP_LAYOUT.values())) if args.zip_mb else 0
    layout = dict(ZIP_LAYOUT)
    if args.big_member_mb:
        layout[BIG_MEMBER] = args.big_member_mb << 20
        pad = max(0, pad - layout[BIG_MEMBER])
    stamp = state / "all.zip.spec"
    spec = json.dumps([layout, pad])
    if not (state / "all.zip").exists() or not stamp.exists() or stamp.read_text() != spec:
        build_archive(state / "all.zip", layout, pad)
        stamp.write_text(spec)
    node = Node(state, os.environ.get(TOKEN_ENV, ""), args.max_images, args.save_interval)
    app = make_app(node)
    sock = socket.socket(fileno=args.fd)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_keep_alive=30, h11_max_incomplete_event_size=1 << 20)
    server = uvicorn.Server(config)

    async def main() -> None:
        await server.serve(sockets=[sock])

    asyncio.run(main())


# --- the fixture side -------------------------------------------------------------------
@dataclass
class Peer:
    """A running peer: ``host`` is ``127.0.0.1:PORT``; the listening socket stays with the
    test process across restarts, so clients queue instead of being refused."""

    sock: socket.socket
    state: Path
    token: str
    extra: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    def start(self) -> None:
        """Start the server process and wait until it answers ``/info``."""
        fd = self.sock.fileno()
        argv = [sys.executable, __file__, "--fd", str(fd), "--state", str(self.state),
                *self.extra]
        env = {**os.environ, TOKEN_ENV: self.token}
        log = open(self.state / "peer.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(argv, pass_fds=[fd], env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        import httpx

        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited: {(self.state / 'peer.log').read_text()}")
            try:
                httpx.get(f"{self.url}/info", params={"token": self.token}, timeout=2)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, clean: bool = True) -> None:
        """Stop the server by pid: SIGTERM (it saves its task list) or SIGKILL."""
        if self.proc is None:
            return
        if clean:
            from mounting import stop_process

            stop_process(self.proc)
        else:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, clean: bool = False, lose_results: tuple[str, ...] = ()) -> None:
        """Restart the node: unclean (SIGKILL) forgets tasks made since the last save and
        every upload session; ``lose_results`` uuids lose their result folder."""
        self.stop(clean)
        for uuid in lose_results:
            folder = self.state / "data" / uuid
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "lost").touch()
            with contextlib.suppress(FileNotFoundError):
                (folder / "all.zip").unlink()
        self.start()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request with the token; the JSON reply."""
        import httpx

        params = {**kwargs.pop("params", {}), "token": self.token}
        resp = httpx.request(method, f"{self.url}{path}", params=params, timeout=60, **kwargs)
        return resp.json()

    def timings(self, **values: Any) -> None:
        """Set the phase lengths (seconds) and failure of tasks committed from now on."""
        self.call("POST", "/_peer/timings", content=json.dumps(values))

    def create_task(self, images: dict[str, bytes], name: str | None = None,
                    options: list[dict[str, Any]] | None = None) -> str:
        """A committed task made by init/upload/commit (as pyodx does); its uuid."""
        data = {"options": json.dumps(options or [])}
        if name is not None:
            data["name"] = name
        multipart = {k: (None, v) for k, v in data.items()}
        uuid = self.call("POST", "/task/new/init", files=multipart)["uuid"]
        files = [("images", (n, b)) for n, b in images.items()]
        assert self.call("POST", f"/task/new/upload/{uuid}", files=files) == {"success": True}
        assert self.call("POST", f"/task/new/commit/{uuid}") == {"uuid": uuid}
        return str(uuid)

    def set_result(self, uuid: str, member: str, data: bytes | None,
                   rerun: bool = False) -> list[str]:
        """Add or replace (``data``) or drop (None) one member of a finished task's
        all.zip, as a new run of the task would leave it; the members after. ``rerun``:
        the task is also restarted, as a run (of the phase lengths set now) that leaves
        those results, with a new ``processingTime``."""
        path = f"/_peer/task/{uuid}/results/{quote(member)}"
        reply = self.call("PUT" if data is not None else "DELETE", path,
                          params={"rerun": "1"} if rerun else {},
                          **({"content": data} if data is not None else {}))
        if "members" not in reply:
            raise RuntimeError(f"{member}: {reply}")
        return list(reply["members"])

    def clear_results(self, uuid: str) -> None:
        """Give a finished task an all.zip with no members."""
        self.call("DELETE", f"/_peer/task/{uuid}/results")

    def task(self, uuid: str) -> dict[str, Any]:
        """What the node holds for ``uuid``: images (names, sizes, sha256), options..."""
        return dict(self.call("GET", f"/_peer/task/{uuid}"))

    def task_info(self, uuid: str) -> dict[str, Any]:
        """``/task/{uuid}/info`` as a client sees it."""
        return dict(self.call("GET", f"/task/{uuid}/info"))

    def info_calls(self) -> dict[str, int]:
        """How many ``/task/{uuid}/info`` requests the node answered, per uuid."""
        return dict(self.call("GET", "/_peer/stats")["info_calls"])

    def uuids(self) -> list[str]:
        """Committed tasks, from ``/task/list``."""
        return [t["uuid"] for t in self.call("GET", "/task/list")]

    def wait_status(self, uuid: str, code: int, timeout: float = 60) -> dict[str, Any]:
        """Poll ``/task/{uuid}/info`` until its status is ``code``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.task_info(uuid)
            if info.get("status", {}).get("code") == code:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"task {uuid} not in status {code}: {info}")
            time.sleep(0.05)


@contextlib.contextmanager
def running(state: Path, token: str = "", max_images: int | None = None, zip_mb: int = 0,
            big_member_mb: int = 0, save_interval: float = 3600) -> Iterator[Peer]:
    """A peer on 127.0.0.1 (a free port), its state in ``state``; stopped by pid at exit."""
    extra = ["--save-interval", str(save_interval)]
    if max_images is not None:
        extra += ["--max-images", str(max_images)]
    if zip_mb:
        extra += ["--zip-mb", str(zip_mb)]
    if big_member_mb:
        extra += ["--big-member-mb", str(big_member_mb)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    state.mkdir(parents=True, exist_ok=True)
    peer = Peer(sock, state, token, extra)
    try:
        peer.start()
        yield peer
    finally:
        peer.stop(clean=False)
        sock.close()


def main() -> None:
    """Command line of the peer process (started by :func:`running`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--state", required=True, help="state folder")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--zip-mb", type=int, default=0, help="all.zip size in MiB (0: ~1 MB)")
    parser.add_argument("--big-member-mb", type=int, default=0,
                        help=f"size of {BIG_MEMBER} in MiB (0: canned)")
    parser.add_argument("--save-interval", type=float, default=3600.0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
