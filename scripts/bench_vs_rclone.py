"""assetfs against Debian's rclone mount of the same folder and against direct access.

    .venv/bin/python scripts/bench_vs_rclone.py [--rounds 3] [--files 2000] [--size-mib 256]
        [--passthrough yes|no|copies]

One local tree plays the store: ``small/`` (``--files`` files of 4 KiB), ``tree/`` (a
2,000-entry tree: 40 folders of 49 files) and ``big.bin`` (``--size-mib`` MiB). Each round mounts
four views of that tree afresh and measures each figure for all four in turn, in an order
that rotates from round to round (the machine is shared: interleaving spreads its load over
all of them):

- ``direct``: the tree itself;
- ``assetfs``: ``assetfs mount file://TREE`` (omni.client's file: provider), a new cache;
- ``rclone off`` / ``rclone full``: ``rclone mount TREE`` with ``--vfs-cache-mode off`` /
  ``full`` (a new cache directory).

Every mount is made for its round and unmounted after it, so every file is "not read
before" through it. Measured:

- cold read: ``big.bin`` in 1 MiB reads after the kernel page cache was dropped (root only;
  otherwise it is a warm read and says so), MiB/s;
- warm re-read: once every view is warm again, three more reads of ``big.bin`` per view,
  the views taking turns; their median, MiB/s; as root, also how much of direct's and
  assetfs's page cache of ``big.bin`` lies in large folios (scripts/page_cache_folios.py:
  4 KiB pages make a page-cache read slower);
- small files: ``small/`` listed (as find, rsync or a file manager do first), then each file
  opened, read and closed, files/s; for assetfs the FUSE requests that took, per file, by
  operation (the daemon's ``requests`` counters in ``user.assetfs.status``), and for both
  daemons their CPU seconds per 1,000 files (``/proc/PID/stat``);
- 2nd ``ls -lR``: ``ls -lR tree`` once, then timed the second time, s; for assetfs the
  requests that second run sent, per entry of the tree.

Prints the median of each figure over the rounds, and the goals as the median over the
rounds of each round's own ratio:
small files >= 2x rclone with its cache off, 2nd ls -lR no slower than the faster rclone,
warm re-read >= 0.8 of direct, cold read >= 0.5 of direct. Needs rclone (``make bench``
installs Debian's). Mounts are stopped by pid at the end, also on failure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_read import drop_caches  # noqa: E402 - scripts/ is this script's folder
from mounting import is_mounted, mounted, stop_process  # noqa: E402
from page_cache_folios import folio_counts  # noqa: E402

MiB = 1 << 20
SMALL = 4096
TREE_FOLDERS, TREE_FILES = 40, 49
"""The 2,000-entry tree: 40 folders of 49 files each."""
TICKS = os.sysconf("SC_CLK_TCK")
VIEWS = ("direct", "assetfs", "rclone off", "rclone full")
FIGURES = ("cold MiB/s", "warm MiB/s", "small files/s", "2nd ls -lR s")


def make_store(root: Path, files: int, size_mib: int) -> None:
    """Write the benchmark tree under ``root``."""
    (root / "small").mkdir(parents=True)
    for i in range(files):
        (root / "small" / f"f{i:05d}.bin").write_bytes(os.urandom(SMALL))
    for d in range(TREE_FOLDERS):
        folder = root / "tree" / f"d{d:02d}"
        folder.mkdir(parents=True)
        for i in range(TREE_FILES):
            (folder / f"file{i:02d}.txt").write_bytes(b"x" * 100)
    with open(root / "big.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))


def read_all(path: Path) -> float:
    """MiB/s of one sequential read of ``path`` in 1 MiB reads."""
    buffer = bytearray(MiB)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
    return total / MiB / (time.perf_counter() - started)


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds of process ``pid`` so far (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class View:
    """One way of reaching the tree: its root, the daemon's pid, and (assetfs) a reader
    of the daemon's FUSE request counters."""

    name: str
    root: Path
    pid: int | None = None
    requests: Callable[[], collections.Counter[str]] | None = None


@dataclass
class Results:
    """Per view: figure -> one value per round; plus assetfs request and CPU figures."""

    figures: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {v: collections.defaultdict(list) for v in VIEWS})
    per_file: list[collections.Counter[str]] = field(default_factory=list)
    per_entry: list[collections.Counter[str]] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    large_folios: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list))
    """Per view: the share of ``big.bin``'s page cache in large folios after the warm
    re-reads (root only: scripts/page_cache_folios.py)."""

    def median(self, view: str, figure: str) -> float:
        return statistics.median(self.figures[view][figure])


def assetfs_requests(mountpoint: Path) -> collections.Counter[str]:
    """The daemon's FUSE request counters, less the getxattr that read them."""
    counts = collections.Counter(
        json.loads(os.getxattr(mountpoint, "user.assetfs.status"))["requests"])
    counts["getxattr"] -= 1
    return counts


@contextlib.contextmanager
def assetfs_view(store: Path, work: Path, passthrough: str) -> Iterator[View]:
    with mounted(f"file://{store}", work / "mnt-assetfs",
                 {"cache_dir": str(work / "cache-assetfs"), "passthrough": passthrough}) as m:
        yield View("assetfs", m.path, m.proc.pid, lambda: assetfs_requests(m.path))


@contextlib.contextmanager
def rclone_view(store: Path, work: Path, mode: str) -> Iterator[View]:
    mnt = work / f"mnt-rclone-{mode}"
    cache = work / f"cache-rclone-{mode}"
    mnt.mkdir(exist_ok=True)
    log = open(work / f"rclone-{mode}.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["rclone", "mount", str(store), str(mnt), "--vfs-cache-mode", mode,
         "--cache-dir", str(cache), "--config", str(work / "rclone.conf")],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (work / f"rclone-{mode}.log").read_text()
                raise RuntimeError(f"rclone mount failed: {log_text}")
            time.sleep(0.05)
        yield View(f"rclone {mode}", mnt, proc.pid)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        stop_process(proc)
        log.close()
        shutil.rmtree(cache, ignore_errors=True)


@contextlib.contextmanager
def open_view(name: str, store: Path, work: Path, passthrough: str) -> Iterator[View]:
    """The view ``name`` of ``store``, mounted fresh when it is a mount (assetfs with
    ``-o passthrough=PASSTHROUGH``)."""
    if name == "direct":
        yield View("direct", store)
    elif name == "assetfs":
        with assetfs_view(store, work, passthrough) as view:
            yield view
        shutil.rmtree(work / "cache-assetfs", ignore_errors=True)
    else:
        with rclone_view(store, work, name.split()[1]) as view:
            yield view


def read_figures(views: list[View], results: Results) -> None:
    """``big.bin`` through each view: a cold read after dropping the caches, then, once all
    are warm, three re-reads of each view taken in turn (their median)."""
    for view in views:
        drop_caches()
        results.figures[view.name]["cold MiB/s"].append(read_all(view.root / "big.bin"))
    for view in views:  # warm again what the later drops took
        read_all(view.root / "big.bin")
    warm: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(3):
        for view in views:
            warm[view.name].append(read_all(view.root / "big.bin"))
    for name, values in warm.items():
        results.figures[name]["warm MiB/s"].append(statistics.median(values))
    if os.geteuid() == 0:
        for view in views:
            if view.name in ("direct", "assetfs"):
                pages, large, _ = folio_counts(str(view.root / "big.bin"))
                results.large_folios[view.name].append(large / pages)


def small_file_figures(view: View, files: int, results: Results) -> None:
    """``small/`` listed, then each file opened, read and closed through ``view``."""
    names = sorted(os.listdir(view.root / "small"))[:files]
    before = view.requests() if view.requests else None
    cpu = cpu_seconds(view.pid)
    started = time.perf_counter()
    for name in names:
        with open(view.root / "small" / name, "rb") as f:
            f.read()
    results.figures[view.name]["small files/s"].append(
        len(names) / (time.perf_counter() - started))
    if view.pid is not None:
        results.cpu[view.name].append((cpu_seconds(view.pid) - cpu) * 1000 / len(names))
    if view.requests and before is not None:
        spent = view.requests() - before
        results.per_file.append(collections.Counter(
            {op: n / len(names) for op, n in spent.items()}))


def listing_figures(view: View, results: Results) -> None:
    """``ls -lR tree`` through ``view``, then the second one timed."""
    ls = ["ls", "-lR", str(view.root / "tree")]
    subprocess.run(ls, stdout=subprocess.DEVNULL, check=True)
    before = view.requests() if view.requests else None
    started = time.perf_counter()
    subprocess.run(ls, stdout=subprocess.DEVNULL, check=True)
    results.figures[view.name]["2nd ls -lR s"].append(time.perf_counter() - started)
    if view.requests and before is not None:
        spent = view.requests() - before
        entries = TREE_FOLDERS * (TREE_FILES + 1)
        results.per_entry.append(collections.Counter(
            {op: n / entries for op, n in spent.items()}))


def measure_round(views: list[View], files: int, results: Results) -> None:
    """One round of every figure, each figure measured for every view in turn (the machine
    is shared: its load moves in seconds, so no view gets a quiet stretch of its own)."""
    for view in views:
        listing_figures(view, results)
    for view in views:
        small_file_figures(view, files, results)
    read_figures(views, results)  # last: each cold read drops the page cache and dentries


def report(results: Results, rounds: int, cold: bool) -> None:
    print(f"\nmedians of {rounds} rounds (machine shared: load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end)")
    print(f"{'':14}" + "".join(f"{f:>16}" for f in FIGURES))
    for view in VIEWS:
        cells = []
        for figure in FIGURES:
            value = results.median(view, figure)
            cells.append(f"{value:16.3f}" if figure.endswith(" s") else f"{value:16,.0f}")
        print(f"{view:14}" + "".join(cells))

    def ratio(a: str, b: str, figure: str) -> float:
        """The median over the rounds of each round's own ratio (a round's figures are
        taken close together, so they share the machine's load of the moment)."""
        return statistics.median(x / y for x, y in zip(results.figures[a][figure],
                                                       results.figures[b][figure], strict=True))

    ls = "2nd ls -lR s"
    fastest_rclone = [min(pair) for pair in zip(results.figures["rclone off"][ls],
                                                 results.figures["rclone full"][ls], strict=True)]
    ls_ratio = statistics.median(
        a / b for a, b in zip(results.figures["assetfs"][ls], fastest_rclone, strict=True))
    goals = [
        ("small files, assetfs / rclone off", ratio("assetfs", "rclone off", "small files/s"),
         ">= 2.00", lambda r: r >= 2.0),
        ("2nd ls -lR, assetfs s / faster rclone s", ls_ratio, "<= 1.00", lambda r: r <= 1.0),
        ("warm re-read, assetfs / direct", ratio("assetfs", "direct", "warm MiB/s"), ">= 0.80",
         lambda r: r >= 0.8),
        ("cold read, assetfs / direct", ratio("assetfs", "direct", "cold MiB/s"), ">= 0.50",
         lambda r: r >= 0.5),
    ]
    print()
    for name, value, target, met in goals:
        print(f"{name:42} {value:7.2f}  goal {target}  {'met' if met(value) else 'NOT MET'}")

    print("\nper round (in the order measured):")
    for view in VIEWS:
        print(f"  {view:12} " + "; ".join(
            f"{figure}: " + " ".join(f"{v:.3g}" for v in results.figures[view][figure])
            for figure in FIGURES))
    def by_operation(samples: list[collections.Counter[str]], digits: int) -> str:
        ops = sorted({op for counts in samples for op in counts})
        medians = {op: statistics.median(c.get(op, 0.0) for c in samples) for op in ops}
        shown = ", ".join(f"{op} {n:.{digits}f}" for op, n in medians.items()
                          if n >= 0.5 * 10 ** -digits)
        return f"  {shown}; total {sum(medians.values()):.{digits}f}"

    print("\nassetfs FUSE requests per small file (open+read+close, after a listing):")
    print(by_operation(results.per_file, 2))
    print(f"assetfs FUSE requests per entry in the 2nd ls -lR "
          f"({TREE_FOLDERS + 1} folders, {TREE_FOLDERS * (TREE_FILES + 1)} entries):")
    print(by_operation(results.per_entry, 3))
    print("daemon CPU seconds per 1,000 small files: " + ", ".join(
        f"{view} {statistics.median(values):.2f}" for view, values in results.cpu.items()))
    if results.large_folios:
        print("big.bin's page cache in large folios after the warm re-reads: " + ", ".join(
            f"{view} {statistics.median(shares):.0%}"
            for view, shares in results.large_folios.items()))
    if not cold:
        print("(not root: the page cache could not be dropped; cold figures are warm ones)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--passthrough", default="yes", choices=["yes", "no", "copies"],
                        help="assetfs's -o passthrough (copies: also the store's local copies)")
    args = parser.parse_args()
    if shutil.which("rclone") is None:
        print("rclone is not installed (make bench installs Debian's)", file=sys.stderr)
        return 1
    results = Results()
    with tempfile.TemporaryDirectory(prefix="assetfs-vs-rclone-") as tmp:
        work = Path(tmp)
        store = work / "store"
        print(f"writing the store: {args.files} x 4 KiB, {TREE_FOLDERS * (TREE_FILES + 1)} "
              f"entries, {args.size_mib} MiB", flush=True)
        make_store(store, args.files, args.size_mib)
        cold = drop_caches()
        for r in range(args.rounds):
            order = VIEWS[r % len(VIEWS):] + VIEWS[:r % len(VIEWS)]
            print(f"round {r + 1}/{args.rounds}: {', '.join(order)}", flush=True)
            with contextlib.ExitStack() as stack:
                views = [stack.enter_context(open_view(name, store, work, args.passthrough))
                         for name in order]
                measure_round(views, args.files, results)
    report(results, args.rounds, cold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
