"""Coherence benchmark: assetfs with push events vs ``rclone mount``, same tree,
same run.

For each mount of a 5,000-entry tree of omni.client's ``file:`` provider (assetfs) and of
rclone's ``local`` backend (Debian's rclone, default options):

- latency from a server-side change (made directly in the backing tree) to its
  visibility through the mount: median and p99 over ``--changes`` changes, a third each of
  new files (their names probed first, so the kernel holds a negative entry), size changes
  of files already stat'ed, and deletions of files already stat'ed; a change not visible
  within ``--cap`` seconds counts as the cap and is reported as missed;
- FUSE requests the daemon receives for a second ``ls -lR`` of the whole tree (assetfs: the
  ``requests`` counter of ``assetfs status``; rclone: the operations its ``-vv`` log
  records, one ``>Op:`` line each).

- the throughput of a reader of a large file through the assetfs mount while 10,000
  remote changes arrive, against the same reader on the idle mount (target: within 2x).

Reading the request count: GNU ls -l asks every entry for ``security.selinux`` and
``system.posix_acl_access``; assetfs answers EOPNOTSUPP, which coreutils remembers per
filesystem, as rclone's ENOSYS is remembered by the kernel. What remains are the
opendir/readdir pairs of each folder: pyfuse3 cannot ask the kernel to keep a folder
listing (FOPEN_CACHE_DIR), so every ``ls`` re-reads folders from the daemon's cache.

Usage: .venv/bin/python scripts/bench_coherence.py [--changes 90] [--rclone-changes 15]
       [--cap 10] [--entries 5000]
Needs rclone (``apt-get install rclone``); without it the rclone column says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import is_mounted, mounted, stop_process
from test_coherence import BIG, for_seconds, read_until, storm_read

OP_LINE = re.compile(r": >(\w+): ")


def make_tree(root: Path, entries: int) -> None:
    """``entries`` entries: folders of 99 files each (100 entries per folder)."""
    folders = max(1, entries // 100)
    for f in range(folders):
        folder = root / f"folder{f:03d}"
        folder.mkdir(parents=True)
        for i in range(99):
            (folder / f"file{i:03d}.usd").write_bytes(b"x" * (i + 1))


def ls_lr(path: Path) -> None:
    subprocess.run(["ls", "-lR", str(path)], check=True, stdout=subprocess.DEVNULL)


def wait_visible(check: Callable[[], bool], cap: float) -> float | None:
    """Seconds until ``check()`` is true (polled every ms), or None past ``cap``."""
    started = time.perf_counter()
    while time.perf_counter() - started < cap:
        try:
            if check():
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.001)
    return None


def exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def latencies(store: Path, mnt: Path, count: int, cap: float) -> list[float | None]:
    """Make ``count`` server-side changes one at a time, spread over up to 10 of the tree's
    folders; time each until visible."""
    folders = min(10, len(list(store.glob("folder*"))))
    results: list[float | None] = []
    for n in range(count):
        folder = f"folder{n % folders:03d}"
        kind = n % 3
        if kind == 0:  # a new file whose name the kernel already knows to be absent
            name = f"new{n:04d}.usd"
            assert not exists(mnt / folder / name)
            (store / folder / name).write_bytes(b"new")
            check = lambda p=mnt / folder / name: exists(p)  # noqa: E731
        elif kind == 1:  # a size change of a file whose attributes the kernel holds
            name = f"file{50 + n // 3:03d}.usd"
            size = os.stat(mnt / folder / name).st_size
            with open(store / folder / name, "ab") as f:
                f.write(b"more")
            check = lambda p=mnt / folder / name, s=size + 4: os.stat(p).st_size == s  # noqa: E731
        else:  # a deletion of a file the kernel has an entry for
            name = f"file{n // 3:03d}.usd"
            os.stat(mnt / folder / name)
            (store / folder / name).unlink()
            check = lambda p=mnt / folder / name: not exists(p)  # noqa: E731
        results.append(wait_visible(check, cap))
        time.sleep(0.05)
    return results


def summary(values: list[float | None], cap: float) -> dict[str, object]:
    capped = sorted(cap if v is None else v for v in values)
    p99 = capped[min(len(capped) - 1, round(0.99 * (len(capped) - 1)))]
    return {
        "median_ms": statistics.median(capped) * 1000,
        "p99_ms": p99 * 1000,
        "missed": sum(v is None for v in values),
        "n": len(values),
    }


def assetfs_status(mnt: Path) -> dict:
    return json.loads(os.getxattr(mnt, "user.assetfs.status"))


def bench_assetfs(store: Path, work: Path, changes: int, cap: float) -> dict[str, object]:
    options = {"cache_dir": str(work / "assetfs-cache")}
    with mounted(f"file://{store}", work / "assetfs-mnt", options) as mount:
        ls_lr(mount.path)
        before = assetfs_status(mount.path)["requests"]
        ls_lr(mount.path)
        after = assetfs_status(mount.path)["requests"]
        # the second status read is itself one getxattr request: not part of the ls
        after["getxattr"] = after.get("getxattr", 0) - 1
        ops = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        ops = {k: v for k, v in ops.items() if v}
        lat = summary(latencies(store, mount.path, changes, cap), cap)
        events = assetfs_status(mount.path)["events"]
    return {**lat, "second_ls_requests": sum(ops.values()), "by_op": ops,
            "events": events["received"]}


@contextmanager
def rclone_mount(store: Path, mnt: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``rclone mount`` of the local tree with default options; unmounted and stopped by
    pid on exit."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["rclone", "mount", f":local:{store}", str(mnt), "-vv", "--log-file", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone mount failed: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        stop_process(proc, timeout=15)


def rclone_ops(log: Path, start: int) -> dict[str, int]:
    ops: dict[str, int] = {}
    with open(log, "rb") as f:
        f.seek(start)
        for line in f.read().decode(errors="replace").splitlines():
            match = OP_LINE.search(line)
            if match:
                ops[match.group(1)] = ops.get(match.group(1), 0) + 1
    return ops


def bench_rclone(store: Path, work: Path, changes: int, cap: float) -> dict[str, object]:
    if shutil.which("rclone") is None:
        return {"error": "rclone not installed (apt-get install rclone)"}
    log = work / "rclone.log"
    with rclone_mount(store, work / "rclone-mnt", log):
        mnt = work / "rclone-mnt"
        ls_lr(mnt)
        start = log.stat().st_size
        ls_lr(mnt)
        time.sleep(0.2)  # let the log catch up
        ops = rclone_ops(log, start)
        lat = summary(latencies(store, mnt, changes, cap), cap)
    return {**lat, "second_ls_requests": sum(ops.values()), "by_op": ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=90)
    parser.add_argument("--rclone-changes", type=int, default=15)
    parser.add_argument("--cap", type=float, default=10.0, help="seconds before a miss")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-coherence-") as tmp:
        work = Path(tmp)
        # one tree per mount, identical, so the changes of one do not meet the other
        for name in ("assetfs-store", "rclone-store"):
            make_tree(work / name, args.entries)
        print(f"tree: {args.entries} entries; assetfs {args.changes} changes, rclone "
              f"{args.rclone_changes} changes, cap {args.cap:g} s", flush=True)
        ours = bench_assetfs(work / "assetfs-store", work, args.changes, args.cap)
        theirs = bench_rclone(work / "rclone-store", work, args.rclone_changes, args.cap)
        busy, idle = bench_storm(work)
    rows = [("assetfs (push events)", ours), ("rclone mount (defaults)", theirs)]
    print()
    print(f"{'mount':<26}{'median':>12}{'p99':>12}{'missed':>10}{'2nd ls -lR requests':>22}")
    for label, r in rows:
        if "error" in r:
            print(f"{label:<26}{r['error']}")
            continue
        missed = f"{r['missed']}/{r['n']}"
        print(f"{label:<26}{r['median_ms']:>10.1f}ms{r['p99_ms']:>10.1f}ms{missed:>10}"
              f"{r['second_ls_requests']:>22}")
    print()
    for label, r in rows:
        if "by_op" in r:
            print(f"{label}: second ls -lR by op {r['by_op']}")
    if "error" not in theirs and theirs["second_ls_requests"]:
        ratio = ours["second_ls_requests"] / theirs["second_ls_requests"]
        print(f"requests for a second ls -lR, assetfs/rclone: {ratio:.3f}")
    print(f"(a missed change counts as {args.cap:g} s in median and p99)")
    print(f"reader during a 10,000-change storm: {busy:.0f} MiB/s vs {idle:.0f} MiB/s idle, "
          f"ratio {busy / idle:.2f} (target >= 0.50)")


def bench_storm(work: Path) -> tuple[float, float]:
    """Reader MiB/s through an assetfs mount during a 10,000-change storm, and idle."""
    store = work / "storm-store"
    (store / "storm").mkdir(parents=True)
    with open(store / "big.bin", "wb") as f:
        f.truncate(BIG)
    with mounted(f"file://{store}", work / "storm-mnt",
                 {"cache_dir": str(work / "storm-cache")}) as mount:
        read_until(mount.path / "big.bin", lambda: True)
        os.listdir(mount.path / "storm")
        idle = read_until(mount.path / "big.bin", for_seconds(1.5))
        busy, _seconds = storm_read(mount, store / "storm")
    return busy, idle


if __name__ == "__main__":
    main()
