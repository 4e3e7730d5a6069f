"""The control socket: how ``assetfs umount`` and ``assetfs status`` talk to a running daemon
without a system call on the mount.

A command that waits inside a system call on the mount (an ``setxattr`` on its root, as
``assetfs umount`` once did to wait for uploads) cannot be interrupted: Ctrl-C does nothing,
and a second command blocks on the kernel's lock of the root inode behind the first. So each
daemon listens on a Unix socket named after its mount point (:func:`socket_path`, in a
folder only its user can enter), the CLI asks over it with a timeout, and it waits by
polling, where a signal is handled at once.

The protocol is one JSON object per line each way: a request ``{"command": NAME, ...}``
and the answer ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one line"}``.
Each connection is served by its own task, so any number of commands can run at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 16
"""Bytes a request line may take."""
Handler = Callable[[Mapping[str, Any]], Any]
"""A command: takes the request object, returns the JSON-able result (or raises
:class:`ControlError`)."""


class ControlError(Exception):
    """A control request failed: the one-line reason (no answer, or the daemon refused)."""


def resolved(mountpoint: str | os.PathLike[str]) -> str:
    """``mountpoint`` as /proc/mounts spells it: absolute, its folder's symbolic links
    resolved. Only the folder is resolved: the mount point itself is not looked at, since a
    ``stat`` of it is a request to the daemon (which may be stuck, or be the caller)."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def socket_path(mountpoint: str | os.PathLike[str]) -> Path:
    """The control socket of the daemon serving ``mountpoint`` (any spelling of it): in
    ``$XDG_RUNTIME_DIR/assetfs`` or else ``<tmp>/assetfs-<uid>``, named by a hash of
    :func:`resolved` ``(mountpoint)`` (a Unix socket path is limited to 107 bytes)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = (Path(runtime) / "assetfs" if runtime
              else Path(tempfile.gettempdir()) / f"assetfs-{os.getuid()}")
    digest = hashlib.sha256(resolved(mountpoint).encode()).hexdigest()[:24]
    return folder / f"{digest}.sock"


async def serve(path: Path, commands: Mapping[str, Handler],
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` and answer requests with ``commands`` until cancelled; the
    socket file is removed on the way out. A stale socket left by a killed daemon is
    replaced. Raises OSError if the socket cannot be made (before ``task_status`` is told
    it started)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = path.parent.stat()
    if folder.st_uid != os.getuid() or folder.st_mode & 0o077:
        raise PermissionError(f"{path.parent} is not a private folder of this user")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(16)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:  # out of file descriptors: try again in a moment
                    log.warning("control socket %s: %s", path, exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_answer, trio.SocketStream(conn), commands)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _answer(stream: trio.SocketStream, commands: Mapping[str, Handler]) -> None:
    async with stream:
        try:
            line = await _read_line(stream)
            request = json.loads(line)
            handler = commands.get(request.get("command"))
            if handler is None:
                raise ControlError(f"unknown command {request.get('command')!r}")
            answer: dict[str, Any] = {"ok": True, "result": handler(request)}
        except (ControlError, ValueError, AttributeError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except trio.BrokenResourceError:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(answer).encode() + b"\n")


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ControlError("request too long")
    return data


def request(mountpoint: str | os.PathLike[str], command: str, timeout: float = 5.0,
            **args: Any) -> Any:
    """Send ``command`` (with ``args``) to the daemon of ``mountpoint`` and return its
    result; blocks at most about ``timeout`` seconds, and a signal (Ctrl-C) interrupts it.
    Raises ControlError with the reason when the daemon does not answer or refuses."""
    path = socket_path(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
            with sock.makefile("rb") as answers:
                line = answers.readline(MAX_REQUEST)
        except FileNotFoundError:
            raise ControlError(f"no daemon answers on {path}") from None
        except OSError as exc:
            raise ControlError(f"daemon of {mountpoint}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(line)
    except ValueError:
        raise ControlError(f"daemon of {mountpoint} sent no answer") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error")))
    return answer.get("result")
