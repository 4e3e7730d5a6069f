#!/usr/bin/env python3
"""Benchmark an ``omniverse://`` mount against the Storage API peer, in one run.

Starts the peer (tests/peers/nucleus_peer.py) on 127.0.0.1 with ``--latency`` seconds
(default 0.020) added to every call, and measures:

- ``ls -lR``: a tree of ``--entries`` files (default 2,000) listed twice; the second listing
  should reach the server not at all (its call count is printed);
- ``cp -r`` of ``--files`` files (default 500) of 64 KiB into the mount, then an fsync of
  each, against ``files x latency / uploads in flight`` (the peer counts the most ``Write``
  calls in progress at once); the bound asked for is a ratio <= 1.5 with >= 8 in flight.
  Printed with it: the server calls per file by gRPC method, the driver calls per file by
  kind, and the same files written by the library alone (``write_file_ex``, as many at
  once), the floor the protocol leaves;
- a cold sequential read of a ``--size`` MiB file (default 256) through a fresh mount
  (empty cache) against the library's own ``read_file`` of the same file in this process;
  ratio = mount throughput / library throughput (>= 0.7 asked for).

Usage: .venv/bin/python scripts/bench_nucleus.py [--latency S] [--entries N] [--files N]
[--size MIB] [--only ls|cp|read ...]
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
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # the daemon runs this tree

from mounting import fsync, mounted  # noqa: E402
from nucleus_fixtures import NucleusPeer, mount_options, nucleus_peer  # noqa: E402

from assetfs import control  # noqa: E402

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


def per_file(before: dict[str, int], after: dict[str, int], files: int) -> str:
    """Calls per file by gRPC method between two ``peer.calls()``, largest first."""
    spent = {m: after.get(m, 0) - before.get(m, 0) for m in after}
    return ", ".join(f"{m} {n / files:.2f}" for m, n in
                     sorted(spent.items(), key=lambda kv: -kv[1]) if n)


def bench_copy(peer: NucleusPeer, work: Path, files: int, latency: float) -> None:
    source = work / "small"
    source.mkdir()
    for i in range(files):
        (source / f"s{i:04d}.bin").write_bytes(os.urandom(64 << 10))
    options = mount_options(peer, work / "cache-cp", write_back_delay="0")
    with mounted(peer.url, work / "mnt-cp", options) as mount:
        peer.control(reset_stats=True)
        before = peer.calls()
        ours_before = control.request(mount.path, "status")["store_requests"]
        started = time.monotonic()
        subprocess.run(["cp", "-r", str(source), str(mount.path / "small")], check=True)
        copied = time.monotonic() - started
        for path in sorted((mount.path / "small").iterdir()):
            fsync(path)
        spent = time.monotonic() - started
        time.sleep(2)  # the uploads' events and what they cause
        after = peer.calls()
        ours = control.request(mount.path, "status")["store_requests"]
    in_flight = max(peer.peak().get("Write", 1), 1)
    bound = files * latency / in_flight
    print(f"cp -r {files} x 64 KiB + fsync: {spent:.2f}s; uploads in flight at most "
          f"{in_flight} (the peer's Write calls at once); {files} x {latency * 1000:.0f} ms / "
          f"{in_flight} = {bound:.2f}s; ratio {spent / bound:.2f} "
          f"(asked: <= 1.5 with >= 8 in flight)")
    print(f"  the cp itself returned after {copied:.2f}s (uploads run meanwhile)")
    print(f"  server calls per file: {per_file(before, after, files)}")
    print(f"  driver calls per file: {per_file(ours_before, ours, files)}")
    library_copy(peer, source, files, latency, in_flight)


def library_copy(peer: NucleusPeer, source: Path, files: int, latency: float,
                 in_flight: int) -> None:
    """The same files written by the library alone (``write_file_ex``, the driver's call
    for small files), ``in_flight`` at once, in a fresh process: the floor the protocol
    leaves a mount."""
    code = (
        "import sys, threading, time, pathlib, omni.client as oc\n"
        "oc.set_log_level(oc.LogLevel.ERROR)\n"
        "oc.initialize()\n"
        "reg = oc.register_storage_from_discovery(sys.argv[1])\n"
        "url, folder, slots = sys.argv[2], pathlib.Path(sys.argv[3]), int(sys.argv[4])\n"
        "contents = [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]\n"
        "oc.create_folder(url)\n"
        "free, results, requests = threading.Semaphore(slots), [], []\n"
        "def done(result, info):\n"
        "    results.append(result)\n"
        "    free.release()\n"
        "started = time.monotonic()\n"
        "for name, content in contents:\n"
        "    free.acquire()\n"
        "    requests.append(oc.write_file_ex_with_callback(f'{url}/{name}', content, done))\n"
        "for _ in range(slots):\n"
        "    free.acquire()\n"
        "print(time.monotonic() - started)\n"
        "assert all(r == oc.Result.OK for r in results), set(results)\n"
    )
    peer.control(reset_stats=True)
    before = peer.calls()
    out = subprocess.run(
        [sys.executable, "-c", code, peer.discovery, f"{peer.url}/library", str(source),
         str(in_flight)], check=True, capture_output=True, text=True).stdout.split()
    spent = float(out[0])
    bound = files * latency / in_flight
    print(f"  the library alone (write_file_ex, {in_flight} at once): {spent:.2f}s; "
          f"ratio {spent / bound:.2f}; server calls per file: "
          f"{per_file(before, peer.calls(), files)}")


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
    parser.add_argument("--only", choices=("ls", "cp", "read"), action="append",
                        help="run only this measurement (repeatable)")
    args = parser.parse_args()
    parts = set(args.only or ("ls", "cp", "read"))
    with tempfile.TemporaryDirectory(prefix="bench-nucleus-") as tmp:
        work = Path(tmp)
        make_tree(work / "store", args.entries)
        with nucleus_peer(work / "store", work / "peer") as peer:
            peer.control(latency=args.latency)
            if "ls" in parts:
                bench_listing(peer, work)
            if "cp" in parts:
                bench_copy(peer, work, args.files, args.latency)
            if "read" in parts:
                bench_read(peer, work, args.size)


if __name__ == "__main__":
    main()
