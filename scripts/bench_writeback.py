#!/usr/bin/env python3
"""Write-back speed, ratios measured in one run.

1. ``dd if=/dev/zero bs=1M count=1024`` into an assetfs mount of a ``file:`` store vs the
   same dd into a file on the disk that holds the cache (target: ratio >= 0.70);
2. the ``close()`` time of a freshly written 100 MiB file on the mount (target < 50 ms: it
   must not wait for the upload).

With kernel FUSE passthrough (the default where it is available) the kernel writes into the
cache file itself and no write request reaches the daemon; ``--passthrough no`` measures the
path through the daemon.

Uploads are held back (``write_back_delay=600``) and skipped at exit (``umount_timeout=0``)
so that only the local write path is measured. Everything lives in a temporary folder next
to the cache (``--dir``, default the system temp dir) and the daemon is stopped by pid.

    .venv/bin/python scripts/bench_writeback.py [--dir /tmp] [--count 1024] [--runs 2]
                                                [--passthrough yes|no]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import mounted

MiB = 1 << 20


def dd(target: Path, count: int) -> float:
    """Seconds ``dd bs=1M count=COUNT`` takes to write ``target`` (page cache, no fsync,
    the same for both sides). Dirty pages of earlier runs are written out first, so
    neither side pays for the other's writeback."""
    os.sync()
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={count}"],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def close_time(path: Path, size: int) -> float:
    """Seconds ``close()`` takes after writing ``size`` fresh bytes to ``path``."""
    chunk = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // MiB):
            os.write(fd, chunk)
    finally:
        started = time.perf_counter()
        os.close(fd)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to work")
    parser.add_argument("--count", type=int, default=1024, help="MiB written by dd")
    parser.add_argument("--runs", type=int, default=2, help="dd runs per side (best counts)")
    parser.add_argument("--passthrough", default="yes", choices=["yes", "no"],
                        help="the mount's -o passthrough")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-writeback-", dir=args.dir))
    store, mnt, cache = work / "store", work / "mnt", work / "cache"
    for folder in (store, cache):
        folder.mkdir()
    options = {"cache_dir": str(cache), "write_back_delay": "600", "umount_timeout": "0",
               "timeout": "10", "passthrough": args.passthrough}
    try:
        with mounted(f"file://{store}", mnt, options):
            local_times, mount_times = [], []
            for run in range(args.runs):  # alternate, so neither side gets a warmer disk
                local = cache / f"baseline{run}.bin"
                local_times.append(dd(local, args.count))
                local.unlink()
                mount_times.append(dd(mnt / f"dd{run}.bin", args.count))
            closes = [close_time(mnt / f"close{i}.bin", 100 * MiB) for i in range(3)]
            status = json.loads(os.getxattr(mnt, "user.assetfs.status"))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    local_best, mount_best = min(local_times), min(mount_times)
    size = args.count * MiB
    requests = status["requests"].get("write", 0)
    ratio = local_best / mount_best
    print(f"dd bs=1M count={args.count} (best of {args.runs}):")
    print(f"  cache disk: {size / local_best / MiB:8.0f} MiB/s  ({local_best:.2f} s)")
    print(f"  mount:      {size / mount_best / MiB:8.0f} MiB/s  ({mount_best:.2f} s)")
    average = f", {args.runs * size / requests / 1024:.0f} KiB each" if requests else ""
    print(f"  ratio mount/disk: {ratio:.2f}  (target >= 0.70)  [{requests} write requests "
          f"reached the daemon{average}; {status['passthrough']['opens']} passthrough opens]")
    print("close() of a freshly written 100 MiB file: "
          + ", ".join(f"{t * 1000:.1f} ms" for t in closes)
          + f"  (max {max(closes) * 1000:.1f} ms, target < 50 ms)")
    print(f"uploads during the run: {status['uploads']['files']} (held back by the delay)")
    return 0 if ratio >= 0.70 and max(closes) < 0.050 else 1


if __name__ == "__main__":
    sys.exit(main())
