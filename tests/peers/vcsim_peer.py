"""VMware's vcsim (built by ``make vcsim`` into .cache/vcsim/vcsim) as a test peer, plus a
small synchronous REST client for arranging and checking server state from tests.

The REST client is deliberately independent of the driver under test: it is how tests check
"through the REST API, not through the mount".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mounting import stop_process

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / ".cache" / "vcsim" / "vcsim"
CL = "/rest/com/vmware/content"
USER, PASSWORD = "admin", "secret"
"""The only credentials the simulator's REST login accepts (main.go -username/-password)."""


def build() -> Path:
    """The vcsim binary, built with ``make vcsim`` when missing or stale."""
    source = ROOT / "tests" / "peers" / "vcsim" / "main.go"
    if not BINARY.exists() or BINARY.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["make", "-s", "-C", str(ROOT), "vcsim"], check=True)
    return BINARY


@dataclass
class Vcsim:
    """A running simulator: ``url`` is ``http(s)://127.0.0.1:PORT``."""

    proc: subprocess.Popen[bytes]
    url: str
    datastore: str
    ca_file: str | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return self.url.split("://", 1)[1]

    def client(self) -> httpx.Client:
        """A REST client logged in as :data:`USER`."""
        if self._client is None:
            verify = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
            client = httpx.Client(base_url=self.url, verify=verify, timeout=30)
            resp = client.post("/rest/com/vmware/cis/session", auth=(USER, PASSWORD))
            resp.raise_for_status()
            client.headers["vmware-api-session-id"] = resp.json()["value"]
            self._client = client
        return self._client

    def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        """One REST call; returns ``value`` (raises for non-2xx)."""
        resp = self.client().request(method, path, json=body, params=params or None)
        resp.raise_for_status()
        return resp.json().get("value") if resp.content.strip() else None

    def create_library(self, name: str) -> str:
        """A new local library on the simulator's datastore; its id."""
        backing = [{"type": "DATASTORE", "datastore_id": self.datastore}]
        spec = {"name": name, "type": "LOCAL", "storage_backings": backing}
        return str(self.call("POST", f"{CL}/local-library", {"create_spec": spec}))

    def create_item(self, library_id: str, name: str, item_type: str = "iso") -> str:
        spec = {"library_id": library_id, "name": name, "type": item_type}
        return str(self.call("POST", f"{CL}/library/item", {"create_spec": spec}))

    def find_item(self, library_id: str, name: str) -> str | None:
        ids = (
            self.call(
                "POST",
                f"{CL}/library/item",
                {"spec": {"library_id": library_id, "name": name}},
                **{"~action": "find"},
            )
            or []
        )
        return str(ids[0]) if ids else None

    def files(self, item_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"{CL}/library/item/file", library_item_id=item_id) or [])

    def upload(self, item_id: str, name: str, data: bytes) -> None:
        """Add ``data`` as file ``name`` through an update session (PUSH, PUT, complete)."""
        sid = self.call(
            "POST",
            f"{CL}/library/item/update-session",
            {"create_spec": {"library_item_id": item_id}},
        )
        info = self.call(
            "POST",
            f"{CL}/library/item/updatesession/file/id:{sid}",
            {"file_spec": {"name": name, "source_type": "PUSH", "size": len(data)}},
            **{"~action": "add"},
        )
        self.client().put(info["upload_endpoint"]["uri"], content=data).raise_for_status()
        self.call("POST", f"{CL}/library/item/update-session/id:{sid}", **{"~action": "complete"})
        self.call("DELETE", f"{CL}/library/item/update-session/id:{sid}")

    def download_sha256(self, item_id: str, name: str) -> tuple[int, str]:
        """(size, sha256 hex) of file ``name`` read through a download session."""
        sid = self.call(
            "POST",
            f"{CL}/library/item/download-session",
            {"create_spec": {"library_item_id": item_id}},
        )
        try:
            info = self.call(
                "POST",
                f"{CL}/library/item/downloadsession/file/id:{sid}",
                {"file_name": name},
                **{"~action": "prepare"},
            )
            digest, size = hashlib.sha256(), 0
            with self.client().stream("GET", info["download_endpoint"]["uri"]) as resp:
                resp.raise_for_status()
                for chunk in resp.iter_raw(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            return size, digest.hexdigest()
        finally:
            self.call("DELETE", f"{CL}/library/item/download-session/id:{sid}")

    def expire_session(self, session_id: str) -> None:
        """Log out ``session_id`` server-side, as an idle expiry would."""
        resp = self.client().delete(
            "/rest/com/vmware/cis/session", headers={"vmware-api-session-id": session_id}
        )
        resp.raise_for_status()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@contextlib.contextmanager
def running(tls: bool = False, timeout: float = 20.0) -> Iterator[Vcsim]:
    """Start vcsim on 127.0.0.1 (``tls``: https with a fresh self-signed certificate);
    stop it by pid (SIGTERM, then SIGKILL) on exit."""
    argv = [str(build()), "-username", USER, "-password", PASSWORD] + (["-tls"] if tls else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sim: Vcsim | None = None
    try:
        fields: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while "READY" not in fields:
            line = proc.stdout.readline().decode().strip()
            if not line:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vcsim did not start (exit {proc.poll()})")
                continue
            key, _, value = line.partition(" ")
            fields.setdefault(key, value)
        sim = Vcsim(proc, fields["URL"], fields["DATASTORE"], fields.get("CA"))
        yield sim
    finally:
        if sim is not None:
            sim.close()
        stop_process(proc, timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if sim is not None:  # left behind when the simulator was SIGKILLed by a fault test
            shutil.rmtree(sim.datastore.split("@", 1)[0], ignore_errors=True)
            if sim.ca_file:
                with contextlib.suppress(OSError):
                    os.unlink(sim.ca_file)
