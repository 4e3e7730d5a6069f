"""The Storage API peer (tests/peers/nucleus_peer.py) as a subprocess the tests drive: start
it on 127.0.0.1, flip its fault switches over its HTTP control port, kill and restart it on
the same ports, stop it by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mounting import stop_process

PEER = Path(__file__).parent / "peers" / "nucleus_peer.py"


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NucleusPeer:
    """A running peer serving ``root``: ``url`` is its ``omniverse://`` root URL and
    ``discovery`` the URL the driver's ``-o discovery=`` takes."""

    root: Path
    grpc_port: int
    http_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The host name of the peer's URLs (its top-level address), one per peer: one
        process (a conformance run) may register several peers with the library."""
        return f"peer{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"omniverse://{self.host}"

    @property
    def discovery(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, ready_timeout: float = 60.0) -> None:
        """Start the server process and wait until it answers discovery."""
        with open(self.log, "ab") as logfile:
            self.proc = subprocess.Popen(
                [sys.executable, str(PEER), str(self.root), "--host", self.host,
                 "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)],
                stdout=logfile, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited {self.proc.returncode}: {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.discovery}/stats", timeout=1).raise_for_status()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"peer not ready after {ready_timeout}s: {self.output()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server (connections drop at once); the tree on disk stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill and start again on the same ports (switches are reset)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)

    def control(self, **switches: Any) -> None:
        """Set the peer's switches (see tests/peers/nucleus_peer.py); None clears one."""
        httpx.post(f"{self.discovery}/control", json=switches, timeout=10).raise_for_status()

    def calls(self) -> dict[str, int]:
        """Calls served so far, by gRPC method name."""
        return dict(httpx.get(f"{self.discovery}/stats", timeout=10).json()["calls"])

    def peak(self) -> dict[str, int]:
        """The most calls of each gRPC method ever in progress at once."""
        return dict(httpx.get(f"{self.discovery}/stats", timeout=10).json()["peak"])

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def nucleus_peer(root: Path, workdir: Path) -> Iterator[NucleusPeer]:
    """A peer serving folder ``root`` (created if missing) for the ``with`` block."""
    root.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    peer = NucleusPeer(root, free_port(), free_port(), workdir / "peer.log")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def mount_options(peer: NucleusPeer, cache: Path, **more: str) -> dict[str, str | None]:
    """Options of a mount of ``peer.url``: the discovery URL, a cache dir, and ``more``."""
    return {"discovery": peer.discovery, "cache_dir": str(cache), **more}


def environment() -> dict[str, str]:
    """Environment of the daemon: the library's retries kept short (backends doc)."""
    return {"OMNI_STORAGE_RETRY_MAX": os.environ.get("OMNI_STORAGE_RETRY_MAX", "3")}
