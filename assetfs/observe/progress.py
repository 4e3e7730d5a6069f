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


def read_positions(paths: list[str]) -> dict[str, int | None]:
    """For each of ``paths``: the furthest file position (bytes) among this process's
    open descriptors of it, or None when no descriptor of it has moved from 0. One pass
    over ``/proc/self/fd`` for all of them (a status call during many uploads reads each
    descriptor's link once, not once per upload)."""
    targets = {os.path.realpath(path): path for path in paths}
    furthest: dict[str, int] = dict.fromkeys(paths, 0)
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return dict.fromkeys(paths)
    for fd in fds:
        try:
            path = targets.get(os.readlink(f"/proc/self/fd/{fd}"))
            if path is None:
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("pos:"):
                        furthest[path] = max(furthest[path], int(line.split()[1]))
                        break
        except (OSError, ValueError):
            continue
    return {path: position or None for path, position in furthest.items()}
