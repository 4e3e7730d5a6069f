#!/usr/bin/env bash
# Build (once) and cache libfuse 3.17.2, for kernel FUSE passthrough and for the benchmarks.
#
#   scripts/build-libfuse.sh [--examples]
#       prints the install prefix (lib/, lib/pkgconfig/, include/) as the last line of stdout;
#       with --examples (the benchmarks) the build tree, its parent's build/ folder, also
#       holds libfuse's example/passthrough_hp. The library alone is what pyfuse3 needs:
#       the examples (C++ among them) would double the first set-up's compile.
#
# Why: Debian bookworm ships libfuse 3.14, which cannot ask the kernel for FUSE_PASSTHROUGH
# (libfuse >= 3.16, Linux >= 6.9). The source is Debian trixie's tarball (deb.debian.org is
# reachable from CI, GitHub is not), checked against the md5 in trixie's Sources index, built
# with meson from PyPI and ninja, into ${XDG_CACHE_HOME:-$HOME/.cache}/assetfs/libfuse-3.17.2
# (about 15 s on 2 cores; a second run prints the cached prefix at once).
# Needs curl, gcc, g++ (the examples only), ninja-build, python3-venv.
set -euo pipefail

VERSION=3.17.2
MD5=55c21312d50b20190807bf053a08c558
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/assetfs"
TREE="$CACHE/libfuse-$VERSION"
PREFIX="$TREE/prefix"

log() { echo "build-libfuse: $*" >&2; }

EXAMPLES=false
[ "${1:-}" = "--examples" ] && EXAMPLES=true

if [ ! -f "$PREFIX/lib/pkgconfig/fuse3.pc" ]; then
  mkdir -p "$CACHE"
  tarball="$CACHE/fuse3_$VERSION.orig.tar.gz"
  if ! echo "$MD5  $tarball" | md5sum -c --quiet - 2>/dev/null; then
    log "fetching libfuse $VERSION from deb.debian.org"
    curl -fsS -o "$tarball" "http://deb.debian.org/debian/pool/main/f/fuse3/fuse3_$VERSION.orig.tar.gz"
    echo "$MD5  $tarball" | md5sum -c --quiet -
  fi
  rm -rf "$TREE" "$CACHE/fuse-$VERSION"
  tar -xzf "$tarball" -C "$CACHE" && mv "$CACHE/fuse-$VERSION" "$TREE"
  [ -x "$CACHE/meson-venv/bin/meson" ] || {
    python3 -m venv "$CACHE/meson-venv" && "$CACHE/meson-venv/bin/pip" install -q meson; }
  log "building libfuse $VERSION (the library)"
  (cd "$TREE" && "$CACHE/meson-venv/bin/meson" setup build --prefix="$PREFIX" --libdir=lib \
      -Dexamples=false -Dutils=false -Dtests=false >/dev/null \
    && ninja -C build >/dev/null && ninja -C build install >/dev/null)
fi
if $EXAMPLES && [ ! -x "$TREE/build/example/passthrough_hp" ]; then
  log "building libfuse $VERSION's examples"
  (cd "$TREE" && "$CACHE/meson-venv/bin/meson" configure build -Dexamples=true >/dev/null \
    && ninja -C build >/dev/null)
fi
echo "$PREFIX"
