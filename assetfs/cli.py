"""The command line: ``assetfs mount|umount|status|drivers`` and ``mount.fuse.assetfs``.

``assetfs mount`` checks everything it can before it forks (URL, scheme, driver library,
mount point, /dev/fuse), then starts the daemon in its own session and waits until the
daemon says the mount is ready or why it failed: one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import json
import logging
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from . import __version__, control, errors
from .config import CORE_OPTIONS, MountConfig
from .drivers import available, driver_class
from .drivers.base import POLL_INTERVAL
from .observe.statusview import human_size, render
from .options import split as split_options
from .waiting import Progress

log = logging.getLogger("assetfs")
READY = b"ready\n"


class UsageError(Exception):
    """A one-line reason to refuse a command."""


def fuse_mounts() -> dict[str, str]:
    """Mount point -> source of every assetfs mount, from /proc/mounts."""
    found: dict[str, str] = {}
    with open("/proc/mounts") as mounts:
        for line in mounts:
            source, target, fstype = line.split()[:3]
            if fstype == "fuse.assetfs":
                found[_unescape(target)] = _unescape(source)
    return found


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\")


def is_mountpoint(path: Path) -> bool:
    """True if ``path`` is the root of any mount (FUSE or not)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as info:
        return any(_unescape(line.split()[4]) == target for line in info)


def check_mountpoint(path: Path) -> None:
    """Refuse a mount point that is missing, not a folder or already mounted; clear a dead
    FUSE endpoint left by a crashed daemon ("Transport endpoint is not connected")."""
    try:
        st = os.stat(path)
        # stat of a dead endpoint's root can come from the kernel's attribute cache; statfs
        # always reaches the daemon, so it is the call that fails with ENOTCONN
        os.statvfs(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            log.info("clearing the dead FUSE mount on %s", path)
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False,
                           capture_output=True)
            st = os.stat(path)
        elif exc.errno == errno.ENOENT:
            raise UsageError(f"mount point {path} does not exist") from None
        else:
            raise UsageError(f"mount point {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {path} is not a directory")
    if is_mountpoint(path):
        raise UsageError(f"{path} is already a mount point")


def check_environment() -> None:
    """/dev/fuse must exist and be usable."""
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse does not exist: load the fuse module (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UsageError("/dev/fuse is not accessible to this user")


def cmd_mount(args: argparse.Namespace) -> int:
    options = split_options(",".join(args.options or []))
    config = MountConfig(args.url, Path(args.mountpoint).absolute(), driver_class(args.url),
                         options)
    check_environment()
    check_mountpoint(config.mountpoint)
    if args.foreground:
        return run_foreground(config, args.ready_fd)
    return spawn_daemon(args, config)


def shown_url(url: str) -> str:
    """``url`` for messages: a query string (where a token would sit) is never printed."""
    base, sep, _ = url.partition("?")
    return base + ("?<redacted>" if sep else "")


def run_foreground(config: MountConfig, ready_fd: int | None) -> int:
    """Run the daemon in this process until unmounted. A fatal signal (a crash in a backend's
    native library) prints every thread's Python stack to stderr, the daemon's log."""
    faulthandler.enable()
    logging.basicConfig(
        level=logging.DEBUG if config["debug"] else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, READY)
            os.close(ready_fd)
        _sd_notify(b"READY=1")

    try:
        from . import daemon

        trio.run(daemon.run, config, ready)
    except errors.AssetFSError as exc:
        message = f"assetfs: cannot mount {shown_url(config.url)}: {exc}"
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, message.encode() + b"\n")
        print(message, file=sys.stderr)
        return 1
    return 0


def _sd_notify(message: bytes) -> None:
    """Tell systemd (Type=notify) the mount is ready, if it started us."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    import socket

    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message)


def spawn_daemon(args: argparse.Namespace, config: MountConfig) -> int:
    """Start the daemon detached; return when it reports ready (0) or fails (1)."""
    config.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    logfile = config.cache_dir / "daemon.log"
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "assetfs.cli", "mount", config.url, str(config.mountpoint),
            "--foreground", "--ready-fd", str(write_end)]
    if args.options:
        argv += ["-o", ",".join(args.options)]
    with open(logfile, "ab") as log_out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_out, stderr=log_out,
            pass_fds=(write_end,), start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe, Progress(f"mounting {config.url}, waiting for "
                                                     "the store and its change events"):
        answer = pipe.readline()
    if answer == READY:
        print(f"assetfs: mounted {shown_url(config.url)} on {config.mountpoint} "
              f"(pid {proc.pid}, log {logfile})")
        return 0
    proc.wait(timeout=30)
    reason = answer.decode(errors="replace").strip() or (
        f"assetfs: the daemon exited with status {proc.returncode}; see {logfile}")
    print(reason, file=sys.stderr)
    return 1


POLL = 0.2
"""Seconds between two looks at the uploads while ``assetfs umount`` waits."""
NOTE_EVERY = 2.0
"""Seconds between two "waiting for" lines when what is pending changes."""


def cmd_umount(args: argparse.Namespace) -> int:
    """Wait (over the control socket, control.py) until the uploads are done, ``--timeout``
    passes or Ctrl-C; then unmount. Past the timeout the rest stays in the cache journal and
    uploads at the next mount; Ctrl-C leaves the mount as it is, uploading."""
    mountpoint = control.resolved(args.mountpoint)
    if mountpoint not in fuse_mounts():
        raise UsageError(f"{mountpoint} is not an assetfs mount")
    deadline = time.monotonic() + args.timeout
    pid = None
    try:
        status = control.request(mountpoint, "status", timeout=_left(deadline))
        pid = status.get("pid")
        with Progress("uploading before unmount", lambda: _uploads_left(mountpoint)):
            uploaded = not args.no_flush and _wait_for_uploads(mountpoint, deadline,
                                                               args.timeout, status)
        if not uploaded:
            control.request(mountpoint, "exit_timeout", timeout=_left(deadline), seconds=0)
    except control.ControlError as exc:
        print(f"assetfs: {exc}; unmounting without waiting for uploads", file=sys.stderr)
    except KeyboardInterrupt:
        print("assetfs: interrupted: still mounted, uploads go on", file=sys.stderr)
        return 130
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(result.stderr.strip() or "fusermount3 -u failed")
    if isinstance(pid, int):
        until = max(deadline, time.monotonic() + 0.3)
        with Progress(f"unmounted; waiting for the daemon (pid {pid}) to finish"):
            while time.monotonic() < until and _alive(pid):
                time.sleep(0.05)
    return 0


def _uploads_left(mountpoint: str) -> str:
    """What an unmount still waits for, for its progress line."""
    status = control.request(mountpoint, "status", timeout=1.0)
    cache, uploads = status["cache"], status["uploads"]
    flying = [u for u in uploads.get("in_flight", []) if u["sent_bytes"] and u["bytes"]]
    left = cache["dirty_bytes"] - sum(u["sent_bytes"] for u in flying)
    text = f"{len(status['dirty_files'] or [])} files, {human_size(max(0, left))} to send"
    running = [f"{u['path']} {100 * u['sent_bytes'] // u['bytes']}%" for u in flying]
    return text + (f" ({', '.join(running[:3])})" if running else "")


def _left(deadline: float) -> float:
    """Seconds a control request may take before ``deadline`` (at least a moment)."""
    return min(2.0, max(0.2, deadline - time.monotonic()))


def _wait_for_uploads(
    mountpoint: str, deadline: float, timeout: float, status: dict[str, Any]
) -> bool:
    """Start every pending upload and wait until none is left (True) or ``deadline``
    passes (False), printing what is waited for (and the last upload error) when it
    changes; ``status`` is the daemon's status before."""
    if status.get("dirty_files"):
        control.request(mountpoint, "flush", timeout=_left(deadline))
    shown: set[str] | None = None
    noted = -math.inf
    while True:
        pending = [str(p) for p in status.get("dirty_files") or []]
        if not pending:
            return True
        now = time.monotonic()
        if set(pending) != shown and now - noted >= NOTE_EVERY:
            line = f"assetfs: waiting for {len(pending)} uploads: {', '.join(pending[:10])}"
            error = (status.get("uploads") or {}).get("last_error")
            if error:
                line += f" (last error: {error[1]})"
            print(line, flush=True)
            shown, noted = set(pending), now
        if now >= deadline:
            print(f"assetfs: {len(pending)} files not uploaded after {timeout:g}s; they stay "
                  "in the cache journal and upload at the next mount", file=sys.stderr)
            return False
        time.sleep(min(POLL, deadline - now))
        status = control.request(mountpoint, "status", timeout=_left(deadline))


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs; an exited daemon its parent has not reaped yet (a
    zombie: ``--foreground`` under a supervisor or a test) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def cmd_status(args: argparse.Namespace) -> int:
    targets = [control.resolved(args.mountpoint)] if args.mountpoint else list(fuse_mounts())
    if args.mountpoint and targets[0] not in fuse_mounts():
        raise UsageError(f"{targets[0]} is not an assetfs mount")
    if args.json:
        failed = 0
        for mountpoint in targets:
            try:
                print(json.dumps(control.request(mountpoint, "status"), indent=2))
            except control.ControlError as exc:
                print(f"{mountpoint}: {exc}", file=sys.stderr)
                failed = 1
        return failed
    if args.watch is None:
        print(_status_text(targets))
        return 0
    try:
        while True:  # clear the terminal, then the status; until Ctrl-C
            print("\033[H\033[2J" + time.strftime("%H:%M:%S ") + _status_text(targets),
                  flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        pass
    return 0


def _status_text(targets: list[str]) -> str:
    """The status of each mount in ``targets`` for people (a line for one that does not
    answer its control socket)."""
    texts = []
    for mountpoint in targets:
        try:
            texts.append(render(mountpoint, control.request(mountpoint, "status")))
        except control.ControlError as exc:
            texts.append(f"{mountpoint}: {exc}")
    return "\n".join(texts) or "no assetfs mounts"


def cmd_drivers(args: argparse.Namespace) -> int:
    """Print each URL scheme, its driver and the driver's ``-o`` options, then the options
    every mount takes (all from the declarations, config.py and each driver's)."""
    for scheme, entry in sorted(available().items()):
        print(f"{scheme}:  {entry.value}")
        try:
            cls = driver_class(f"{scheme}:/")
        except errors.AssetFSError as exc:
            print(f"    not available: {exc}")
            continue
        for option in cls.declared_options:
            print(f"    -o {option.usage()}")
    print("options of every mount:")
    for option in (*CORE_OPTIONS, POLL_INTERVAL):
        print(f"    -o {option.usage()}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``assetfs``."""
    top = argparse.ArgumentParser(prog="assetfs", description="Mount remote asset stores.")
    top.add_argument("--version", action="version", version=f"assetfs {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="mount URL on MOUNTPOINT")
    mount.add_argument("url")
    mount.add_argument("mountpoint")
    mount.add_argument("-o", dest="options", action="append", metavar="OPT[=VAL],...")
    mount.add_argument("-f", "--foreground", action="store_true")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(func=cmd_mount)
    umount = sub.add_parser("umount", help="upload pending writes and unmount")
    umount.add_argument("mountpoint")
    umount.add_argument("--no-flush", action="store_true", help="do not wait for uploads")
    umount.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    umount.set_defaults(func=cmd_umount)
    status = sub.add_parser("status", help="show mounts, cache, uploads and events")
    status.add_argument("mountpoint", nargs="?")
    status.add_argument("--json", action="store_true", help="the daemon's status as JSON")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until Ctrl-C")
    status.set_defaults(func=cmd_status)
    drivers = sub.add_parser("drivers", help="list the URL schemes")
    drivers.set_defaults(func=cmd_drivers)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``assetfs``."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"assetfs: {exc}", file=sys.stderr)
    except errors.AssetFSError as exc:
        print(f"assetfs: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"assetfs: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("assetfs: interrupted", file=sys.stderr)
        return 130
    return 1


def mount_helper(argv: list[str] | None = None) -> int:
    """``mount.fuse.assetfs URL MOUNTPOINT [-o OPTIONS]``: what ``mount -t fuse.assetfs`` and
    /etc/fstab run. Mount-only options (rw, defaults, noauto, _netdev, user...) are dropped."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: mount.fuse.assetfs URL MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 1
    url, mountpoint, rest = args[0], args[1], args[2:]
    options: list[str] = []
    while rest:
        flag = rest.pop(0)
        if flag == "-o" and rest:
            options += [o for o in rest.pop(0).split(",")
                        if o and o not in _FSTAB_ONLY and not o.startswith(_FSTAB_PREFIXES)]
    return main(["mount", url, mountpoint] + (["-o", ",".join(options)] if options else []))


_FSTAB_ONLY = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev",
               "nofail", "exec", "noexec", "suid", "nosuid", "dev", "nodev"}
_FSTAB_PREFIXES = ("x-", "comment=")
"""Options for mount(8) and systemd (``x-systemd.automount``, ``comment=systemd.*``)."""


if __name__ == "__main__":
    sys.exit(main())
