"""Read-path benchmark: a mount of omni.client's file: provider vs the backing
files read directly, measured in the same run, printed as ratios.

- cold sequential read of a 512 MiB file (page cache dropped before each read; root only,
  otherwise the "cold" figures are warm),
- a second read through the mount (the kernel keeps its page cache because the version is
  unchanged) vs a second direct read,
- 2000 small files (4 KiB) open+read+close through the mount, files/s.

Usage: .venv/bin/python scripts/bench_read.py [--size-mib 512] [--files 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import mounted

CHUNK = 1 << 20


def drop_caches() -> bool:
    """Drop the kernel page cache (root only). Returns whether it worked."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        return False
    return True


def read_all(path: Path) -> float:
    """Seconds to read ``path`` sequentially in 1 MiB reads."""
    buffer = bytearray(CHUNK)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
    return time.perf_counter() - started


def best_of(runs: int, path: Path) -> float:
    """The fastest of ``runs`` warm reads (seconds): page-cache speed is noisy."""
    return min(read_all(path) for _ in range(runs))


def small_files(folder: Path, count: int) -> float:
    """Files per second for open+read+close of ``count`` files."""
    names = [folder / f"f{i:05d}.bin" for i in range(count)]
    started = time.perf_counter()
    for name in names:
        with open(name, "rb") as f:
            f.read()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="assetfs-bench-") as tmp:
        root = Path(tmp)
        store = root / "store"
        (store / "small").mkdir(parents=True)
        big = store / "big.bin"
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(CHUNK))
        for i in range(args.files):
            (store / "small" / f"f{i:05d}.bin").write_bytes(os.urandom(4096))
        mib = args.size_mib
        with mounted(f"file://{store}", root / "mnt", {"cache_dir": str(root / "cache")}) as m:
            cold = drop_caches()
            direct_cold = read_all(big)
            direct_warm = best_of(3, big)
            drop_caches()
            mount_cold = read_all(m.path / "big.bin")
            mount_warm = best_of(3, m.path / "big.bin")
            drop_caches()
            subprocess.run(["ls", "-l", str(m.path / "small")], capture_output=True, check=True)
            files_direct = small_files(store / "small", args.files)
            files_mount = small_files(m.path / "small", args.files)
    rows = [
        ("cold sequential read", mib / direct_cold, mib / mount_cold, 0.50, "MiB/s"),
        ("second read (page cache)", mib / direct_warm, mib / mount_warm, 0.80, "MiB/s"),
    ]
    print(f"{'':28} {'direct':>10} {'mount':>10} {'ratio':>7} {'target':>7}")
    for name, direct, mount, target, unit in rows:
        ratio = mount / direct
        print(f"{name:28} {direct:10.0f} {mount:10.0f} {ratio:7.2f} {target:7.2f}  {unit}"
              f"  {'ok' if ratio >= target else 'BELOW'}")
    print(f"{'4 KiB files open+read+close':28} {files_direct:10.0f} {files_mount:10.0f} "
          f"{files_mount / files_direct:7.2f} {'>=2000/s':>7}  files/s"
          f"  {'ok' if files_mount >= 2000 else 'BELOW'}")
    if not cold:
        print("(not root: page cache not dropped, the cold figures are warm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
