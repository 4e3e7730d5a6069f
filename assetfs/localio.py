"""Writes into local files that never stop short.

``os.pwrite`` may write fewer bytes than asked (a signal, a file size limit, some file
systems under memory pressure; pwrite(2)), and reports how many: a cache file filled by one
call that wrote only part of its data would hold zeros (a sparse hole) where the rest
should be, and be served as content. Every write into a cache file goes through
:func:`pwrite_all`.
"""

from __future__ import annotations

import errno
import os


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` into file descriptor ``fd`` at ``offset`` (bytes), looping
    over short writes. Raises OSError (ENOSPC when a write makes no progress at all)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
        offset += written
