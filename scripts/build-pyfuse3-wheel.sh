#!/usr/bin/env bash
# Build (once) and cache a pyfuse3 3.5.0 wheel with the kernel features assetfs uses.
#
#   scripts/build-pyfuse3-wheel.sh [PYTHON]    prints the wheel's path as the last line
#
# Why: pyfuse3 3.5.0 has no API for kernel FUSE passthrough (Linux >= 6.9: reads and writes of
# a file whose whole content is local go from the kernel straight to that file, at local-disk
# speed; through the daemon any server reaches about a third, scripts/bench_fuse_ceiling.sh),
# for FOPEN_NOFLUSH (a close() without a round trip) or for FOPEN_CACHE_DIR (a folder listed
# again from the kernel's cache), and Debian bookworm's libfuse 3.14 cannot negotiate
# passthrough. So: libfuse 3.17.2 from scripts/build-libfuse.sh, and pyfuse3's sdist with the
# patches in scripts/patches/ applied in the order of PATCHES below (each says what it adds in
# its header), linked with an rpath to that libfuse. Without kernel support the wheel behaves
# as pyfuse3.
#
# Only pyfuse3 itself comes as source: its build dependencies (Cython, setuptools) are
# installed as wheels (pip's --no-binary :all: would build Cython from source, minutes).
# The wheel is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/assetfs/wheels-pyfuse3/<key>, the key
# being a hash of the patches, this script, build-libfuse.sh and the interpreter version: a
# changed patch builds anew. About 1 min on 2 cores from nothing (libfuse, then the C compile
# of pyfuse3, without debug information: half the compile time); then instant.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${1:-python3}"
PATCHES=(passthrough noflush cache-readdir)
PATCH_FILES=()
for name in "${PATCHES[@]}"; do PATCH_FILES+=("$here/patches/pyfuse3-3.5.0-$name.patch"); done
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/assetfs"

log() { echo "build-pyfuse3-wheel: $*" >&2; }

pytag="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
key="$(cat "${PATCH_FILES[@]}" "${BASH_SOURCE[0]}" "$here/build-libfuse.sh" | sha256sum | cut -c1-12)"
OUT="$CACHE/wheels-pyfuse3/$pytag-$key"
cached="$(ls "$OUT"/pyfuse3-3.5.0-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$cached" ]; then
  echo "$cached"
  exit 0
fi
prefix="$(bash "$here/build-libfuse.sh" | tail -n1)"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
log "fetching the pyfuse3 3.5.0 sdist"
"$PYTHON" -m pip download -q --no-deps --no-binary pyfuse3 pyfuse3==3.5.0 -d "$work" >&2
tar -xzf "$work"/pyfuse3-3.5.0.tar.gz -C "$work"
for patch_file in "${PATCH_FILES[@]}"; do
  patch -d "$work/pyfuse3-3.5.0" -p1 < "$patch_file" >/dev/null
done
log "building pyfuse3 3.5.0 (${PATCHES[*]}) against libfuse in $prefix (Cython + C compile, ~25 s)"
mkdir -p "$OUT.tmp"
# -g0: no debug information for Cython's 40,000-line C file, half the compile time (-O3 stays)
CFLAGS="${CFLAGS:-} -g0" PKG_CONFIG_PATH="$prefix/lib/pkgconfig" LDFLAGS="-Wl,-rpath,$prefix/lib" \
  "$PYTHON" -m pip wheel -q --no-deps --no-binary pyfuse3 -w "$OUT.tmp" "$work/pyfuse3-3.5.0" >&2
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
log "cached $(ls "$OUT"/pyfuse3-3.5.0-*.whl)"
ls "$OUT"/pyfuse3-3.5.0-*.whl
