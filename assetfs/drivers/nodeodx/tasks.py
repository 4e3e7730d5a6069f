"""What the driver knows about the node's committed tasks: their info and console lines,
fetched on demand and kept for a time that depends on the status (queued/running tasks
change, finished ones rarely), folder names, and the synthesized files' entries.

Folder names: the task's ``name`` (its uuid when it has none, docs/backends/nodeodx.md:
a task created without a name has no ``name`` key); a name that repeats gets
``~<first 8 of uuid>`` for every task but the oldest, and so does one that cannot be a
file name (``/``, NUL, ``.``, ``..``, more than 200 bytes, or the reserved ``.node``),
after its bad characters become ``_``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..base import Entry, Kind

QUEUED, RUNNING, FAILED, COMPLETED, CANCELED = 10, 20, 30, 40, 50
"""Task status codes (docs/backends/nodeodx.md, Status and lifecycle)."""
STATUS = {QUEUED: "QUEUED", RUNNING: "RUNNING", FAILED: "FAILED", COMPLETED: "COMPLETED",
          CANCELED: "CANCELED"}
ACTIVE = (QUEUED, RUNNING)
FINISHED_WITH_RESULTS = (COMPLETED, CANCELED)
"""Statuses whose archive may be downloadable (a COMPLETED task canceled keeps it)."""
NODE_DIR = ".node"
"""The reserved folder holding the node's ``info.json`` and ``options.json``."""
NAME_LIMIT = 200


@dataclass
class Rendered:
    """A synthesized file's text, its version, and when it last changed (ns)."""

    data: bytes = b""
    version: str = ""
    changed_ns: int = 0

    def update(self, data: bytes) -> None:
        """Take new content; the version and time move only when it differs."""
        if data != self.data or not self.version:
            self.data = data
            self.version = hashlib.sha1(data).hexdigest()[:16]
            self.changed_ns = time.time_ns()

    def entry(self, name: str) -> Entry:
        """The file's entry (read-only content: mode 0o444 would make the kernel answer
        EACCES before the driver could say EROFS, so the usual 0o644 is shown)."""
        return Entry(name=name, kind=Kind.FILE, size=len(self.data), mtime_ns=self.changed_ns,
                     version=self.version)


@dataclass
class TaskState:
    """One committed task: ``info`` as ``/task/{uuid}/info`` gave it, at ``fetched``
    (monotonic seconds); console ``lines``; the archive's size (``asset``: None unknown,
    -1 not ready) checked at ``asset_checked``; ``hidden`` relative paths removed by the
    user (until the monotonic time given) so that ``rm -r`` can empty the folder."""

    uuid: str
    info: dict[str, Any] = field(default_factory=dict)
    fetched: float = -1e9
    lines: list[str] = field(default_factory=list)
    lines_fetched: float = -1e9
    lines_final: bool = False
    asset: int | None = None
    asset_checked: float = -1e9
    info_file: Rendered = field(default_factory=Rendered)
    console_file: Rendered = field(default_factory=Rendered)
    hidden: dict[str, float] = field(default_factory=dict)

    @property
    def code(self) -> int:
        """The status code (0 before the first info)."""
        return int((self.info.get("status") or {}).get("code") or 0)

    @property
    def active(self) -> bool:
        """QUEUED or RUNNING."""
        return self.code in ACTIVE

    @property
    def run(self) -> str:
        """What tells this run's results from another's: the finished run's
        ``processingTime`` (ms; the node gives no validator of the archive,
        docs/backends/nodeodx.md, The result archive)."""
        return str(self.info.get("processingTime", ""))

    def take_info(self, info: dict[str, Any], now: float) -> bool:
        """A fresh info reply. True when a new run began: the task went back to active
        (a restart seen), or it is finished again with another ``processingTime`` (a
        restart whose whole run fell between two polls); its console and archive then
        start afresh."""
        before, run = self.code, self.run
        self.info, self.fetched = info, now
        restarted = self.code in ACTIVE and before not in ACTIVE and bool(before)
        rerun = (before in FINISHED_WITH_RESULTS and self.code in FINISHED_WITH_RESULTS
                 and self.run != run)
        if restarted or rerun:
            self.lines, self.lines_final = [], False
            self.asset, self.asset_checked = None, -1e9
        self.info_file.update((json.dumps(info, indent=2) + "\n").encode())
        return restarted or rerun

    def take_lines(self, lines: list[str], now: float) -> None:
        """New console lines (appended)."""
        self.lines.extend(lines)
        self.lines_fetched = now
        self.lines_final = not self.active
        self.console_file.update("".join(line + "\n" for line in self.lines).encode())

    def is_hidden(self, rel: str, now: float) -> bool:
        """Whether ``rel`` (or a folder above it) was removed by the user lately."""
        for key, until in list(self.hidden.items()):
            if until < now:
                del self.hidden[key]
            elif rel == key or rel.startswith(key + "/"):
                return True
        return False

    def metadata(self) -> dict[str, str]:
        """The ``user.assetfs.*`` attributes of the task folder."""
        info = self.info
        status = info.get("status") or {}
        values = {
            "uuid": self.uuid,
            "status": STATUS.get(self.code, str(self.code)),
            "progress": str(info.get("progress", "")),
            "images_count": str(info.get("imagesCount", "")),
            "processing_time": str(info.get("processingTime", "")),
            "error": str(status.get("errorMessage") or ""),
            "name": str(info.get("name") or ""),
        }
        return {k: v for k, v in values.items() if v}

    def entry(self, folder: str) -> Entry:
        """The task folder's entry (its mtime: the task's creation)."""
        created = int(self.info.get("dateCreated") or 0) * 1_000_000
        return Entry(name=folder, kind=Kind.DIR, mtime_ns=created,
                     version=f"{self.uuid}:{self.code}", mode=0o755, metadata=self.metadata())


def folder_names(tasks: list[TaskState], taken: set[str]) -> dict[str, str]:
    """Folder name -> uuid for ``tasks`` (module docstring); ``taken`` names (staged
    folders) are never given out."""
    names: dict[str, str] = {}
    ordered = sorted(tasks, key=lambda t: (int(t.info.get("dateCreated") or 0), t.uuid))
    for task in ordered:
        raw = task.info.get("name")
        if not raw:
            base, bad = task.uuid, False
        else:
            text = str(raw)
            base = text.replace("/", "_").replace("\0", "_")
            if base in (".", ".."):
                base = "_" * len(base)
            bad = base != text or base == NODE_DIR or len(base.encode()) > NAME_LIMIT
            base = base.encode()[:NAME_LIMIT].decode("utf-8", "ignore")
        name = base
        if bad or name in names or name in taken:
            name = f"{base}~{task.uuid[:8]}"
        names[name] = task.uuid
    return names
