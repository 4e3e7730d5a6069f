"""Network faults between the daemon and the stock OMERO.fs FileServer: a real mount whose
FileServer connection passes through a loopback proxy (peers/faultproxy.py) that resets
every connection at the test's command, mid-download. The MonitorServer is reached
directly (``-o monitor=PORT``): only the bytes' path is cut.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("Ice", reason="needs the omero extra: make omero")
pytest.importorskip("fsServerFS", reason="needs omero-dropbox: make omero")

from mounting import Mount, mounted
from omerofs_fixtures import servers, tree  # noqa: F401 - pytest fixtures
from omerofs_peer import MiB, OmeroFS
from peers.faultproxy import FaultProxy, proxying

TIMEOUT = 6.0
"""``-o timeout`` of the mount, seconds."""
RATE = 4 << 20
"""Bytes per second the proxy forwards, so that a 64 MiB download is still running when it
is cut."""


@pytest.fixture
def proxy(servers: OmeroFS) -> Iterator[FaultProxy]:
    with proxying(servers.fs.port) as peer:
        yield peer


@pytest.fixture
def mount(servers: OmeroFS, proxy: FaultProxy, tmp_path: Path) -> Iterator[Mount]:
    options = {"timeout": str(TIMEOUT), "call_timeout": "2", "connect_timeout": "1",
               "monitor": str(servers.ms.port), "cache_dir": str(tmp_path / "cache")}
    url = f"omerofs://127.0.0.1:{proxy.port}{servers.tree}"
    with mounted(url, tmp_path / "mnt", options) as running:
        yield running


def test_a_read_cut_mid_download_recovers_within_the_timeout(
    mount: Mount, proxy: FaultProxy, tree: tuple[Path, dict[str, str]]
) -> None:
    """Every connection to the FileServer is reset while a large file is being read: the
    read goes on (readBlock is retried on a new connection) with the right bytes, and no
    read waits longer than ``-o timeout``."""
    big = mount.path / "data" / "big-64MiB.bin"
    proxy.limit(RATE)
    digest = hashlib.sha256()
    slowest = 0.0
    sent_at_cuts = []
    with open(big, "rb", buffering=0) as f:
        for n in range(64):
            if n in (4, 20):
                sent_at_cuts.append(proxy.forwarded["down"])
                proxy.cut()
            started = time.monotonic()
            chunk = f.read(MiB)
            slowest = max(slowest, time.monotonic() - started)
            digest.update(chunk)
    assert all(sent < 60 * MiB for sent in sent_at_cuts), sent_at_cuts  # cut mid-download
    assert proxy.accepted >= 2  # the cut connection was replaced
    assert digest.hexdigest() == tree[1]["data/big-64MiB.bin"]
    assert slowest <= TIMEOUT + 2, slowest
