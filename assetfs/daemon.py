"""One mount: wires the driver, caches, write-back, events and pyfuse3 in one trio run."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from . import __version__, control, errors, retry
from .cache.blocks import BlockCache
from .cache.journal import SYNC_INTERVAL, Journal
from .cache.writeback import WriteBack
from .config import MountConfig
from .drivers.base import ChangeEvent, Driver, Entry
from .drivers.localdir import LocalFolder
from .events.echoes import OwnChanges
from .events.invalidator import Invalidator
from .events.subscription import Subscription
from .loopwatch import LoopWatch
from .observe.metrics import MetricsServer, take_sample
from .observe.progress import read_positions
from .remote import Remote
from .routing import Routed
from .vfs.inodes import InodeTable
from .vfs.metadata import MetadataCache
from .vfs.mtimes import MtimeOverlay
from .vfs.namespace import Namespace
from .vfs.operations import Operations, Timeouts
from .vfs.trash import TrashPolicy

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals that unmount (and, during the final uploads, stop them)."""
_M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3


def raise_read_ahead(mountpoint: Path, kib: int) -> None:
    """Let the kernel send 1 MiB reads instead of 128 KiB ones by raising the mount's
    ``/sys/class/bdi/<major>:<minor>/read_ahead_kb`` (docs/architecture.md, Request sizes).
    Root only; silently skipped otherwise. The device number comes from /proc/self/mountinfo: a
    ``stat`` of the mount point from the daemon's own trio thread would hang. The kernel
    resets the value when it gets the daemon's FUSE_INIT reply, so this runs after it."""
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mountinfo") as info:
        devices = [line.split()[2] for line in info if line.split()[4] == target]
    if devices:
        with contextlib.suppress(OSError):
            Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb").write_text(str(kib))


def keep_freed_memory() -> None:
    """Keep freed heap memory in the daemon instead of handing it back to the kernel.

    Every FUSE read or write and every network read allocates a buffer of about 1 MiB. With
    glibc's default, self-adjusting thresholds the top of the heap is given back as soon as
    about 2 MiB of it are free, so the next buffer is faulted in again page by page: a
    fifth of the daemon's CPU on a 256 MiB read from vcsim (perf). Here buffers of up to
    32 MiB come from the heap and up to 64 MiB of free heap is kept (``mallopt``
    ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``). Does nothing without glibc's ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)


class Mount:
    """The pieces of one running mount, built by :meth:`open` and run by :meth:`serve`."""

    def __init__(self, config: MountConfig, driver: Driver) -> None:
        self.config = config
        self.driver = driver
        self.policy = retry.RetryPolicy(attempt_timeout=config.timeout, deadline=config.timeout)
        caps = driver.capabilities
        cache_dir = config.cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = open(cache_dir / "lock", "w")  # noqa: SIM115 - held for the mount's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.AlreadyExists(
                f"another assetfs daemon uses the cache directory {cache_dir}"
            ) from None
        ttl = config.kernel_timeout("attr_timeout", caps.push_events, driver.poll_interval)
        self.metadata = MetadataCache(ttl=max(ttl, 1.0))
        self.journal = Journal(cache_dir / "journal.sqlite")
        self.trash = TrashPolicy(config.trash, os.getuid())
        self.local_trash = LocalFolder(cache_dir / "trash", cache_dir / "trash.partial") \
            if config.trash == "local" else None
        """The folder of ``-o trash=local`` (connected by :meth:`serve`)."""
        self.routes = driver if self.local_trash is None else Routed(
            driver, self.local_trash, self.trash.local)
        """The driver the VFS sees: the store, and with ``-o trash=local`` the local trash
        folder beside it (routing.py)."""
        self.remote = Remote(self.routes, self.policy)
        self.cache = BlockCache(cache_dir, self.remote, self.journal, config.cache_max)
        self.events_send, self.events_receive = trio.open_memory_channel[ChangeEvent](10_000)
        self.inodes = InodeTable()
        self.own = OwnChanges()
        self.mtimes = MtimeOverlay(self.journal)
        self.namespace = Namespace(self.remote, self.metadata, self.cache, self.mtimes,
                                   self.trash)
        self.writeback = WriteBack(
            self.cache, self.remote, config.write_back_delay, self._uploaded, self.own,
            self.events_send, workers=caps.uploads,
        )
        self.writeback.exit_timeout = config["umount_timeout"]
        timeouts = Timeouts(
            entry=config.kernel_timeout("entry_timeout", caps.push_events, driver.poll_interval),
            attr=ttl,
            negative=(config["negative_timeout"] if config["negative_timeout"] is not None
                      else ttl if caps.push_events else 0.0),
        )
        self.ops = Operations(
            self.remote, self.namespace, self.metadata, self.cache, self.writeback, self.inodes,
            timeouts, self.status, self.own, read_only=config.read_only,
            passthrough=config.passthrough, passthrough_copies=config.passthrough_copies,
        )
        self.invalidator = Invalidator(self.metadata, self.cache, self.inodes,
                                       self.ops.kernel_version, self.ops.passthrough, self.own,
                                       self.namespace.store_entry)
        self.subscription = Subscription(self.routes, self.events_send)
        self.started = time.time()
        self.control_path = control.socket_path(config.mountpoint)
        """The control socket (control.py); named before the mount exists, since naming it
        resolves the mount point's folder."""
        self.loop = LoopWatch()
        """Event-loop stalls (installed by :meth:`serve`)."""
        self.stop_signals = 0
        """Stop signals received (SIGTERM, SIGINT, SIGHUP)."""
        self.metrics: MetricsServer | None = None
        """The Prometheus endpoint (``-o metrics``), started by :meth:`serve`."""
        for record in self.journal.records():
            item = self.cache.adopt(record.key, record.path, record.base_version)
            if item is not None:
                self.writeback.schedule(item, 0)
        self.cache.remove_strays()

    def _uploaded(self, path: str, entry: Entry, mtime_ns: int) -> None:
        """The file written at ``path`` is on the store as ``entry``; it keeps showing the
        local modification time ``mtime_ns`` (see vfs/mtimes.py)."""
        self.mtimes.keep(path, entry.version, mtime_ns)
        self.metadata.put(path, entry)
        inode = self.inodes.get(path)
        if inode is not None:
            self.ops.kernel_version[inode] = entry.version

    def status(self) -> dict[str, Any]:
        """What ``assetfs status`` prints (JSON-able)."""
        stats = self.writeback.stats
        pending = self.writeback.pending()
        sub = self.subscription.status
        dirty = {i.path for i in pending}
        sent = self._sent(list(stats.in_progress))
        flying = [{"path": path, "bytes": size, "started": round(stats.started.get(path, 0), 1),
                   "sent_bytes": sent[path]} for path, size in stats.in_progress.items()]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "url": self.config.url,
            "driver": type(self.driver).__name__,
            "mountpoint": str(self.config.mountpoint),
            "uptime_s": round(time.time() - self.started, 1),
            "cache": {
                "dir": str(self.config.cache_dir),
                "used_bytes": self.cache.used_bytes(),
                "max_bytes": self.config.cache_max,
                "dirty_bytes": self.cache.dirty_bytes(),
                "hits": self.cache.stats.hits,
                "misses": self.cache.stats.misses,
                "downloaded_bytes": self.cache.stats.downloaded_bytes,
                "streams_stopped": self.cache.stats.streams_stopped,
            },
            "dirty_files": sorted(i.path for i in pending),
            "uploads": {
                "files": stats.files,
                "bytes": stats.bytes,
                "in_progress": stats.in_progress,
                "retries": stats.retries,
                "conflicts": stats.conflicts,
                "conflict_files": stats.conflict_paths[-20:],
                "last_error": stats.last_error,
                "queued": len(dirty - set(stats.in_progress)),
                "in_flight": flying,
                "failing": [{"path": path, "since": round(since, 1), "error": message,
                             "attempts": attempts}
                            for path, (since, message, attempts) in stats.failing.items()
                            if path in dirty],
                "given_up": stats.given_up[-20:],
            },
            "events": {
                "state": sub.state,
                "last_event": self.invalidator.last_event,
                "received": self.invalidator.received,
                "applied": self.invalidator.applied,
                "restarts": sub.restarts,
                "last_error": sub.last_error,
                "watched_folders": len(self.driver.watched),
                "backlog": self.events_receive.statistics().current_buffer_used,
                "lag_s": round(self.invalidator.lag, 4),
            },
            "passthrough": {
                "enabled": self.ops.passthrough.enabled,
                "opens": self.ops.passthrough.opens,
            },
            "page_fills": self.ops.page_fill.fills,
            "driver_state": self.driver.status(),
            "inodes": len(self.inodes),
            "requests": dict(self.ops.requests.counts),
            "store_requests": dict(self.remote.calls),
            "loop": self.loop.status(),
            "trash": self.config.trash,
            "metrics": self.metrics.url if self.metrics else None,
        }

    def _sent(self, paths: list[str]) -> dict[str, int | None]:
        """Bytes each running upload of ``paths`` has read from its cache file, if known
        (observe/progress.py)."""
        files = {path: self.cache.cache_file(item) for path in paths
                 if (item := self.cache.item(path)) is not None}
        positions = read_positions(list(files.values()))
        return {path: positions[files[path]] if path in files else None for path in paths}

    async def serve(self, ready: Callable[[], None]) -> None:
        """Mount, call ``ready()``, and serve until unmounted or signalled; then upload what
        is dirty (up to ``umount_timeout`` seconds) and unmount."""
        options = set(pyfuse3.default_options)
        options.discard("default_permissions")
        options |= {f"fsname={self.config.url[:200]}", "subtype=assetfs", "default_permissions"}
        if self.config["allow_other"]:
            options.add("allow_other")
        if self.config.read_only:
            options.add("ro")
        if self.local_trash is not None:
            await self.local_trash.connect()
        address = self.config.metrics
        if address is not None:
            self.metrics = MetricsServer(*address, lambda: take_sample(self.status,
                                                                       self.ops.requests))
            log.info("metrics at %s", self.metrics.url)
        pyfuse3.init(self.ops, str(self.config.mountpoint), options)
        trio.lowlevel.add_instrument(self.loop)
        self.loop.sample_stacks()
        state = {"mounted": True}
        # One signal receiver for the whole life of the mount, final uploads included: a
        # SIGTERM between two receivers would meet the default action and kill the daemon
        # before it uploads what it holds.
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            await self._serve(ready, state, signals)

    async def _serve(
        self, ready: Callable[[], None], state: dict[str, bool], signals: AsyncIterator[int]
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.cache.start(nursery)
                nursery.start_soon(self.writeback.run)
                nursery.start_soon(self._sync_journal)
                nursery.start_soon(self.subscription.run)
                nursery.start_soon(self.invalidator.run, self.events_receive)
                nursery.start_soon(self._cancel_on_signal, signals, nursery.cancel_scope,
                                   "unmounting")
                nursery.start_soon(self._serve_requests, nursery.cancel_scope, state)
                await nursery.start(self._serve_control)
                # A statfs from a worker thread returns once the kernel's FUSE_INIT has been
                # answered: only then can the read-ahead be raised (INIT resets it).
                await trio.to_thread.run_sync(os.statvfs, self.config.mountpoint)
                raise_read_ahead(self.config.mountpoint,
                                 self.config["read_ahead_kb"])
                with trio.move_on_after(self.config.timeout):
                    await self.driver.events_ready.wait()
                if not self.driver.events_ready.is_set():
                    log.warning("change events are not flowing yet; serving anyway")
                ready()
                log.info("mounted %s on %s", self.config.url, self.config.mountpoint)
        finally:
            pyfuse3.close(unmount=state["mounted"])
            self.cache.stop()
            self.ops.release_all()
            with trio.CancelScope(shield=True):
                await self._final_flush(signals)
            self.cache.close()
            self.journal.close()
            await self.driver.close()
            if self.metrics is not None:
                await self.metrics.close()

    async def _serve_control(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer ``assetfs status`` and ``assetfs umount`` on the control socket
        (control.py); a mount whose socket cannot be made serves without it."""
        path = self.control_path
        try:
            await control.serve(path, self.control_commands(), task_status)
        except OSError as exc:
            log.warning("no control socket at %s: %s", path, exc)
            task_status.started()

    def control_commands(self) -> dict[str, control.Handler]:
        """The control commands: ``status`` (what :meth:`status` says), ``flush`` (start
        every pending upload now; the paths), ``exit_timeout`` (``seconds`` the daemon
        uploads for once unmounted; 0 leaves what is dirty in the journal)."""

        def flush(request: Mapping[str, Any]) -> list[str]:
            return sorted(item.path for item in self.writeback.hurry())

        def exit_timeout(request: Mapping[str, Any]) -> float:
            try:
                self.writeback.exit_timeout = float(request["seconds"])
            except (KeyError, TypeError, ValueError):
                raise control.ControlError("exit_timeout takes seconds") from None
            return self.writeback.exit_timeout

        return {"status": lambda request: self.status(), "flush": flush,
                "exit_timeout": exit_timeout}

    async def _serve_requests(self, scope: trio.CancelScope, state: dict[str, bool]) -> None:
        """Answer FUSE requests until the filesystem is unmounted, then stop the mount."""
        await pyfuse3.main()
        state["mounted"] = False
        scope.cancel()

    async def _sync_journal(self) -> None:
        """Flush the journal to disk every SYNC_INTERVAL seconds (see cache/journal.py)."""
        while True:
            await trio.sleep(SYNC_INTERVAL)
            try:
                await self.journal.sync()
            except errors.AssetFSError as exc:
                log.warning("journal flush failed: %s", exc)

    async def _cancel_on_signal(
        self, signals: AsyncIterator[int], scope: trio.CancelScope, action: str, nth: int = 1
    ) -> None:
        """Cancel ``scope`` once the daemon has received its ``nth`` stop signal, logging
        ``action``. The first one unmounts (uploads go on for up to ``umount_timeout``
        seconds, also when the unmount came first, from ``fusermount3 -u``); the second
        one stops those uploads."""
        async for signum in signals:
            self.stop_signals += 1
            if self.stop_signals >= nth:
                log.info("signal %s: %s", signal.Signals(signum).name, action)
                scope.cancel()
                return
            log.info("signal %s: uploading before exit; another signal stops it",
                     signal.Signals(signum).name)

    async def _final_flush(self, signals: AsyncIterator[int]) -> None:
        pending = self.writeback.pending()
        if not pending:
            return
        limit = self.writeback.exit_timeout
        if limit <= 0:
            log.info("not uploading %d dirty files before exit: they stay in the journal and "
                     "upload at the next mount", len(pending))
            return
        log.info("uploading %d dirty files before exit (up to %gs; another signal stops it)",
                 len(pending), limit)
        with trio.move_on_after(limit):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.writeback.run)
                nursery.start_soon(self._cancel_on_signal, signals, nursery.cancel_scope,
                                   "leaving the rest to the next mount", 2)
                await self.writeback.drain()
                nursery.cancel_scope.cancel()
        left = self.writeback.pending()
        if left:
            log.warning("%d dirty files stay in the journal and upload at the next mount: %s",
                        len(left), ", ".join(i.path for i in left[:10]))


async def run(config: MountConfig, ready: Callable[[], None]) -> None:
    """Connect the driver (a clear error if the URL, server or credentials are wrong),
    then mount and serve."""
    keep_freed_memory()
    driver = config.driver(config.url, config.driver_options)
    mount_policy = retry.RetryPolicy(attempt_timeout=config.timeout, deadline=config.timeout)
    await Remote(driver, mount_policy).connect()
    mount = Mount(config, driver)
    await mount.serve(ready)
