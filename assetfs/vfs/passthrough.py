"""Kernel FUSE passthrough: opens whose reads and writes never reach the daemon.

Linux >= 6.9 lets a FUSE server answer an open with a *backing file* (FOPEN_PASSTHROUGH):
the kernel then reads and writes that file itself, at local-disk speed, while lookups,
getattr, setattr, fsync, flush and release still come to the daemon. assetfs uses it for
every open of a file whose whole content is in the cache file (a file being written, a clean
file fully fetched), with that cache file as the backing file (``dd`` into the mount at
>= 0.70 of the cache disk; through the daemon any server reaches about a third, see
``scripts/bench_fuse_ceiling.sh``), and for read-only opens of a clean file of a store whose
library keeps a local copy (omni.client: on ``file:`` the file itself), with that copy as
the backing file: no READ request at all, and re-reads at the speed of the copy's page cache
(``scripts/bench_vs_rclone.py``). Those are opt-in (``-o passthrough=copies``, for the
ETXTBSY below) except for a file the mount can never write (``Driver.check_write`` refuses
it, or the mount is read-only), where that cost does not exist: its read-only opens are
passed through to any whole local copy the driver knows without I/O
(``Driver.known_local_range``, whatever its read mode: a NodeODX result member inflated in
the spool, docs/nodeodx.md). It needs the pyfuse3 built by
``scripts/build-pyfuse3-wheel.sh`` (``pyfuse3.backing_open``) and CAP_SYS_ADMIN; otherwise
every open is an ordinary one.

The kernel's rules for one inode (fs/fuse/iomode.c, ``fuse_file_io_open``): while it is open
in passthrough mode every new open must be too, with the same backing file (registered once:
the same backing id); while it is open in cached (page cache) mode no open may be passthrough.
A breach fails the user's open with EIO. So the first open of an idle inode picks the mode
for all opens until the last one closes, and the inode stays bound to that backing file
meanwhile: the invalidator gives a path whose content changes on the store a new inode
rather than touch a bound one (events/invalidator.py). A local copy is registered read-only
(it is the store's file, or the library's cache): an open for writing of an inode bound to
one fails with ETXTBSY (:class:`~assetfs.errors.FileBusy`) until its readers close.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass

import pyfuse3

from ..cache.item import CacheItem
from ..drivers.base import Entry

log = logging.getLogger(__name__)


class IOMode(enum.Enum):
    """How the kernel serves one open file."""

    CACHED = "cached"
    """Reads and writes come to the daemon; the kernel page cache may keep what it read."""
    PASSTHROUGH = "passthrough"
    """The kernel reads and writes the backing (cache) file itself."""


@dataclass
class _InodeIO:
    """The open files of one inode: their mode, and for passthrough the shared backing id
    and the item whose cache file it is."""

    mode: IOMode
    opens: int = 0
    backing_id: int = 0
    item: CacheItem | None = None
    local_copy: bool = False
    """The backing file is the store's local copy (read-only), not the cache file."""
    copy_identity: tuple[int, int] = (0, 0)
    """``(st_dev, st_ino)`` of that local copy."""


class Passthrough:
    """Chooses the mode of each open and owns the backing ids (one per inode in
    passthrough mode, released with its last open)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and hasattr(pyfuse3, "backing_open")
        """False without the patched pyfuse3, with ``-o passthrough=no``, or after the kernel
        refused a backing file (no support, no CAP_SYS_ADMIN): then every open is cached."""
        self.opens = 0
        """Passthrough opens so far (``assetfs status``)."""
        self._inodes: dict[int, _InodeIO] = {}

    def bound_item(self, inode: int) -> CacheItem | None:
        """The item whose cache file backs the open passthrough files of ``inode``: every
        new open of the inode must read it too."""
        state = self._inodes.get(inode)
        return state.item if state is not None and state.mode is IOMode.PASSTHROUGH else None

    def idle(self, inode: int) -> bool:
        """Whether passthrough is on and ``inode`` has no open files (its next open may pick
        passthrough with any backing file)."""
        return self.enabled and self.unopened(inode)

    def unopened(self, inode: int) -> bool:
        """Whether ``inode`` has no open file, in any mode."""
        return inode not in self._inodes

    def bound_to_local_copy(self, inode: int) -> bool:
        """Whether the open files of ``inode`` read the store's local copy through the
        kernel (no open for writing may join them)."""
        state = self._inodes.get(inode)
        return state is not None and state.local_copy

    def reads_current_copy(self, inode: int, entry: Entry) -> bool:
        """Whether the open files of ``inode`` read, through the kernel, a local copy that
        holds ``entry``'s content already: the same file is still at the copy's path, with
        ``entry``'s size and mtime (to the microsecond omni.client reports). So it is on
        omni.client's ``file:`` provider, whose copy is the store's file itself, changed in
        place; not for a file replaced by a rename, nor for a library's cache of an older
        version."""
        state = self._inodes.get(inode)
        if state is None or not state.local_copy or state.item is None:
            return False
        try:
            st = os.stat(state.item.source.path if state.item.source else "")
        except OSError:
            return False
        return ((st.st_dev, st.st_ino) == state.copy_identity and st.st_size == entry.size
                and st.st_mtime_ns // 1000 == entry.mtime_ns // 1000)

    def open(
        self, inode: int, item: CacheItem, fd: int | None, local_copy: bool = False
    ) -> tuple[IOMode, int]:
        """The mode for a new open of ``inode`` reading ``item`` (its :meth:`bound_item`,
        if it has one), and the backing id to reply with (0 unless passthrough). ``fd`` is
        the item's cache file when it holds the whole content, or (``local_copy``) the
        store's local copy of a clean item opened read-only, and may back the inode's first
        open; else None. Never raises: a refused backing file means cached mode."""
        state = self._inodes.get(inode)
        if state is None:
            state = self._inodes[inode] = _InodeIO(IOMode.CACHED, item=item,
                                                   local_copy=local_copy and fd is not None)
            if fd is not None and self.enabled:
                try:
                    state.backing_id = pyfuse3.backing_open(fd)
                except OSError as exc:
                    log.info("kernel FUSE passthrough unavailable (%s); reads and writes go "
                             "through the daemon", exc)
                    self.enabled = False
                    state.local_copy = False
                else:
                    state.mode = IOMode.PASSTHROUGH
                    if state.local_copy:
                        st = os.fstat(fd)
                        state.copy_identity = (st.st_dev, st.st_ino)
            else:
                state.local_copy = False
        state.opens += 1
        if state.mode is IOMode.PASSTHROUGH:
            self.opens += 1
        return state.mode, state.backing_id

    def release(self, inode: int, mode: IOMode, connected: bool = True) -> None:
        """An open of ``inode`` in ``mode`` was released; the last one of its mode frees the
        inode (and the backing id: the kernel has dropped the file by then; once the
        connection is gone, ``connected`` False, the backing ids went with it)."""
        state = self._inodes.get(inode)
        if state is None:
            return
        state.opens -= 1
        if state.opens == 0:
            del self._inodes[inode]
            if state.backing_id and connected:
                try:
                    pyfuse3.backing_close(state.backing_id)
                except OSError as exc:
                    log.warning("cannot release backing id %d: %s", state.backing_id, exc)
