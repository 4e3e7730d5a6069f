#!/usr/bin/env bash
# Build (once) and cache a zeroc-ice 3.6.5 wheel for the given Python, for the `omero` extra.
#
#   scripts/build-ice-wheel.sh [PYTHON]      PYTHON defaults to .venv/bin/python, then python3
#
# Why: zeroc-ice 3.6.5 (the only Ice that omero-py accepts: >=3.6.5,<3.7) has no wheel for
# Python 3.11 on PyPI, and its sdist does not compile on 3.11 as published. Two fixes in the C++
# glue of the extension (see docs/backends/omero-fs.md):
#   1. src/Slice.cpp includes <eval.h>, removed in 3.11 (its declarations live in Python.h).
#   2. src/Util.cpp reads PyThreadState_GET()->frame, removed in 3.11: PyEval_GetFrame().
#
# The wheel is cached in $ASSETFS_WHEEL_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/assetfs/wheels),
# outside the repository, so `make clean`, CI re-runs and other checkouts reuse it; a second run
# prints the cached path and exits in well under a second. The compile is parallel
# ($ICE_BUILD_JOBS, default min(nproc, 2)): about 7 minutes on 2 cores.
#
# Prints the wheel's path as the last line of stdout. Everything else goes to stderr.
set -euo pipefail

ICE_VERSION=3.6.5
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${1:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi
WHEEL_DIR="${ASSETFS_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/assetfs/wheels}"
JOBS="${ICE_BUILD_JOBS:-$(n=$(nproc); [ "$n" -gt 2 ] && echo 2 || echo "$n")}"

log() { echo "build-ice-wheel: $*" >&2; }

# cp311 etc.: the wheel only fits the interpreter ABI it was built for.
pytag="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
mkdir -p "$WHEEL_DIR"
cached="$(ls "$WHEEL_DIR"/zeroc_ice-"$ICE_VERSION"-"$pytag"-"$pytag"-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$cached" ]; then
  log "cached: $cached"
  echo "$cached"
  exit 0
fi

# System packages the compile needs (Debian names). apt-get update first: a fresh container has
# no package lists. sudo only when we are not root.
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
missing=""
for p in g++ libssl-dev libbz2-dev python3-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/assetfs-ice-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "downloading the zeroc-ice $ICE_VERSION sdist"
"$PYTHON" -m pip download -q --no-deps --no-binary :all: "zeroc-ice==$ICE_VERSION" -d "$work" >&2
tar -xzf "$work/zeroc-ice-$ICE_VERSION.tar.gz" -C "$work"
src="$work/zeroc-ice-$ICE_VERSION"

# Fix 1: drop the removed header (harmless on older Pythons too: Python.h declares the same).
sed -i 's|^#include <eval.h>|/* <eval.h>: removed in Python 3.11, declared by Python.h */|' "$src/src/Slice.cpp"
# Fix 2: the frame member is gone from PyThreadState in 3.11; the public call returns the same.
sed -i 's|PyThreadState_GET()->frame|PyEval_GetFrame()|' "$src/src/Util.cpp"
grep -q '<eval.h>: removed' "$src/src/Slice.cpp" || { log "fix 1 did not apply"; exit 1; }
grep -q 'PyEval_GetFrame()' "$src/src/Util.cpp" || { log "fix 2 did not apply"; exit 1; }

# Parallel compile. build_ext's own -j/--parallel only runs *extensions* in parallel and
# zeroc-ice has a single one (IcePy, ~200 C++ files), so patch the compiler's compile() to
# build the object files of one extension on $JOBS threads (each runs its own g++ process).
cat >"$work/parallel_compile.py" <<'PYEOF'
# Added by assetfs scripts/build-ice-wheel.sh: compile one extension's sources in parallel.
import os as _os
from concurrent.futures import ThreadPoolExecutor as _Pool

import setuptools  # noqa: F401  (makes `distutils` the setuptools copy)
import distutils.ccompiler as _cc


def _parallel_compile(self, sources, output_dir=None, macros=None, include_dirs=None,
                      debug=0, extra_preargs=None, extra_postargs=None, depends=None):
    macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
        output_dir, macros, include_dirs, sources, depends, extra_postargs)
    cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

    def one(obj):
        try:
            src, ext = build[obj]
        except KeyError:
            return
        self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

    with _Pool(int(_os.environ.get("ICE_BUILD_JOBS", "2"))) as pool:
        list(pool.map(one, objects))
    return objects


if hasattr(_cc.CCompiler, "_setup_compile") and hasattr(_cc.CCompiler, "_get_cc_args"):
    _cc.CCompiler.compile = _parallel_compile
PYEOF
cat "$work/parallel_compile.py" "$src/setup.py" >"$src/setup.py.new"
mv "$src/setup.py.new" "$src/setup.py"
export ICE_BUILD_JOBS="$JOBS"

log "compiling with $JOBS jobs (several minutes); log: $work/build.log"
start=$(date +%s)
# a line every 30 s while the compiler runs, so that a long first set-up shows it is working
(while sleep 30; do
   log "still compiling: $(( $(date +%s) - start )) s, $(grep -c -- ' -c ' "$work/build.log" || true) files so far"
 done) &
ticker=$!
trap 'kill "$ticker" 2>/dev/null; rm -rf "$work"' EXIT
if ! "$PYTHON" -m pip wheel -v --no-deps -w "$work/dist" "$src" >"$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log" >&2
  log "build failed"
  exit 1
fi
kill "$ticker" 2>/dev/null || true
built="$(ls "$work"/dist/zeroc_ice-*.whl | head -n1)"
# Move into place atomically so a concurrent or interrupted run never sees half a wheel.
cp "$built" "$WHEEL_DIR/.$(basename "$built").tmp"
mv "$WHEEL_DIR/.$(basename "$built").tmp" "$WHEEL_DIR/$(basename "$built")"
log "built in $(( $(date +%s) - start )) s: $WHEEL_DIR/$(basename "$built")"
echo "$WHEEL_DIR/$(basename "$built")"
