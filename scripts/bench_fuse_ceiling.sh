#!/usr/bin/env bash
# What can any FUSE daemon reach for a 1 GiB dd on this kernel? Prints, in one run:
#   dd bs=1M of 1 GiB into a file on the cache disk (the baseline, page cache),
#   the same dd through libfuse's own C example passthrough_hp, with kernel FUSE passthrough
#   (FOPEN_PASSTHROUGH: reads and writes go from the kernel straight to the backing file), and
#   without it (every write a WRITE request to the daemon, multi-threaded C, splice),
#   and close() of a freshly written 100 MiB file in both modes.
#
#   scripts/bench_fuse_ceiling.sh
#
# Why: a daemon that handles WRITE requests, even libfuse's multi-threaded C one, reaches about
# a third of the disk here; only passthrough (kernel >= 6.9, libfuse >= 3.16) meets the 0.70
# target, which is why assetfs uses it (scripts/build-pyfuse3-wheel.sh). libfuse 3.17.2 comes
# from scripts/build-libfuse.sh (cached).
# Needs root (passthrough's backing-file ioctl needs CAP_SYS_ADMIN), /dev/fuse, gcc, g++, ninja.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/assetfs"
PREFIX="$(bash "$(dirname "${BASH_SOURCE[0]}")/build-libfuse.sh" --examples | tail -n1)"
TREE="$(dirname "$PREFIX")"
BIN="$TREE/build/example/passthrough_hp"


work="$(mktemp -d "$CACHE/ceiling.XXXXXX")"
source_dir="$work/source" mnt="$work/mnt" pid=""
mkdir -p "$source_dir" "$mnt"
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u "$mnt" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

dd_rate() { dd if=/dev/zero of="$1" bs=1M count=1024 2>&1 | tail -1 | sed 's/.*, //'; rm -f "$1"; }
close_ms() {
  python3 - "$1" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
block = b"\0" * (1 << 20)
for _ in range(100):
    os.write(fd, block)
start = time.perf_counter()
os.close(fd)
print(f"{(time.perf_counter() - start) * 1000:.2f} ms")
os.unlink(sys.argv[1])
PY
}

echo "cache disk:              $(dd_rate "$source_dir/baseline.bin")"
for mode in passthrough nopassthrough; do
  flag=""; [ "$mode" = nopassthrough ] && flag=--nopassthrough
  LD_LIBRARY_PATH="$TREE/build/lib" "$BIN" --foreground $flag "$source_dir" "$mnt" & pid=$!
  for _ in $(seq 50); do mountpoint -q "$mnt" && break; sleep 0.1; done
  echo "passthrough_hp $mode: $(dd_rate "$mnt/dd.bin"), close after 100 MiB $(close_ms "$mnt/close.bin")"
  fusermount3 -u "$mnt"; wait "$pid"; pid=""
done
echo "cache disk:              $(dd_rate "$source_dir/baseline.bin")"
