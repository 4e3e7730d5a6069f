"""The command line: ``assetfs mount|umount|status|drivers`` and ``mount.fuse.assetfs``.

``assetfs mount`` checks everything it can before it forks (URL, scheme, driver library,
mount point, /dev/fuse), then starts the daemon in its own session and waits until the
daemon says the mount is ready or why it failed: one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from . import __version__, errors
from .config import CORE_OPTIONS, MountConfig
from .drivers import available, driver_class
from .drivers.base import POLL_INTERVAL
from .options import split as split_options

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
    """Run the daemon in this process until unmounted."""
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
    with os.fdopen(read_end, "rb") as pipe:
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


def _status_of(mountpoint: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(os.getxattr(mountpoint, "user.assetfs.status"))
    return status


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    if mountpoint not in fuse_mounts():
        raise UsageError(f"{mountpoint} is not an assetfs mount")
    if args.no_flush:  # the daemon must not upload them on its way out either
        os.setxattr(mountpoint, "user.assetfs.umount_timeout", b"0")
    else:
        status = _status_of(mountpoint)
        dirty = status.get("dirty_files") or []
        if dirty:
            print(f"assetfs: waiting for {len(dirty)} uploads: {', '.join(map(str, dirty[:10]))}")
        try:
            os.setxattr(mountpoint, "user.assetfs.flush", str(args.timeout).encode())
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:
                left = _status_of(mountpoint).get("dirty_files") or []
                print(f"assetfs: {len(left)} files not uploaded after {args.timeout}s; they stay "
                      "in the cache journal and upload at the next mount", file=sys.stderr)
            else:
                raise
    pid = _status_of(mountpoint).get("pid")
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(result.stderr.strip() or "fusermount3 -u failed")
    if isinstance(pid, int):
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
    return 0


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs; an exited daemon its parent has not reaped yet (a
    zombie: ``--foreground`` under a supervisor or a test) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def cmd_status(args: argparse.Namespace) -> int:
    targets = [os.path.realpath(args.mountpoint)] if args.mountpoint else list(fuse_mounts())
    if args.mountpoint and targets[0] not in fuse_mounts():
        raise UsageError(f"{targets[0]} is not an assetfs mount")
    for mountpoint in targets:
        status = _status_of(mountpoint)
        if args.json:
            print(json.dumps(status, indent=2))
            continue
        cache, uploads, events = status["cache"], status["uploads"], status["events"]
        assert isinstance(cache, dict) and isinstance(uploads, dict) and isinstance(events, dict)
        print(f"{mountpoint}: {status['url']} ({status['driver']}, pid {status['pid']})")
        print(f"  cache: {cache['used_bytes']} of {cache['max_bytes']} bytes, "
              f"{cache['dirty_bytes']} dirty ({cache['dir']})")
        dirty = status["dirty_files"]
        assert isinstance(dirty, list)
        print(f"  dirty files: {len(dirty)}" + (f" ({', '.join(dirty[:5])})" if dirty else ""))
        print(f"  uploads: {uploads['files']} files, {uploads['bytes']} bytes, "
              f"{uploads['retries']} retries, {uploads['conflicts']} conflicts")
        if uploads["last_error"]:
            print(f"  last error: {uploads['last_error'][1]}")
        last = events["last_event"]
        print(f"  events: {events['state']}, {events['received']} received, last "
              + (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else "never"))
        driver_state = status.get("driver_state")
        if driver_state:
            print(f"  driver: {json.dumps(driver_state)}")
        loop = status.get("loop")
        if isinstance(loop, dict):
            print(f"  event loop: longest step {1000 * loop['longest_step_s']:.1f} ms "
                  f"({loop['longest_task']}), {loop['stalls']} over "
                  f"{1000 * loop['stall_s']:.0f} ms")
    if not targets:
        print("no assetfs mounts")
    return 0


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
    status.add_argument("--json", action="store_true")
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
