"""The invalidator: one trio task that applies remote changes to the caches and the kernel.

For each batch of events (coalesced per path) it first updates the metadata cache and drops
clean cached content whose version changed, holding no lock a request handler needs, and
then calls ``pyfuse3.invalidate_entry`` / ``invalidate_inode`` in a worker thread. Calling
those inside a request handler deadlocks the mount (docs/architecture.md, Concurrency
rules). Deletions use the ``deleted=`` form so that inotify watchers on the mount see them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyfuse3
import trio

from ..cache.blocks import BlockCache
from ..drivers.base import ChangeEvent, ChangeKind, Entry, join, split
from ..errors import AssetFSError
from ..vfs.inodes import InodeTable
from ..vfs.metadata import MISSING, MetadataCache
from ..vfs.passthrough import Passthrough
from .echoes import OwnChanges

log = logging.getLogger(__name__)

BATCH = 2000
"""Events taken from the channel per pass: a storm is coalesced, never queued per event."""

SLICE = 100
"""Events applied between two checkpoints: a batch never holds up request handlers long."""

GATHER = 0.02
"""Seconds to let events gather after the first of a batch: a storm then costs one kernel
round (a worker thread hand-off) per batch, not per few events; negligible latency."""


def _key(event: ChangeEvent) -> tuple[str, str]:
    """Coalescing key: the last event per path wins; a RESYNC or a LISTED of a folder never
    merges with an event about the folder itself."""
    whole = event.kind in (ChangeKind.RESYNC, ChangeKind.LISTED)
    return event.kind.value if whole else "", event.path


@dataclass(frozen=True)
class KernelNote:
    """One kernel cache invalidation: an entry (``name`` under ``parent``, with the
    ``deleted`` inode for a deletion) or an inode's attributes and data (``name`` None)."""

    inode: int
    name: str | None = None
    deleted: int = 0


class Invalidator:
    """Consumes :class:`ChangeEvent` s; counts what it did for ``assetfs status``."""

    def __init__(
        self, metadata: MetadataCache, cache: BlockCache, inodes: InodeTable,
        kernel_version: dict[int, str], passthrough: Passthrough, own: OwnChanges,
        store_entry: Callable[[str], Awaitable[Entry | None]],
    ) -> None:
        self.own = own
        self.store_entry = store_entry
        """What the store holds at a path now (Namespace.store_entry)."""
        self.passthrough = passthrough
        self.metadata = metadata
        self.cache = cache
        self.inodes = inodes
        self.kernel_version = kernel_version
        self.applied = 0
        self.received = 0
        self.last_event: float | None = None
        """Unix time of the last event received."""
        self.lag = 0.0
        """Seconds from the arrival of the last batch's first event until the kernel had
        been told (the gathering pause included)."""

    async def run(self, receive: trio.MemoryReceiveChannel[ChangeEvent]) -> None:
        """Apply events until the channel closes or the task is cancelled.

        Events gather for :data:`GATHER` seconds, then a batch of up to :data:`BATCH` of
        them is taken, coalesced per path; the task yields every :data:`SLICE` events so
        request handlers (a reader's FUSE reads) run in between, and each kernel
        invalidation is sent once per batch."""
        async for first in receive:
            self.last_event = time.time()
            await trio.sleep(GATHER)
            batch = {_key(first): first}
            self.received += 1
            with contextlib.suppress(trio.WouldBlock):
                while len(batch) < BATCH:
                    event = receive.receive_nowait()
                    self.received += 1
                    batch.pop(_key(event), None)
                    batch[_key(event)] = event
            notes: list[KernelNote] = []
            for done, event in enumerate(batch.values(), 1):
                if (known := self._known_version(event)) is not None:
                    notes.extend(self._refreshed(event.path, known))
                elif self._maybe_echo(event):
                    notes.extend(await self._verified(event))
                else:
                    notes.extend(self.apply(event))
                if done % SLICE == 0:
                    await trio.sleep(0)
            self.applied += len(batch)
            if notes:
                await trio.to_thread.run_sync(notify_kernel, list(dict.fromkeys(notes)))
            self.lag = time.time() - self.last_event
            await trio.sleep(0)

    def apply(self, event: ChangeEvent) -> list[KernelNote]:
        """Update the caches for one event; return the kernel invalidations it needs."""
        if event.kind is ChangeKind.RESYNC:
            return self._resync(event.path)
        if event.kind is ChangeKind.LISTED:
            return self._listed(event.path, event.listing)
        path = event.path
        parent, name = split(path)
        cached = self.metadata.entry(path)
        unchanged = event.entry is not None and cached == event.entry
        if event.kind is not ChangeKind.DELETED and unchanged and not self._bound_to_older(
                path, event.entry):
            return []
        parent_inode = self.inodes.get(parent)
        inode = self.inodes.get(path)
        replaced = (
            isinstance(cached, Entry)
            and event.entry is not None
            and cached.kind is not event.entry.kind
        )
        gone = event.kind is ChangeKind.DELETED or replaced
        item = self.cache.item(path)
        if item is not None and not item.shadows and (
            event.entry is None or event.entry.version != item.base_version
        ):
            # A reader holding the file open must see the new content to its new end, not
            # the size it had at open: rebase the item when it holds no copy, unless the
            # kernel reads it from a backing file (passthrough) that a rebase cannot change
            # (one that is not the store's file changed in place).
            keep = not gone and item.handles and (
                inode is None or self.passthrough.bound_item(inode) is not item
                or (event.entry is not None
                    and self.passthrough.reads_current_copy(inode, event.entry)))
            if not (keep and event.entry is not None and self.cache.rebase(item, event.entry)):
                self.cache.drop(path)
        bound = inode is not None and self.passthrough.bound_item(inode)
        if not gone and bound and bound is not self.cache.item(path):
            # The inode's open files read the old content through the kernel (passthrough),
            # which binds the inode to that cache file: the path gets a new inode, and new
            # opens the new content, as after a save by rename.
            gone = True
        was_file = isinstance(cached, Entry) and not cached.is_dir
        if gone and not was_file:
            self.metadata.forget_tree(path)
        else:
            self.metadata.forget(path)
        self.metadata.forget_listing(parent)
        if event.kind is ChangeKind.DELETED:
            self.metadata.put(path, None)
        elif event.entry is not None:
            self.metadata.put(path, event.entry)
        notes: list[KernelNote] = []
        if gone:
            # Everything known under a deleted or replaced folder is gone too: a new
            # object at one of those paths must get a fresh inode, not the old one. (Only
            # folders are searched: an event storm deletes files by the thousand.)
            prefix = path.rstrip("/") + "/"
            under = [] if was_file else self.inodes.known_paths()
            for known in [path, *(p for p in under if p.startswith(prefix))]:
                detached = self.inodes.detach(known)
                if detached is not None:
                    self.kernel_version.pop(detached, None)
        if parent_inode is not None:
            if gone or inode is None:
                notes.append(KernelNote(parent_inode, name, inode if gone and inode else 0))
            notes.append(KernelNote(parent_inode))
        if not gone and inode is not None:
            notes.append(KernelNote(inode))
        return notes

    def _known_version(self, event: ChangeEvent) -> Entry | None:
        """The entry ``event`` brings if it reports the file version the mount already
        holds at its path (the echo of our own upload, whose entry came with the write's
        answer), else None. Such an event can bring back nothing deleted and hide nothing
        made, so it needs no store re-check (events/echoes.py)."""
        cached = self.metadata.entry(event.path)
        new = event.entry
        if (event.kind is not ChangeKind.DELETED and new is not None and not new.is_dir
                and isinstance(cached, Entry) and not cached.is_dir
                and new.version == cached.version and new.size == cached.size
                and not self._bound_to_older(event.path, new)):
            return new
        return None

    def _bound_to_older(self, path: str, entry: Entry | None) -> bool:
        """Whether the open files of ``path``'s inode read, through the kernel
        (passthrough), clean content of a version other than ``entry``'s: a lookup took
        the new entry into the metadata cache before this event came (a polled store), and
        the path still needs a new inode for new opens to read the new content."""
        inode = self.inodes.get(path)
        bound = self.passthrough.bound_item(inode) if inode is not None else None
        return (bound is not None and entry is not None and not bound.shadows
                and bound.base_version != entry.version)

    def _refreshed(self, path: str, entry: Entry) -> list[KernelNote]:
        """Record the store's own ``entry`` of a version the mount holds at ``path`` (its
        mtime and the fields only the store knows); the kernel re-reads the file's
        attributes only when its mode or mtime changed. The folder's listing stays."""
        cached = self.metadata.entry(path)
        self.metadata.put(path, entry)  # a change: fills in flight try again
        inode = self.inodes.get(path)
        same = isinstance(cached, Entry) and (cached.mode, cached.mtime_ns) == (
            entry.mode, entry.mtime_ns)
        return [] if same or inode is None else [KernelNote(inode)]

    def _maybe_echo(self, event: ChangeEvent) -> bool:
        """Whether ``event`` is about a path this mount changed lately (events/echoes.py)."""
        return event.kind not in (ChangeKind.RESYNC, ChangeKind.LISTED) and self.own.recent(
            event.path)

    async def _verified(self, event: ChangeEvent) -> list[KernelNote]:
        """Apply what the store holds at ``event.path`` now instead of what the event says:
        the event may be the late echo of one of our changes since undone (a deleted file's
        creation). For a file that local unsaved content stands in for, only the store's
        entry is recorded (the echo of an earlier name's deletion must not detach it).
        Nothing is applied while a change of ours to the path is under way, or when one to
        the folder lands while the store is asked (either records what is newer:
        events/echoes.py), or when the cache already holds what the store has; when the
        store cannot be asked, the path is only forgotten (:meth:`_recheck`)."""
        path = event.path
        if self.own.under_way(path):
            return []
        folder = split(path)[0]
        stamp = self.metadata.stamp(folder)
        try:
            now = await self.store_entry(path)
        except AssetFSError:
            return self._recheck(path)
        if self.own.under_way(path):
            return []
        if self.metadata.stamp(folder) != stamp:
            return []
        if self.metadata.entry(path) == now:
            return []
        if self.cache.shadowing(path) is not None and (now is None or not now.is_dir):
            # a file written here and not uploaded yet (or not again): the store's answer
            # is only its base; the name, its inode and what the kernel caches stay
            self.metadata.fill(path, now)
            return []
        kind = ChangeKind.DELETED if now is None else ChangeKind.UPDATED
        return self.apply(ChangeEvent(kind, path, now))

    def _recheck(self, path: str) -> list[KernelNote]:
        """Forget what is cached about ``path`` so the next lookup asks the store, and let
        the kernel ask again, without detaching the inode the kernel knows for it."""
        parent, name = split(path)
        self.metadata.forget(path)
        self.metadata.forget_listing(parent)
        parent_inode, inode = self.inodes.get(parent), self.inodes.get(path)
        notes = []
        if parent_inode is not None:
            if inode is None:  # a negative dentry may hide what the store now has
                notes.append(KernelNote(parent_inode, name))
            notes.append(KernelNote(parent_inode))
        if inode is not None:
            self.kernel_version.pop(inode, None)
            notes.append(KernelNote(inode))
        return notes

    def _listed(self, folder: str, listing: tuple[Entry, ...]) -> list[KernelNote]:
        """A subscription of ``folder`` went live with ``listing``: names whose entry there
        differs from what the mount holds (its listing of the folder, or entries looked up
        one by one) are looked up again. The list is not applied as the truth: it may
        predate a change the mount itself made meanwhile (an rsync's mkdir), whose event
        follows. Names the mount holds nothing for need nothing; files written here and not
        uploaded yet keep their local state (write-back reconciles them)."""
        now = {entry.name: entry for entry in listing}
        known = self.metadata.stale_listing(folder)
        parent_inode = self.inodes.get(folder)
        notes: list[KernelNote] = []
        differs = False
        for name in sorted(set(now) | set(known or ()) | self.metadata.children(folder)):
            path = join(folder, name)
            before = self.metadata.entry(path)
            if before is MISSING and known is not None:
                before = known.get(name)
            after = now.get(name)
            if before is MISSING or before == after or self.cache.shadowing(path):
                continue
            assert before is None or isinstance(before, Entry)
            differs = True
            self.metadata.forget(path)
            inode = self.inodes.get(path)
            if parent_inode is not None and (
                inode is None or before is None or after is None or before.kind != after.kind
            ):
                notes.append(KernelNote(parent_inode, name))  # the name: looked up again
            if inode is not None:
                notes.append(KernelNote(inode))
        if differs:
            self.metadata.forget_listing(folder)
            if parent_inode is not None:
                notes.append(KernelNote(parent_inode))
        return notes

    def _resync(self, root: str) -> list[KernelNote]:
        """Events under folder ``root`` ("/": everywhere) were lost: forget what is cached
        there and make the kernel look everything up again (entries and attributes)."""
        if root == "/":
            self.metadata.clear()
        else:
            self.metadata.forget_tree(root)
        prefix = root.rstrip("/") + "/"

        def under(path: str) -> bool:
            return path == root or path.startswith(prefix)

        for item in self.cache.under(root):
            if not item.shadows:
                self.cache.drop(item.path)
        notes = []
        for path in self.inodes.known_paths():
            inode = self.inodes.get(path)
            if inode is None or not under(path):
                continue
            notes.append(KernelNote(inode))
            parent_inode = self.inodes.get(split(path)[0])
            if path != "/" and parent_inode is not None:
                notes.append(KernelNote(parent_inode, split(path)[1]))
        return notes


def notify_kernel(notes: list[KernelNote]) -> None:
    """Send invalidations to the kernel (run in a worker thread, never in a handler).

    ENOENT means the kernel had nothing cached for that entry or inode: not an error."""
    for note in notes:
        try:
            if note.name is None:
                pyfuse3.invalidate_inode(note.inode)
            else:
                pyfuse3.invalidate_entry(note.inode, os.fsencode(note.name), note.deleted)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF):
                log.debug("invalidation %s failed: %s", note, exc)
