"""Count where a mount disagrees with a plain local folder under a seeded random sequence of
operations (tests/modelfs.py: create, write at offsets, truncate, rename, unlink, mkdir,
rmdir, read, list, stat over a handful of names).

Each operation runs on the mount and on the local folder; a different result or errno is a
divergence: it is printed, both trees are emptied and the sequence goes on, so the count is
of independent disagreements. At the end the trees are compared once more and, after
unmount, the store with the local folder. Prints divergences per 10,000 operations.

    PYTHONPATH=$PWD .venv/bin/python scripts/model_divergences.py --ops 10000 --seed 1 \
        --write-back-delay 0 [--driver file|memory|omniverse|vsphere|resonite] [-o KEY=VALUE]

Each driver's store is started as tests/modeltargets.py says (a folder, an in-memory store
with latency and late events, or its test peer), and only the operations it has are drawn.

The daemon imports assetfs from the current folder first, then from PYTHONPATH: to measure
another checkout, run from a folder that holds none (cd /tmp; PYTHONPATH=CHECKOUT ...).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from modelfs import Shape, clear, random_op, tree
from modeltargets import TARGETS, Store


def main() -> int:
    """Run the sequence; exit status 1 if anything diverged."""
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--ops", type=int, default=10_000, help="operations to run")
    args.add_argument("--seed", type=int, default=1)
    args.add_argument("--write-back-delay", default="0", help="seconds (mount option)")
    args.add_argument("--driver", default="file", choices=sorted(TARGETS),
                      help="whose store (tests/modeltargets.py)")
    args.add_argument("-o", dest="options", action="append", default=[], metavar="KEY=VALUE",
                      help="a further mount option")
    args.add_argument("--reset-every", type=int, default=200,
                      help="empty both trees after this many operations")
    opts = args.parse_args()
    rng = random.Random(opts.seed)
    work = Path(tempfile.mkdtemp(prefix="assetfs-model-"))
    try:
        return run(opts, rng, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(opts: argparse.Namespace, rng: random.Random, work: Path) -> int:
    """The sequence on a fresh mount whose cache, store and model live in ``work``."""
    target = TARGETS[opts.driver]
    model = work / "model"
    model.mkdir()
    options = {"write_back_delay": opts.write_back_delay,
               **dict(o.split("=", 1) for o in opts.options)}
    with target.start(work) as store:
        return sequence(opts, rng, store, target.shape, model, options)


def sequence(opts: argparse.Namespace, rng: random.Random, store: Store, shape: Shape,
             model: Path, options: dict[str, str]) -> int:
    """Run the operations on a mount of ``store`` and on ``model``; print the count."""
    divergences = 0
    started = time.monotonic()
    log = store.work / "mnt.log"
    with store.mount("mnt", **options) as mount:
        done: list[str] = []
        for n in range(1, opts.ops + 1):
            op = random_op(rng, shape)
            done.append(str(op))
            ours, theirs = op.apply(mount.path), op.apply(model)
            if ours != theirs:
                divergences += 1
                print(f"op {n}: {op}: mount {ours}, local folder {theirs}\n"
                      f"  after {done[-12:-1]}")
            if ours != theirs or (n % opts.reset_every == 0 and n < opts.ops):
                clear(mount.path)
                clear(model)
                done = []
        final = tree(mount.path) == tree(model)
        if not final:
            print(f"mount at the end: {tree(mount.path)}\nlocal folder: {tree(model)}")
            print(f"last operations: {done}")
    after = store.stored()
    stored = after == tree(model)
    if not stored:
        print(f"store after unmount: {after}\nlocal folder: {tree(model)}")
        print("".join(line for line in log.open() if "WARNING" in line or "ERROR" in line))
    seconds = time.monotonic() - started
    print(f"{opts.driver}: {opts.ops} operations, seed {opts.seed}, "
          f"write_back_delay {opts.write_back_delay}: "
          f"{divergences} divergences ({divergences * 10_000 / opts.ops:.1f} per 10,000), "
          f"final tree {'equal' if final else 'DIFFERENT'}, store after unmount "
          f"{'equal' if stored else 'DIFFERENT'}, {seconds:.0f} s")
    return int(bool(divergences) or not final or not stored)


if __name__ == "__main__":
    sys.exit(main())
