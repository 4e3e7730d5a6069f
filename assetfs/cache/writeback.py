"""Write-back: upload dirty files after a delay, retry failures, resolve conflicts.

A file is uploaded ``delay`` seconds after its last handle closed (so an editor's
save-and-rename or repeated writes give one upload), at once on ``fsync`` (which waits for
the result), and at start-up for every file the journal lists. A failed upload is retried
with capped exponential backoff and jitter, for ever: the journal keeps the data safe
meanwhile, and a store that comes back gets everything. An upload that can never succeed
(an error whose ``permanent`` is set by the driver's translation point, assetfs/errors.py)
is not retried: its bytes are saved as a conflict copy beside the name, or in the local
recovery folder, and ``assetfs status`` names it. If the remote version changed since
the content was fetched, ours is uploaded beside it as ``NAME.conflict-<UTC time>``
(docs/architecture.md, What a write does), never over it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import shutil
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .. import errors
from ..backoff import Backoff
from ..drivers.base import ChangeEvent, ChangeKind, Entry, ReadMode, split
from ..events.echoes import OwnChanges
from ..remote import Remote
from .blocks import BlockCache
from .item import CacheItem

log = logging.getLogger(__name__)
COMPARE_CHUNK = 1 << 20
"""Bytes per read when the store's content is compared with ours before a conflict."""


@dataclass
class UploadStats:
    """Counters for ``assetfs status``: files and bytes uploaded, retries (failed
    attempts), conflicts, the last error as ``(unix time, message)``, the uploads running
    (``in_progress``: path -> bytes, ``started``: path -> unix time) and the files whose
    last attempt failed (``failing``: path -> (unix time, message, failed attempts))."""

    files: int = 0
    bytes: int = 0
    retries: int = 0
    conflicts: int = 0
    conflict_paths: list[str] = field(default_factory=list)
    last_error: tuple[float, str] | None = None
    in_progress: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    failing: dict[str, tuple[float, str, int]] = field(default_factory=dict)
    given_up: list[dict[str, str]] = field(default_factory=list)
    """Uploads that can never succeed: ``{"path", "reason", "saved_as"}`` each, where
    ``saved_as`` is a store path (a conflict copy) or a local file (the recovery folder)."""


def conflict_name(path: str, now: float | None = None) -> str:
    """``/a/b.txt`` -> ``/a/b.txt.conflict-20261122T031500Z``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{path}.conflict-{stamp}"


class WriteBack:
    """The upload queue of one mount. Run :meth:`run` in the mount's nursery."""

    def __init__(
        self,
        cache: BlockCache,
        remote: Remote,
        delay: float,
        on_uploaded: Callable[[str, Entry, int], None],
        own: OwnChanges,
        events: trio.MemorySendChannel[ChangeEvent] | None = None,
        workers: int = 4,
        max_backoff: float = 30.0,
    ) -> None:
        self.cache = cache
        self.remote = remote
        self.delay = delay
        self.on_uploaded = on_uploaded
        self.own = own
        """Our store changes (events/echoes.py): an upload is one, until ``on_uploaded``."""
        self.events = events
        self.workers = workers
        self.backoff = Backoff(base=0.5, cap=max_backoff, floor=0.5)
        """Waits between tries of a failing upload (0.5-1 s, doubling up to ``max_backoff``)."""
        self.stats = UploadStats()
        self._due: dict[CacheItem, float] = {}
        self._attempts: dict[CacheItem, int] = {}
        self._busy: set[CacheItem] = set()
        self._wake = trio.Event()
        self._finished: dict[CacheItem, trio.Event] = {}
        self._errors: dict[CacheItem, errors.AssetFSError] = {}
        self._forced: set[CacheItem] = set()
        self._held: collections.Counter[CacheItem] = collections.Counter()
        self._failed_writes: weakref.WeakSet[CacheItem] = weakref.WeakSet()
        """Items whose last upload failed inside the store's write: the store may hold
        part or all of what that attempt sent, under a version we never learned."""
        self._sleep_until = -math.inf
        """When the dispatcher wakes by itself; earlier due uploads wake it (monotonic s)."""
        self.recovery_dir = cache.root / "recovery"
        """Where the bytes of an upload that can never succeed go when the store refuses
        even a conflict copy (``<cache dir>/recovery/<UTC time>/<path>``)."""
        self.exit_timeout = 30.0
        """Seconds the daemon uploads dirty files for when it stops (``-o umount_timeout``;
        0 after ``assetfs umount --no-flush``: they stay in the journal for the next mount)."""

    def schedule(self, item: CacheItem, delay: float | None = None) -> None:
        """Upload ``item`` after ``delay`` seconds (default: the write-back delay)."""
        if not item.dirty:
            return
        due = time.monotonic() + (self.delay if delay is None else delay)
        current = self._due.get(item)
        self._due[item] = due if current is None or delay == 0 else max(due, current)
        if self._due[item] < self._sleep_until:  # else the dispatcher wakes in time anyway
            self._wake.set()

    def may_have_written(self, item: CacheItem) -> bool:
        """Whether the last upload of ``item`` failed inside the store's write, which may
        have left part or all of it on the store (omni.client's ``file:`` copy did): a
        file never uploaded whole may then be there all the same."""
        return item in self._failed_writes

    def pending(self) -> list[CacheItem]:
        """Dirty items queued or being uploaded."""
        return self.cache.dirty_items()

    async def flush(self, item: CacheItem) -> None:
        """Upload ``item`` now and wait until what it holds at this call is on the store
        (an upload of this ``generation`` or a later one); raise a failed attempt's error
        (fsync). Writes through passthrough are counted here, since they do not pass
        through the daemon."""
        self.cache.count_passthrough_writes(item)
        wanted = item.generation
        while item.dirty and item.stored_generation < wanted:
            finished = self._finished.setdefault(item, trio.Event())
            self._forced.add(item)
            self.schedule(item, 0)
            await finished.wait()
            error = self._errors.pop(item, None)
            if error is not None:
                raise error

    @contextlib.asynccontextmanager
    async def held(self, items: Iterable[CacheItem]) -> AsyncIterator[None]:
        """Wait for running uploads of ``items`` to end and start none of them until the
        block exits: a rename or unlink on the store must not race an upload, which would
        land at the old name after the rename, or bring a deleted file back."""
        items = list(items)
        self._held.update(items)
        try:
            for item in items:
                while item in self._busy:
                    await self._finished.setdefault(item, trio.Event()).wait()
            yield
        finally:
            self._held.subtract(items)
            self._held = +self._held
            self._wake.set()

    def hurry(self) -> list[CacheItem]:
        """Start the uploads of everything dirty now (without waiting for the write-back
        delay, or the backoff of a failed attempt); return the dirty items."""
        pending = self.pending()
        for item in pending:
            self.schedule(item, 0)
        return pending

    async def drain(self) -> None:
        """Upload everything dirty now and return when nothing is dirty."""
        self.hurry()
        while self.pending():
            await trio.sleep(0.1)

    async def run(self) -> None:
        """Dispatch due uploads to at most ``workers`` concurrent tasks, until cancelled."""
        limiter = trio.CapacityLimiter(self.workers)
        async with trio.open_nursery() as nursery:
            while True:
                now = time.monotonic()
                ready = [
                    i for i, due in self._due.items()
                    if due <= now and i not in self._busy and not self._held[i]
                    and (not i.writers or i in self._forced)
                ]
                for item in ready:
                    del self._due[item]
                    self._forced.discard(item)
                    self._busy.add(item)
                    nursery.start_soon(self._upload, item, limiter)
                waits = [d for i, d in self._due.items()
                         if i not in self._busy and not i.writers and not self._held[i]]
                self._wake = trio.Event()
                self._sleep_until = min(waits, default=now + 1.0)
                with trio.move_on_after(max(0.0, self._sleep_until - now)):
                    await self._wake.wait()
                self._sleep_until = -math.inf

    async def settle(self, folder: str, exclude: CacheItem | None = None) -> None:
        """Upload every dirty file at or under ``folder`` (but ``exclude``) now and return
        once none is left; files still open for writing are waited for (a control action
        on the folder must see what is being copied into it)."""
        prefix = folder.rstrip("/") + "/"
        while True:
            left = [i for i in self.pending() if i is not exclude
                    and (i.path == folder or i.path.startswith(prefix))]
            if not left:
                return
            for item in left:
                if not item.writers:
                    self.schedule(item, 0)
            await trio.sleep(0.05)

    async def _upload(self, item: CacheItem, limiter: trio.CapacityLimiter) -> None:
        try:
            if self.remote.uploads_last(item.path):
                await self.settle(split(item.path)[0], exclude=item)
            async with limiter:
                await self._upload_once(item)
            self._attempts.pop(item, None)
            self.stats.failing.pop(item.path, None)
            self._errors.pop(item, None)  # an earlier failure is not this fsync's answer
        except Exception as exc:
            if item.unlinked:  # deleted or replaced here meanwhile: nothing to upload
                self._failed_writes.discard(item)
                return
            if not isinstance(exc, errors.AssetFSError):
                log.exception("upload of %s failed unexpectedly", item.path)
                exc = errors.AssetFSError(str(exc))
            self.stats.last_error = (time.time(), f"upload of {item.path}: {exc}")
            self._errors[item] = exc
            if exc.permanent:
                # no retry; while a writer has it open it waits for the last close
                if not item.writers:
                    await self._give_up(item, exc)
                return
            attempt = self._attempts.get(item, 0)
            self._attempts[item] = attempt + 1
            self.stats.retries += 1
            self.stats.failing[item.path] = (time.time(), str(exc), attempt + 1)
            log.warning("upload of %s failed (%s); retrying", self.remote.describe(item.path), exc)
            self.schedule(item, self.backoff.delay(attempt))
        finally:
            self._busy.discard(item)
            self.stats.in_progress.pop(item.path, None)
            self.stats.started.pop(item.path, None)
            finished = self._finished.pop(item, None)
            if finished is not None:
                finished.set()
            self._wake.set()

    async def _upload_once(self, item: CacheItem) -> None:
        """Upload ``item`` once, to its name, or to a conflict copy when the store's file
        changed since ``base_version``. A change left by our own failed attempt is no
        conflict: omni.client's ``file:`` copy failed with ERROR while the cache file was
        truncated under it and left a new file behind, which the retry took for someone
        else's (a ``.conflict-`` copy the model test saw, tests/test_model.py). Within such
        an attempt another writer's save is overwritten (last writer wins)."""
        if not item.dirty:
            return
        item.observe()  # an fsync's upload while passthrough writers have the file open
        generation, path, size, mtime_ns = item.generation, item.path, item.size, item.mtime_ns
        target = path
        if item.base_version:
            try:
                remote = await self.remote.stat(path)
            except errors.NotFound:
                remote = None
            if (remote is not None and remote.version != item.base_version
                    and item not in self._failed_writes):
                if remote.size == size and await self._same_content(path, item, size):
                    # the store already has these bytes: a daemon killed between an upload
                    # and its journal update, or another client saving the same content
                    self.cache.mark_uploaded(item, generation, remote)
                    if item.path == path:
                        self.on_uploaded(path, remote, mtime_ns)
                    return
                target = conflict_name(path)
        self.stats.in_progress[path] = size
        self.stats.started[path] = time.time()
        source = self.cache.cache_file(item)
        with self.own.changing(target):
            try:
                entry = await self.remote.write(target, source, size)
            except BaseException:
                if target == path:
                    self._failed_writes.add(item)
                raise
            self._failed_writes.discard(item)
            if target == path:
                self.cache.mark_uploaded(item, generation, entry)
                if item.path == path:
                    self.on_uploaded(path, entry, mtime_ns)
        self.stats.files += 1
        self.stats.bytes += size
        if target != path:
            await self._conflict(item, path, target, generation, entry)

    async def _give_up(self, item: CacheItem, reason: errors.AssetFSError) -> None:
        """The upload of ``item`` can never succeed (``reason.permanent``: the name is a
        folder on the store, its folder is gone or is a file, the store rejects the name).
        Its bytes go to a conflict copy beside the name, or, when the store refuses that
        too, to the local recovery folder (:attr:`recovery_dir`); the item then stops
        shadowing the name, and ``assetfs status`` names the file, the reason and where its
        bytes are."""
        path, size, source = item.path, item.size, self.cache.cache_file(item)
        target = conflict_name(path)
        try:
            entry: Entry | None = await self.remote.write(target, source, size)
            saved = target
        except errors.AssetFSError:
            entry = None
            try:
                saved = str(await trio.to_thread.run_sync(self._recover, path, source))
            except OSError as exc:  # the cache disk is full: keep it, and try again later
                log.warning("upload of %s cannot succeed (%s), and its content could not be "
                            "saved in %s (%s); keeping it", path, reason, self.recovery_dir, exc)
                self.schedule(item, self.backoff.cap)
                return
        self.stats.given_up.append({"path": path, "reason": str(reason), "saved_as": saved})
        log.warning("upload of %s cannot succeed (%s): not retried; its content was saved as "
                    "%s", self.remote.describe(path), reason, saved)
        self.cache.abandon(item)
        self._failed_writes.discard(item)
        if self.events is not None:
            await self.events.send(ChangeEvent(ChangeKind.UPDATED, path))
            if entry is not None:
                await self.events.send(ChangeEvent(ChangeKind.CREATED, target, entry))

    def _recover(self, path: str, source: str) -> Path:
        """Copy cache file ``source`` of ``path`` to the recovery folder; the copy's path."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        copy = self.recovery_dir / stamp / path.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        return copy

    async def _same_content(self, path: str, item: CacheItem, size: int) -> bool:
        """Whether the store's ``path`` holds exactly the ``size`` bytes of our cache file.
        Read only before declaring a conflict (rare), through whatever read the driver has."""
        with open(self.cache.cache_file(item), "rb") as ours:
            offset = 0
            async for theirs in self._remote_chunks(path, size):
                if ours.read(len(theirs)) != theirs:
                    return False
                offset += len(theirs)
            return offset == size

    async def _remote_chunks(self, path: str, size: int) -> AsyncIterator[bytes | memoryview]:
        mode = self.remote.read_mode
        if mode is ReadMode.LOCAL:
            local = await self.remote.local_range(path)
            left = size + 1 if local.size is None else local.size  # one more: a longer file
            with open(local.path, "rb") as f:
                f.seek(local.offset)
                while left > 0 and (chunk := f.read(min(COMPARE_CHUNK, left))):
                    left -= len(chunk)
                    yield chunk
        elif mode is ReadMode.RANGED:
            for offset in range(0, size, COMPARE_CHUNK):
                yield await self.remote.read(path, offset, COMPARE_CHUNK)
        else:
            async for part in self.remote.open_stream(path):
                yield part

    async def _conflict(
        self, item: CacheItem, path: str, target: str, generation: int, entry: Entry
    ) -> None:
        """Our copy went to ``target``; ``path`` keeps the remote version. The item stops
        shadowing ``path`` and the kernel is told about both names."""
        self.stats.conflicts += 1
        self.stats.conflict_paths.append(target)
        log.warning("conflict: %s changed on the store while modified here; our version "
                    "was saved as %s", self.remote.describe(path), split(target)[1])
        self.cache.mark_uploaded(item, generation, entry)
        if not item.dirty:
            self.cache.drop(path)
        if self.events is not None:
            await self.events.send(ChangeEvent(ChangeKind.UPDATED, path))
            await self.events.send(ChangeEvent(ChangeKind.CREATED, target, entry))
