"""The real OMERO.fs servers (``fsServerFS``, ``fsServerMS`` from omero-dropbox) as a test peer.

Facts this follows (``docs/backends/omero-fs.md``): the servers read their settings only from an
Ice config FILE (``--Ice.Config=``; properties on the command line are ignored and the server
exits -1), ``omero.logging.directory`` must exist (else exit 1; their stdout/stderr go there
too), and the working directory matters (relative fileIds resolve against it), so each server
runs in its own directory. Both are up in well under a second and exit 0 on SIGTERM.
Every process started here is stopped by pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mounting import stop_process

MiB = 1024 * 1024


def free_port_pair() -> int:
    """A free TCP port P on 127.0.0.1 whose neighbour P+1 is free too (FileServer, Monitor)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free pair of ports")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _all_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state T in /proc)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that just exited
            if stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                return False
    return True


def _listener_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (IPv4), from /proc/net/tcp."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on ``port``: another test suite running at the
    same time may have taken a port that free_port_pair() found free, and a test must not
    go on against that suite's server."""
    inodes = _listener_inodes(port)
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}")[len("socket:["):-1] in inodes:
                    return True
    raise RuntimeError(f"port {port} is taken by another process")


class Server:
    """One stock OMERO.fs server process (``kind`` is ``"FS"`` or ``"MS"``) on a fixed port."""

    def __init__(self, kind: str, port: int, workdir: Path) -> None:
        self.kind = kind
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        name, key = ("FileServer", "file") if kind == "FS" else ("MonitorServer", "monitor")
        self.identity = name
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.config = workdir / f"{name}.cfg"
        self.config.write_text(
            f"Ice.Admin.ServerId={name}\n"
            f"omero.logging.directory={logs}\n"
            f"omero.fs.{key}ServerIdString={name}\n"
            f"omero.fs.{key}ServerAdapterName={name}Adapter\n"
            f"{name}Adapter.Endpoints=tcp -h 127.0.0.1 -p {port}\n"
        )
        self.log = logs / f"{name}.log"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until its port accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        module = "fsServerFS" if self.kind == "FS" else "fsServerMS"
        with open(self.workdir / f"{self.kind}.out", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, f"--Ice.Config={self.config}"],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not _listens(self.proc.pid, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{module} exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{module} not listening after {timeout}s: {self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (the servers exit 0 on it), SIGKILL if it lingers; resumes a paused one."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server must be able to exit
        stop_process(proc, timeout=10)
        # The port is free again once nothing listens (Ice sets SO_REUSEADDR).
        deadline = time.monotonic() + 5
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its port open (a stuck server, not a dead one).

        Returns once every thread of it has stopped: kill() only queues the signal, and on a
        busy machine an Ice thread woken by a request could serve it before the thread that
        takes the signal is scheduled (a read right after pause() was answered in 3 ms)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not _all_stopped(self.proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server {self.proc.pid} did not stop")
            time.sleep(0.001)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def output(self) -> str:
        parts = []
        for path in (self.workdir / f"{self.kind}.out", self.log):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


class OmeroFS:
    """A FileServer on port P and a MonitorServer on P+1, serving ``tree``."""

    def __init__(self, tree: Path, workdir: Path) -> None:
        self.tree = tree
        port = free_port_pair()
        self.fs = Server("FS", port, workdir / "fs")
        self.ms = Server("MS", port + 1, workdir / "ms")

    @property
    def url(self) -> str:
        """The mount URL; the monitor defaults to port+1, which is where ours is."""
        return f"omerofs://127.0.0.1:{self.fs.port}{self.tree}"

    def start(self) -> None:
        self.fs.start()
        self.ms.start()

    def stop(self) -> None:
        self.fs.stop()
        self.ms.stop()


@contextlib.contextmanager
def omerofs_servers(tree: Path, workdir: Path) -> Iterator[OmeroFS]:
    """Run both servers for the duration of the block; always stop them by pid."""
    servers = OmeroFS(tree, workdir)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


# --- the sample tree -------------------------------------------------------------------
UNICODE_DIR = "ünïcødé — 名前"
UNICODE_FILE = "файл ✓.txt"
SIZES = {
    "empty.bin": 0,
    "one.bin": 1,
    "just-under-block.bin": MiB - 1,
    "block.bin": MiB,
    "block-plus-one.bin": MiB + 1,
    "odd.bin": 3 * MiB + 12345,
    "big-64MiB.bin": 64 * MiB,
}


def make_tree(root: Path) -> dict[str, str]:
    """Create the sample tree under ``root``; return {relative path: sha256 hex} of its files.

    Nested folders, unicode names, an empty folder and files from 0 B to 64 MiB (sizes at and
    around the 1 MiB readBlock size).
    """
    root.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}

    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()

    rng = random.Random(5)
    for name, size in SIZES.items():
        put(f"data/{name}", rng.randbytes(size))
    put("a/b/c/deep.txt", b"deep\n")
    put("a/b/sibling.txt", b"sibling\n" * 1000)
    put(f"{UNICODE_DIR}/{UNICODE_FILE}", "Grüße, 世界\n".encode())
    (root / "a" / "empty-folder").mkdir(parents=True, exist_ok=True)
    os.sync()
    return digests
