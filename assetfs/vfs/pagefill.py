"""Open-time fill of the kernel page cache: a small file read after its open sends no READ.

A program that opens a small file, reads it whole and closes it (a file manager's type
sniffer, ``find -exec``, ``git status``, a renderer's texture loads) costs the daemon an
OPEN and a READ request in a row, each a round trip through the kernel and the event loop.
When the file's whole content already lies on local disk (the block cache file, or the
store's local copy the driver knows without I/O: omni.client's ``file:`` provider, a
Resonite thumbnail pack), the daemon reads it while it answers the OPEN, pushes it into
the inode's page cache with FUSE_NOTIFY_STORE (``pyfuse3.notify_store``) and answers with
``keep_cache``: the kernel then serves the read from its page cache (docs/speed.md).

Two rules keep it safe (fs/fuse/dev.c, ``fuse_notify_store``: the kernel locks each page
it fills):

- only an inode with no open file is filled: no READ of it can then be waiting for the
  daemon while the daemon waits in the store (the event loop would deadlock);
- the content is read and stored without yielding to the event loop, so no invalidation of
  the inode can come between what was read and what the kernel keeps.
"""

from __future__ import annotations

import errno
import logging

import pyfuse3

log = logging.getLogger(__name__)

FILL_MAX = 128 * 1024
"""Files up to this many bytes are filled at open: the kernel's first READ of a file that
small would ask for all of it anyway (its initial read-ahead window is 128 KiB)."""


class PageFill:
    """Pushes small files' content into the kernel page cache at open; counts the fills
    (``assetfs status``, ``page_fills``)."""

    def __init__(self) -> None:
        self.enabled = True
        """False once the kernel refused a store (ENOSYS: no FUSE_NOTIFY_STORE)."""
        self.fills = 0

    @staticmethod
    def wanted(size: int) -> bool:
        """Whether a file of ``size`` bytes is small enough to fill at open."""
        return 0 < size <= FILL_MAX

    def fill(self, inode: int, data: bytes) -> bool:
        """Store ``data`` as the whole content of ``inode`` in the kernel page cache; the
        caller then answers the open with ``keep_cache``. False (nothing to keep) when
        filling is off or the kernel refused (ENOSYS: never again on this mount; ENOENT:
        the kernel no longer knows the inode): the open then reads through the daemon as
        usual. Call it only for an inode with no open file (see the module docstring)."""
        if not self.enabled:
            return False
        try:
            pyfuse3.notify_store(inode, 0, data)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                log.info("the kernel has no FUSE_NOTIFY_STORE; small files read through "
                         "the daemon")
                self.enabled = False
            return False
        self.fills += 1
        return True
