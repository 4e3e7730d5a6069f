"""How far an upload has read its cache file, seen from outside the driver.

Drivers upload from a cache file they open themselves (``Driver.write(path, source,
size)``, drivers/base.py) and report nothing while they send. The kernel keeps each open
file's position, and ``/proc/self/fdinfo/<fd>`` shows it (proc(5)), so the furthest position
of this process's descriptors open on that file tells how many bytes the upload has read:
the bytes handed to the network, or to the store library. It is an estimate: a library that
reads with ``pread`` or ``sendfile`` from an offset of its own moves no position, and
then nothing is known (None).
"""

from __future__ import annotations

import os


def read_position(path: str) -> int | None:
    """The furthest file position (bytes) among this process's open descriptors of
    ``path``, or None when no descriptor of it has moved from 0."""
    target = os.path.realpath(path)
    furthest = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != target:
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("pos:"):
                        furthest = max(furthest, int(line.split()[1]))
                        break
        except (OSError, ValueError):
            continue
    return furthest or None
