#!/usr/bin/env python3
"""Benchmark the Resonite IO mount against direct grpcio calls to the same peer, in one run.

Starts the test peer (tests/peers/resonite_peer.py) with a 5,000-item and a 1,000-item
folder of WebP thumbnails and measures:

- cold ``ls -l`` of the 5,000-item folder through a fresh mount with an empty thumbnail
  store vs. the least work a client needs for the same names, types and sizes: one List
  plus 5,000 FetchThumbnail calls with 16 in flight, made directly with grpcio
  (target: mount time <= 1.3 x direct);
- warm ``ls -l`` of the same folder after a remount (thumbnails stored) vs. one List call
  (target: <= 2 x);
- 1,000 thumbnails of the 1,000-item folder read (open, read, close) through a fresh mount
  with an empty store by 8 reader threads vs. 1,000 direct FetchThumbnail calls with 8 in
  flight (target: mount throughput >= 0.7 of direct).

Each measurement runs ``--repeat`` times (default 3), the two sides alternating, best time
kept; printed ratios are best mount / best direct (and throughput direct / mount for reads).

Usage: .venv/bin/python scripts/bench_resonite.py [--repeat N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from mounting import mounted  # noqa: E402
from peers.resonite_peer import Direct, Peer, pb, running  # noqa: E402

BIG, SMALL = 5000, 1000


def direct_listing(peer: Peer, folder: str, in_flight: int, fetch: bool, limit: int,
                   timed_list: bool = True) -> float:
    """Seconds for one List of ``folder`` (outside the clock unless ``timed_list``) plus
    (``fetch``) FetchThumbnail of its first ``limit`` items, ``in_flight`` at a time,
    through grpcio futures on a fresh channel."""
    client = Direct(peer.socket)
    try:
        client.list("/Inventory")  # connect outside the clock, as the mount is connected
        started = time.perf_counter()
        listing = client.inventory["List"](pb.InventoryListRequest(path=folder), timeout=60)
        if not timed_list:
            started = time.perf_counter()
        if fetch:
            paths = [f"{folder}/{e.name}" for e in listing.entries][:limit]
            window = threading.Semaphore(in_flight)
            done = threading.Event()
            left = [len(paths)]
            lock = threading.Lock()

            def finished(future: object) -> None:
                window.release()
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

            for path in paths:
                window.acquire()
                call = client.inventory["FetchThumbnail"].future(
                    pb.InventoryThumbnailRequest(path=path), timeout=60)
                call.add_done_callback(finished)
            done.wait()
        return time.perf_counter() - started
    finally:
        client.close()


def mount_options(work: Path, name: str, store: str) -> dict[str, str | None]:
    """Options of mount ``name``: its own block cache, thumbnail store ``store``, no poll
    during the measurement."""
    return {"cache_dir": str(work / f"{name}-cache"), "thumbnail_cache": str(work / store),
            "poll_interval": "60"}


def ls_l(peer: Peer, work: Path, name: str, store: str) -> float:
    """Seconds for ``ls -l`` of the big folder on a fresh mount using thumbnail store
    ``store``."""
    env = {"RESONITE_IO_SOCKET_DIR": str(peer.socket_dir), "RESONITE_IO_SOCKET": ""}
    with mounted("resonite:", work / name, mount_options(work, name, store), env=env) as m:
        started = time.perf_counter()
        out = subprocess.run(["ls", "-l", str(m.path / f"Bulk{BIG}")], check=True,
                             capture_output=True, text=True).stdout
        spent = time.perf_counter() - started
    assert out.count("\n") == BIG + 1, out[:200]
    return spent


def mount_reads(peer: Peer, work: Path, name: str, readers: int) -> float:
    """Seconds for ``readers`` threads to read the small folder's files on a fresh mount
    with an empty thumbnail store."""
    env = {"RESONITE_IO_SOCKET_DIR": str(peer.socket_dir), "RESONITE_IO_SOCKET": ""}
    with mounted("resonite:", work / name, mount_options(work, name, f"{name}-store"),
                 env=env) as m:
        files = [m.path / f"Bulk{SMALL}" / f"Item {i:05d}.webp" for i in range(SMALL)]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(readers) as pool:
            sizes = list(pool.map(lambda f: len(f.read_bytes()), files))
        spent = time.perf_counter() - started
    assert all(sizes), "an empty thumbnail"
    return spent


def best(runs: int, first: Callable[[int], float], second: Callable[[int], float]
         ) -> tuple[float, float]:
    """Best times of ``first`` and ``second`` over ``runs`` runs, alternating which goes
    first."""
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        if i % 2:
            b.append(second(i))
            a.append(first(i))
        else:
            a.append(first(i))
            b.append(second(i))
    return min(a), min(b)


def main() -> None:
    """Run the three measurements and print their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-resonite-"))
    try:
        with running(work / "game", "--bulk", str(BIG), "--bulk", str(SMALL)) as peer:
            big = f"/Inventory/Bulk{BIG}"
            cold_mount, cold_direct = best(
                args.repeat,
                lambda i: ls_l(peer, work, f"cold{i}", f"store-cold{i}"),
                lambda i: direct_listing(peer, big, 16, True, BIG))
            ls_l(peer, work, "fill", "store-warm")
            warm_mount, warm_direct = best(
                args.repeat,
                lambda i: ls_l(peer, work, f"warm{i}", "store-warm"),
                lambda i: direct_listing(peer, big, 16, False, 0))
            read_mount, read_direct = best(
                args.repeat,
                lambda i: mount_reads(peer, work, f"read{i}", 8),
                lambda i: direct_listing(peer, f"/Inventory/Bulk{SMALL}", 8, True, SMALL,
                                         timed_list=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"cold ls -l of {BIG} items: mount {cold_mount:.2f} s, direct List + {BIG} "
          f"FetchThumbnail (16 in flight) {cold_direct:.2f} s: "
          f"ratio {cold_mount / cold_direct:.2f} (target <= 1.3)")
    print(f"ls -l after a remount: mount {warm_mount:.3f} s, one direct List "
          f"{warm_direct:.3f} s: ratio {warm_mount / warm_direct:.2f} (target <= 2)")
    print(f"{SMALL} thumbnails by 8 readers: mount {read_mount:.2f} s, direct "
          f"{SMALL} FetchThumbnail (8 in flight) {read_direct:.2f} s: "
          f"throughput ratio {read_direct / read_mount:.2f} (target >= 0.7)")
    print(f"(best of {args.repeat}; {os.cpu_count()} CPUs, shared)")


if __name__ == "__main__":
    main()
