#!/usr/bin/env python3
"""Benchmark the vSphere Content Library mount against direct httpx transfers, in one run.

Starts vcsim (``make vcsim``) on 127.0.0.1 and measures, for a file of ``--size`` MiB
(default 256):

- read:  ``cat``-style sequential read of the file through a fresh mount (empty cache)
         vs. a direct httpx download session (create, prepare, GET, delete) of the same file;
- write: ``cp`` of a local file into an item of the mount plus an ``fsync`` of the copy,
         which returns once the daemon's upload has finished (``write_back_delay=0``)
         vs. a direct httpx update session (create, add, PUT, complete); the best mount
         write is also shown split into its ``cp`` and its ``fsync`` wait.

Each side is run ``--repeat`` times (default 3), best time kept, and the ratio
(direct time / mount time, i.e. mount throughput as a share of direct) printed, with the
median of each run's own ratio beside it. Runs alternate which side goes first, and dirty
pages are written out (``sync``) before each transfer: on the 2-core VM here every 256 MiB
written to the page cache costs more than the one before (vcsim keeps each upload), so a
fixed order would tilt the comparison. The target is >= 0.70 on both.

Usage: .venv/bin/python scripts/bench_vsphere.py [--size MIB] [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from mounting import fsync, mounted  # noqa: E402
from peers.vcsim_peer import CL, PASSWORD, USER, Vcsim, running  # noqa: E402

from assetfs.drivers.vsphere import PASSWORD_ENV  # noqa: E402

CHUNK = 1 << 20


@contextlib.asynccontextmanager
async def logged_in(sim: Vcsim) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client with a REST session on ``sim``."""
    async with httpx.AsyncClient(base_url=sim.url, timeout=60) as client:
        resp = await client.post("/rest/com/vmware/cis/session", auth=(USER, PASSWORD))
        client.headers["vmware-api-session-id"] = resp.json()["value"]
        yield client


async def direct_download(sim: Vcsim, item: str, name: str) -> tuple[float, int]:
    """Seconds and bytes for one download session of ``name``, body discarded."""
    async with logged_in(sim) as client:
        started = time.perf_counter()
        sid = (
            await client.post(
                f"{CL}/library/item/download-session",
                json={"create_spec": {"library_item_id": item}},
            )
        ).json()["value"]
        info = (
            await client.post(
                f"{CL}/library/item/downloadsession/file/id:{sid}",
                params={"~action": "prepare"},
                json={"file_name": name},
            )
        ).json()["value"]
        got = 0
        async with client.stream("GET", info["download_endpoint"]["uri"]) as body:
            async for chunk in body.aiter_raw(CHUNK):
                got += len(chunk)
        await client.delete(f"{CL}/library/item/download-session/id:{sid}")
        return time.perf_counter() - started, got


async def direct_upload(sim: Vcsim, item: str, name: str, source: Path) -> float:
    """Seconds for one update session uploading ``source`` as ``name``."""
    size = source.stat().st_size

    async def chunks() -> AsyncIterator[bytes]:
        async with await trio.open_file(source, "rb") as stream:
            while chunk := await stream.read(4 * CHUNK):
                yield chunk

    async with logged_in(sim) as client:
        started = time.perf_counter()
        sid = (
            await client.post(
                f"{CL}/library/item/update-session", json={"create_spec": {"library_item_id": item}}
            )
        ).json()["value"]
        info = (
            await client.post(
                f"{CL}/library/item/updatesession/file/id:{sid}",
                params={"~action": "add"},
                json={"file_spec": {"name": name, "source_type": "PUSH", "size": size}},
            )
        ).json()["value"]
        put = await client.put(
            info["upload_endpoint"]["uri"],
            content=chunks(),
            headers={"Content-Length": str(size)},
        )
        put.raise_for_status()
        await client.post(
            f"{CL}/library/item/update-session/id:{sid}", params={"~action": "complete"}
        )
        return time.perf_counter() - started


def mount_read(path: Path) -> tuple[float, int]:
    started, got = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(CHUNK):
            got += len(chunk)
    return time.perf_counter() - started, got


def listed_size(sim: Vcsim, item: str, name: str) -> int:
    return next((int(f.get("size") or 0) for f in sim.files(item) if f["name"] == name), -1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="file size, MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "-o", dest="options", default="", help="extra mount options, k=v,... (A/B runs)"
    )
    args = parser.parse_args()
    size = args.size * CHUNK
    with tempfile.TemporaryDirectory(prefix="assetfs-bench-") as scratch, running() as sim:
        tmp = Path(scratch)
        source = tmp / "source.iso"
        with open(source, "wb") as out:
            for _ in range(args.size):
                out.write(os.urandom(CHUNK))
        lid = sim.create_library("bench")
        item = sim.create_item(lid, "read")
        sim.upload(item, "file.iso", source.read_bytes())
        url = f"vsphere://{USER}@{sim.host}/"
        env = {PASSWORD_ENV: PASSWORD}

        def options(name: str) -> dict[str, str | None]:
            extra = dict(o.partition("=")[::2] for o in args.options.split(",") if o)
            return {
                "http": None,
                "cache_dir": str(tmp / f"cache-{name}"),
                "write_back_delay": "0",
                **extra,
            }

        direct_reads, mount_reads, direct_writes, mount_writes = [], [], [], []
        splits: list[tuple[float, float]] = []  # per mount write: cp, then the fsync wait
        def read_direct(run: int) -> None:
            os.sync()
            seconds, got = trio.run(direct_download, sim, item, "file.iso")
            assert got == size, f"direct download got {got} of {size} bytes"
            direct_reads.append(seconds)

        def read_mount(run: int) -> None:
            with mounted(url, tmp / f"mnt-r{run}", options(f"r{run}"), env) as m:
                os.listdir(m.path / "bench" / "read")
                os.sync()
                seconds, got = mount_read(m.path / "bench" / "read" / "file.iso")
                assert got == size, f"mount read got {got} of {size} bytes"
                mount_reads.append(seconds)

        def write_direct(run: int) -> None:
            target = sim.create_item(lid, f"direct-{run}")
            os.sync()
            direct_writes.append(trio.run(direct_upload, sim, target, "up.iso", source))

        def write_mount(run: int) -> None:
            target = sim.create_item(lid, f"mount-{run}")
            with mounted(url, tmp / f"mnt-w{run}", options(f"w{run}"), env) as m:
                folder = m.path / "bench" / f"mount-{run}"
                os.listdir(folder)
                os.sync()
                started = time.perf_counter()
                subprocess.run(["cp", str(source), str(folder) + "/"], check=True)
                copied = time.perf_counter()
                fsync(folder / source.name)  # returns once the upload is done
                mount_writes.append(time.perf_counter() - started)
                splits.append((copied - started, time.perf_counter() - copied))
                if listed_size(sim, target, source.name) != size:
                    raise SystemExit("fsync returned but the file is not on the server")

        for run in range(args.repeat):
            # ABBA order: every run costs a little more than the one before on a VM whose
            # page cache grows (vcsim keeps each upload), so neither side always goes last
            pairs = [(read_direct, read_mount), (write_direct, write_mount)]
            for first, second in pairs:
                for measure in (first, second) if run % 2 == 0 else (second, first):
                    measure(run)

    mib = args.size

    def line(what: str, direct: list[float], mount: list[float]) -> float:
        d, m = min(direct), min(mount)
        ratio = d / m
        paired = statistics.median(a / b for a, b in zip(direct, mount, strict=True))
        print(
            f"{what:6} direct {mib / d:8.1f} MiB/s ({d:.3f}s)   mount {mib / m:8.1f} MiB/s "
            f"({m:.3f}s)   ratio {ratio:.2f}  {'OK' if ratio >= 0.7 else 'below 0.70'}"
            f"   (median of the runs' own ratios {paired:.2f})"
        )
        return ratio

    print(f"vsphere bench: {mib} MiB file, best of {args.repeat}, vcsim on loopback")
    read_ratio = line("read", direct_reads, mount_reads)
    write_ratio = line("write", direct_writes, mount_writes)
    cp, wait = splits[mount_writes.index(min(mount_writes))]
    print(f"       mount write split: cp {cp:.3f}s + fsync wait for the upload {wait:.3f}s")
    return 0 if min(read_ratio, write_ratio) >= 0.7 else 1


if __name__ == "__main__":
    sys.exit(main())
