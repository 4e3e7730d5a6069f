#!/usr/bin/env python3
"""Benchmark the NodeODX mount against pyodx and direct httpx + zipfile, in one run.

Starts the test peer (tests/peers/nodeodx_peer.py) on 127.0.0.1 with an ``all.zip`` of
``--zip-mb`` MiB (default 512) whose orthophoto member is ``--member-mb`` MiB (default 400),
and measures:

- create: ``cp`` of ``--images`` files of ``--image-mb`` MiB (default 100 x 8) into a new
  task folder of the mount, plus the commit (``setxattr user.assetfs.commit``, which returns
  once every image is uploaded and the task committed) vs. pyodx's own
  ``Node.create_task(files, parallel_uploads=10)`` of the same files. Target: the mount's
  time at most pyodx's (ratio pyodx time / mount time >= 1.00);
- first read: ``cat`` of the orthophoto member through a fresh mount (empty cache: the
  archive is downloaded whole, then the member inflated) vs. a direct httpx download of
  ``all.zip`` to a local file plus extracting that member with :mod:`zipfile`. Target:
  the mount's time within 1.25x of the direct one;
- other member: once the archive is in, reading another member (the ~110 MiB ``.ply``)
  through the mount, first while the spool still holds it in the page cache (it was just
  inflated), and (after all runs, in a mount of its own, so the other runs start warm)
  opened again after dropping the page cache, vs. a cold read of a local file of the same
  size on the same disk (page cache dropped: ``sync; echo 3 > /proc/sys/vm/drop_caches``,
  as root; without root the cold figures are not measured). Target: local-disk speed
  (ratio cold local time / mount time near 1.00 or above).

Each side runs ``--repeat`` times (default 2, alternating which goes first, ``sync``
before each); the best time of each side is kept.

pyodx is a baseline only (``pip install pyodx``); the tests never need it.

Usage: .venv/bin/python scripts/bench_nodeodx.py [--images N] [--image-mb MIB]
       [--zip-mb MIB] [--member-mb MIB] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from bench_read import drop_caches  # noqa: E402 - scripts/ is this script's folder
from mounting import mounted  # noqa: E402
from peers.nodeodx_peer import BIG_MEMBER, COMPLETED, Peer, running  # noqa: E402

from assetfs.drivers.nodeodx import TOKEN_ENV  # noqa: E402

TOKEN = "bench-token"
OTHER = "odm_georeferencing/odm_georeferenced_model.ply"
CHUNK = 1 << 20


def read_all(path: Path) -> int:
    """Read ``path`` sequentially in 1 MiB pieces; the byte count."""
    total = 0
    with open(path, "rb", buffering=0) as stream:
        while piece := stream.read(CHUNK):
            total += len(piece)
    return total


def archive_in(mountpoint: Path) -> bool:
    """Whether every archive download of the mount is complete (``assetfs status``)."""
    state = json.loads(os.getxattr(mountpoint, "user.assetfs.status"))
    archives = state["driver_state"]["archives"]
    return bool(archives) and all(a["complete"] for a in archives.values())


def timed(fn: object) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def direct_member(peer: Peer, uuid: str, scratch: Path) -> None:
    """httpx download of all.zip to a file, then zipfile extraction of the big member."""
    archive = scratch / "direct.zip"
    with httpx.stream("GET", f"{peer.url}/task/{uuid}/download/all.zip",
                      params={"token": TOKEN}, timeout=120) as resp, open(archive, "wb") as out:
        for piece in resp.iter_raw(CHUNK):
            out.write(piece)
    with zipfile.ZipFile(archive) as zipped, zipped.open(BIG_MEMBER) as member, \
            open(scratch / "direct.tif", "wb") as out:
        shutil.copyfileobj(member, out, CHUNK)
    archive.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--image-mb", type=int, default=8)
    parser.add_argument("--zip-mb", type=int, default=512)
    parser.add_argument("--member-mb", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from pyodx import Node

    work = Path(tempfile.mkdtemp(prefix="bench-nodeodx-"))
    state = Path(tempfile.gettempdir()) / "bench-nodeodx-state"  # the archive is kept
    photos = work / "photos"
    photos.mkdir()
    for i in range(args.images):
        (photos / f"DJI_{i:04}.JPG").write_bytes(os.urandom(args.image_mb << 20))
    files = sorted(str(p) for p in photos.iterdir())
    create_mount: list[float] = []
    create_pyodx: list[float] = []
    first_mount: list[float] = []
    first_direct: list[float] = []
    other_mount: list[float] = []
    other_local: list[float] = []
    cold_mount: list[float] = []
    cold_local: list[float] = []
    other_size = 0
    shutil.rmtree(state / "data", ignore_errors=True)
    (state / "tasks.json").unlink(missing_ok=True)
    print(f"building the peer's all.zip ({args.zip_mb} MiB) if needed...", flush=True)
    with running(state, token=TOKEN, zip_mb=args.zip_mb, big_member_mb=args.member_mb) as peer:
        peer.timings(start=0, queued=0, running=0)
        node = Node("127.0.0.1", int(peer.host.split(":")[1]), TOKEN, timeout=120)
        done = peer.create_task({"a.jpg": b"1"}, name="results")
        peer.wait_status(done, COMPLETED)
        env = {TOKEN_ENV: TOKEN}

        def options(run: int) -> dict[str, str | None]:
            return {"poll_interval": "5", "write_back_delay": "0",
                    "cache_dir": str(work / f"cache-{run}"),
                    "spool_dir": str(work / f"spool-{run}")}

        for run in range(args.repeat):
            order = ["mount", "pyodx"] if run % 2 == 0 else ["pyodx", "mount"]
            for side in order:
                subprocess.run(["sync"], check=True)
                if side == "pyodx":
                    create_pyodx.append(timed(lambda run=run: node.create_task(
                        files, name=f"pyodx-{run}", parallel_uploads=10)))
                    continue
                with mounted(f"nodeodx://{peer.host}/", work / "mnt", options(run), env) as m:
                    folder = m.path / f"mount-{run}"

                    def create(folder: Path = folder) -> None:
                        folder.mkdir()
                        subprocess.run(["cp", *files, str(folder)], check=True)
                        os.setxattr(folder, "user.assetfs.commit", b"1")

                    create_mount.append(timed(create))
                shutil.rmtree(work / f"cache-{run}", ignore_errors=True)
            order = ["mount", "direct"] if run % 2 == 0 else ["direct", "mount"]
            for side in order:
                subprocess.run(["sync"], check=True)
                if side == "direct":
                    first_direct.append(timed(lambda: direct_member(peer, done, work)))
                    local = work / "direct.tif"
                    other_local.append(timed(lambda local=local: read_all(local)))
                    local.unlink()
                    continue
                with mounted(f"nodeodx://{peer.host}/", work / "mnt", options(run), env) as m:
                    results = m.path / "results" / "results"
                    big, other = results / BIG_MEMBER, results / OTHER
                    first_mount.append(timed(lambda big=big: read_all(big)))
                    while not archive_in(m.path):
                        time.sleep(0.05)
                    other_size = other.stat().st_size
                    other_mount.append(timed(lambda other=other: read_all(other)))
                shutil.rmtree(work / f"cache-{run}", ignore_errors=True)
        # cold reads last: dropping the page cache would slow the next runs' first reads
        with mounted(f"nodeodx://{peer.host}/", work / "mnt", options(args.repeat), env) as m:
            results = m.path / "results" / "results"
            other = results / OTHER
            read_all(results / BIG_MEMBER)  # fetches the archive; OTHER stays in the spool only
            while not archive_in(m.path):
                time.sleep(0.05)
            baseline = work / "cold.bin"
            baseline.write_bytes(os.urandom(other_size))
            for _ in range(args.repeat):
                if not drop_caches():
                    break
                cold_mount.append(timed(lambda other=other: read_all(other)))
                drop_caches()
                cold_local.append(timed(lambda b=baseline: read_all(b)))
            baseline.unlink()
    shutil.rmtree(work, ignore_errors=True)
    total = args.images * args.image_mb
    other_mb = other_size / (1 << 20)
    cm, cp = min(create_mount), min(create_pyodx)
    fm, fd = min(first_mount), min(first_direct)
    om, ol = min(other_mount), min(other_local)
    print(f"create {args.images} x {args.image_mb} MiB: mount {total / cm:.0f} MiB/s ({cm:.2f}s),"
          f" pyodx {total / cp:.0f} MiB/s ({cp:.2f}s); ratio pyodx/mount {cp / cm:.2f} "
          f"{'OK' if cp / cm >= 1.0 else 'below 1.00'}")
    print(f"first read of a {args.member_mb} MiB member of a {args.zip_mb} MiB all.zip: mount "
          f"{fm:.2f}s, httpx+zipfile {fd:.2f}s; mount/direct {fm / fd:.2f} "
          f"{'OK' if fm / fd <= 1.25 else 'above 1.25'}")
    print(f"another member ({other_mb:.0f} MiB, the .ply) once the archive is in: mount "
          f"{om:.3f}s ({other_mb / om:.0f} MiB/s; the spool just inflated it), a page-cached "
          f"local file of {args.member_mb} MiB {args.member_mb / ol:.0f} MiB/s")
    if cold_mount and cold_local:
        km, kl = min(cold_mount), min(cold_local)
        print(f"  page cache dropped: mount {km:.3f}s ({other_mb / km:.0f} MiB/s), a local "
              f"file of the same size {kl:.3f}s ({other_mb / kl:.0f} MiB/s); local/mount "
              f"{kl / km:.2f} (first read above: local cold/mount {kl / om:.2f})")
    else:
        print("  cold reads not measured (dropping the page cache needs root)")
    return 0 if cp / cm >= 1.0 and fm / fd <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
