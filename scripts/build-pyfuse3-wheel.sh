#!/usr/bin/env bash
# Build (once) and cache a pyfuse3 3.5.0 wheel that can use kernel FUSE passthrough.
#
#   scripts/build-pyfuse3-wheel.sh [PYTHON]    prints the wheel's path as the last line
#
# Why: with passthrough (Linux >= 6.9), reads and writes of a file whose whole content is in
# the cache go from the kernel straight to the cache file, at local-disk speed; through the
# daemon they reach a third of it (scripts/bench_fuse_ceiling.sh). pyfuse3 3.5.0 has
# no API for it, and Debian bookworm's libfuse 3.14 cannot negotiate it. So: libfuse 3.17.2
# from scripts/build-libfuse.sh, and pyfuse3's sdist with patches/pyfuse3-3.5.0-passthrough.patch
# (FileInfo.backing_id, pyfuse3.backing_open/backing_close, Operations.enable_passthrough),
# linked with an rpath to that libfuse. Without kernel support the wheel behaves as pyfuse3.
#
# The wheel is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/assetfs/wheels-pyfuse3/<key>, the key
# being a hash of the patch, this script and the interpreter: a changed patch builds anew.
# About 1.5 min on 2 cores from nothing (Cython and the C compile); then instant.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${1:-python3}"
PATCH="$here/patches/pyfuse3-3.5.0-passthrough.patch"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/assetfs"

log() { echo "build-pyfuse3-wheel: $*" >&2; }

pytag="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
key="$(cat "$PATCH" "${BASH_SOURCE[0]}" "$here/build-libfuse.sh" | sha256sum | cut -c1-12)"
OUT="$CACHE/wheels-pyfuse3/$pytag-$key"
cached="$(ls "$OUT"/pyfuse3-3.5.0-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$cached" ]; then
  echo "$cached"
  exit 0
fi
prefix="$(bash "$here/build-libfuse.sh" | tail -n1)"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
log "building pyfuse3 3.5.0 with kernel passthrough against libfuse in $prefix"
"$PYTHON" -m pip download -q --no-deps --no-binary :all: pyfuse3==3.5.0 -d "$work"
tar -xzf "$work"/pyfuse3-3.5.0.tar.gz -C "$work"
patch -d "$work/pyfuse3-3.5.0" -p1 < "$PATCH" >/dev/null
mkdir -p "$OUT"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" LDFLAGS="-Wl,-rpath,$prefix/lib" \
  "$PYTHON" -m pip wheel -q --no-deps -w "$OUT" "$work/pyfuse3-3.5.0" >&2
ls "$OUT"/pyfuse3-3.5.0-*.whl
