"""The stores the model test (tests/test_model.py, scripts/model_divergences.py) runs on:
for each, how to start it (a folder, an in-memory store, or a test peer), the mount URL and
options, what it can hold and do (:class:`modelfs.Shape`), and how to read what it holds
once the mount is gone.

Read-only drivers have no target: OMERO.fs (``omerofs://``, docs/omerofs.md) cannot be
written through a mount, so a model of changes has nothing to drive there. Nor has NodeODX
(docs/nodeodx.md), whose writes submit processing tasks rather than change a tree
(tests/test_model.py, ``test_every_writable_driver_has_a_model_target``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modelfs import EVERYTHING, FOLDERS_ONLY, ITEMS, Shape, tree
from mounting import Mount, mounted


@dataclass
class Store:
    """A running store: mount ``url`` with ``options`` and ``env``; :meth:`stored` is its
    tree (as :func:`modelfs.tree`) once no mount of it runs."""

    url: str
    work: Path
    options: dict[str, str | None] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    read: Callable[[], dict[str, str | bytes]] | None = None
    """Reads the store directly; None: through a fresh mount with an empty cache."""

    @contextlib.contextmanager
    def mount(self, name: str, **options: str) -> Iterator[Mount]:
        """A mount of the store at ``work/name`` with a cache of its own."""
        settings = {"cache_dir": str(self.work / f"{name}-cache"), "timeout": "10",
                    **self.options, **options}
        with mounted(self.url, self.work / name, settings, self.env) as running:
            yield running

    def stored(self) -> dict[str, str | bytes]:
        """What the store holds now."""
        if self.read is not None:
            return self.read()
        with self.mount(f"check-{os.urandom(4).hex()}") as fresh:
            return tree(fresh.path)


@dataclass(frozen=True)
class Target:
    """One store the model runs on: ``start(work)`` runs it for a ``with`` block."""

    name: str
    start: Callable[[Path], contextlib.AbstractContextManager[Store]]
    shape: Shape = EVERYTHING


@contextlib.contextmanager
def _file(work: Path) -> Iterator[Store]:
    """omni.client's ``file:`` provider on a local folder (events on)."""
    (work / "store").mkdir()
    yield Store(f"file://{work / 'store'}", work, read=lambda: tree(work / "store"))


@contextlib.contextmanager
def _memory(work: Path) -> Iterator[Store]:
    """memory:// with latency on every call and every event delivered late; the daemon
    writes the store to ``dump`` when it exits."""
    dump = work / "dump"
    yield Store(f"memory://{work.name}/", work,
                {"latency": "0.002", "event_delay": "0.05", "dump": str(dump)},
                read=lambda: tree(dump))


@contextlib.contextmanager
def _omniverse(work: Path) -> Iterator[Store]:
    """omniverse:// through the Storage API peer serving a folder (its events come from
    inotify on that folder, tests/peers/nucleus_peer.py)."""
    from nucleus_fixtures import nucleus_peer

    with nucleus_peer(work / "store", work / "peer") as peer:
        yield Store(peer.url, work, {"discovery": peer.discovery},
                    read=lambda: tree(work / "store"))


@contextlib.contextmanager
def _vsphere(work: Path) -> Iterator[Store]:
    """vcsim (tests/peers/vcsim_peer.py), mounted at a library: its folders are items."""
    from peers.vcsim_peer import PASSWORD, USER, running

    from assetfs.drivers.vsphere import PASSWORD_ENV

    with running() as sim:
        sim.create_library("lib")
        yield Store(f"vsphere://{USER}@{sim.host}/lib/", work,
                    {"http": None, "poll_interval": "1"}, {PASSWORD_ENV: PASSWORD})


@contextlib.contextmanager
def _resonite(work: Path) -> Iterator[Store]:
    """The Resonite IO peer (tests/peers/resonite_peer.py), mounted at an empty folder of
    the inventory."""
    from peers.resonite_peer import running

    with running(work / "game") as peer:
        with peer.direct() as game:
            game.make_dir("/Inventory/model")
        yield Store("resonite:/Inventory/model", work,
                    {"socket": str(peer.socket), "poll_interval": "1",
                     "thumbnail_cache": str(work / "thumbnails")})


TARGETS = {target.name: target for target in (
    Target("file", _file),
    Target("memory", _memory),
    Target("omniverse", _omniverse),
    Target("vsphere", _vsphere, ITEMS),
    Target("resonite", _resonite, FOLDERS_ONLY),
)}
"""Every writable driver's store, by name."""
