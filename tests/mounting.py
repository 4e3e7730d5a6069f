"""Test helper: run a real assetfs mount in the foreground and always tear it down by pid."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def is_mounted(mountpoint: Path) -> bool:
    """True when ``mountpoint`` is a FUSE mount point in /proc/mounts."""
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if (len(fields) > 2 and fields[2].startswith("fuse")
                    and fields[1].encode().decode("unicode_escape") == target):
                return True
    return False


def serving_pid(mountpoint: Path) -> int | None:
    """The pid of the assetfs daemon answering on ``mountpoint`` (None for a dead endpoint
    or another filesystem): /proc/mounts alone cannot tell a live mount from a crashed one."""
    try:
        return int(json.loads(os.getxattr(mountpoint, "user.assetfs.status"))["pid"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class Mount:
    """A running foreground daemon: ``path`` is the mount point, ``proc`` the daemon."""

    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the daemon (a crash), leaving a dead FUSE endpoint behind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def output(self) -> str:
        """What the daemon logged so far."""
        return self.log.read_text(errors="replace")


def assetfs_command(*args: str) -> list[str]:
    """The argv that runs the CLI of the assetfs under test."""
    return [sys.executable, "-m", "assetfs.cli", *args]


@contextlib.contextmanager
def mounted(
    url: str,
    mountpoint: Path,
    options: Mapping[str, str | None] | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
) -> Iterator[Mount]:
    """Mount ``url`` on ``mountpoint`` with ``assetfs mount --foreground``; unmount and kill
    the daemon by pid on exit, even when the test failed."""
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a dead endpoint left by a killed daemon: the mount clears it
        if exc.errno != errno.ENOTCONN:
            raise
    opts = ",".join(k if v is None else f"{k}={v}" for k, v in (options or {}).items())
    argv = assetfs_command("mount", url, str(mountpoint), "--foreground")
    if opts:
        argv += ["-o", opts]
    log = mountpoint.parent / f"{mountpoint.name}.log"
    logged_before = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as logfile:
        proc = subprocess.Popen(
            argv, stdout=logfile, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    mount = Mount(mountpoint, proc, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while not (is_mounted(mountpoint) and serving_pid(mountpoint) == proc.pid):
            if proc.poll() is not None:
                raise RuntimeError(f"assetfs exited {proc.returncode}: {mount.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount not ready after {ready_timeout}s: {mount.output()}")
            time.sleep(0.05)
        yield mount
    finally:
        died = mount.proc.poll()
        if died is not None:  # shown with the failure: what the daemon said before it died
            print(f"the daemon exited ({died}) before the unmount; its log ends:\n"
                  f"{mount.output()[-8000:]}", file=sys.stderr)
        unmount(mount)
    unexpected = unexpected_errors(log, logged_before)
    assert not unexpected, f"the daemon logged an unexpected error ({log}):\n{unexpected}"


UNEXPECTED = ("Traceback (most recent call last)", "was never awaited")
"""What a daemon never logs when all goes as designed: failures it expects (a server down,
a refused name) are one-line warnings; a traceback or an unawaited coroutine is a bug."""


def unexpected_errors(log: Path, offset: int = 0) -> str:
    """The part of daemon log ``log`` from byte ``offset`` around its first
    :data:`UNEXPECTED` line ("" if none)."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if any(marker in line for marker in UNEXPECTED):
            return "\n".join(lines[max(0, i - 2):i + 25])
    return ""


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll ``check()`` every 50 ms until it returns something true, and return that; the
    test fails, naming ``what``, after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:g}s")
        time.sleep(0.05)
    return result


def fsync(path: Path) -> None:
    """fsync a file on a mount: the daemon answers once its upload has finished
    (docs/architecture.md: fsync waits for the upload and reports its error)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM ``proc`` and wait up to ``timeout`` seconds; SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def unmount(mount: Mount) -> None:
    """Unmount (lazily if busy) and stop the daemon; SIGKILL it if it lingers."""
    if is_mounted(mount.path):
        subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)
    stop_process(mount.proc)
    if is_mounted(mount.path):
        subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)
