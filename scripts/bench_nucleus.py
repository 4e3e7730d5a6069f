#!/usr/bin/env python3
"""Benchmark an ``omniverse://`` mount against the Storage API peer, in one run.

Starts the peer (tests/peers/nucleus_peer.py) on 127.0.0.1 with ``--latency`` seconds
(default 0.020) added to every call, and measures:

- ``ls -lR``: a tree of ``--entries`` files (default 2,000) listed twice; the second listing
  should reach the server not at all (its call count is printed);
- ``cp -r`` of ``--files`` files (default 500) of 64 KiB into the mount, then an fsync of
  each, against ``files x latency / uploads in flight`` (the peer counts the most ``Write``
  calls in progress at once); the bound asked for is a ratio <= 1.5 with >= 8 in flight;
- a cold sequential read of a ``--size`` MiB file (default 256) through a fresh mount
  (empty cache) against the library's own ``read_file`` of the same file in this process;
  ratio = mount throughput / library throughput (>= 0.7 asked for).

Usage: .venv/bin/python scripts/bench_nucleus.py [--latency S] [--entries N] [--files N]
[--size MIB]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from mounting import fsync, mounted  # noqa: E402
from nucleus_fixtures import NucleusPeer, mount_options, nucleus_peer  # noqa: E402

CHUNK = 1 << 20


def make_tree(root: Path, entries: int) -> None:
    """``entries`` small files spread over folders of 100."""
    for i in range(entries):
        folder = root / "tree" / f"d{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.usd").write_bytes(b"x" * (i % 512))


def bench_listing(peer: NucleusPeer, work: Path) -> None:
    with mounted(peer.url, work / "mnt-ls", mount_options(peer, work / "cache-ls")) as mount:
        started = time.monotonic()
        subprocess.run(["ls", "-lR", str(mount.path / "tree")], check=True,
                       stdout=subprocess.DEVNULL)
        first = time.monotonic() - started
        before = sum(peer.calls().values())
        started = time.monotonic()
        subprocess.run(["ls", "-lR", str(mount.path / "tree")], check=True,
                       stdout=subprocess.DEVNULL)
        second = time.monotonic() - started
        calls = sum(peer.calls().values()) - before
    print(f"ls -lR: first {first:.2f}s, second {second:.3f}s, "
          f"server calls during the second: {calls}")


def bench_copy(peer: NucleusPeer, work: Path, files: int, latency: float) -> None:
    source = work / "small"
    source.mkdir()
    for i in range(files):
        (source / f"s{i:04d}.bin").write_bytes(os.urandom(64 << 10))
    options = mount_options(peer, work / "cache-cp", write_back_delay="0")
    with mounted(peer.url, work / "mnt-cp", options) as mount:
        peer.control(reset_stats=True)
        started = time.monotonic()
        subprocess.run(["cp", "-r", str(source), str(mount.path / "small")], check=True)
        for path in sorted((mount.path / "small").iterdir()):
            fsync(path)
        spent = time.monotonic() - started
    in_flight = max(peer.peak().get("Write", 1), 1)
    bound = files * latency / in_flight
    print(f"cp -r {files} x 64 KiB + fsync: {spent:.2f}s; uploads in flight at most "
          f"{in_flight}; {files} x {latency * 1000:.0f} ms / {in_flight} = {bound:.2f}s; "
          f"ratio {spent / bound:.2f} (asked: <= 1.5 with >= 8 in flight)")


def library_read(peer: NucleusPeer, url: str) -> float:
    """Seconds for omni.client's own ``read_file`` of ``url`` (a fresh process, as cold)."""
    code = (
        "import sys, time, omni.client as oc\n"
        "oc.set_log_level(oc.LogLevel.ERROR)\n"
        "oc.initialize()\n"
        "reg = oc.register_storage_from_discovery(sys.argv[1])\n"
        "started = time.monotonic()\n"
        "result, _version, content = oc.read_file(sys.argv[2])\n"
        "assert result == oc.Result.OK, result\n"
        "print(time.monotonic() - started, len(memoryview(content)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, peer.discovery, url], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0])


def bench_read(peer: NucleusPeer, work: Path, size_mib: int) -> None:
    big = peer.root / "big.bin"
    with open(big, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(CHUNK))
    direct = library_read(peer, f"{peer.url}/big.bin")
    with mounted(peer.url, work / "mnt-rd", mount_options(peer, work / "cache-rd")) as mount:
        started = time.monotonic()
        with open(mount.path / "big.bin", "rb") as f:
            while f.read(CHUNK):
                pass
        through = time.monotonic() - started
    mib = size_mib
    print(f"cold read {mib} MiB: mount {mib / through:.0f} MiB/s, library read_file "
          f"{mib / direct:.0f} MiB/s, ratio {direct / through:.2f} (asked: >= 0.7)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.020)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nucleus-") as tmp:
        work = Path(tmp)
        make_tree(work / "store", args.entries)
        with nucleus_peer(work / "store", work / "peer") as peer:
            peer.control(latency=args.latency)
            bench_listing(peer, work)
            bench_copy(peer, work, args.files, args.latency)
            bench_read(peer, work, args.size)


if __name__ == "__main__":
    main()
