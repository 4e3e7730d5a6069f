"""The FUSE requests a reader costs: what the kernel answers itself and what still reaches the
daemon, counted by the daemon (``requests`` in ``user.assetfs.status``), through real mounts
of omni.client's ``file:`` provider. Each test fails when its kernel feature is off: the
pyfuse3 patches of scripts/patches/ (FOPEN_NOFLUSH, FOPEN_CACHE_DIR) or passthrough of a
read-only open to the store's local copy (vfs/passthrough.py)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Mount, mounted
from test_passthrough import passthrough_expected
from test_writeback import flush

FILES = 50


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "small").mkdir(parents=True)
    for i in range(FILES):
        (root / "small" / f"f{i:02d}.bin").write_bytes(bytes([i]) * 4096)
    for d in range(3):
        (root / "tree" / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (root / "tree" / f"d{d}" / f"file{f}.txt").write_text(f"{d}/{f}\n")
    return root


@pytest.fixture
def mount(store: Path, tmp_path: Path) -> Iterator[Mount]:
    options = {"cache_dir": str(tmp_path / "cache"), "passthrough": "copies"}
    with mounted(f"file://{store}", tmp_path / "mnt", options) as m:
        yield m


def status(mount: Mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.assetfs.status"))


def requests(mount: Mount) -> Counter[str]:
    """The daemon's request counters, less the getxattr that read them."""
    counts = Counter(status(mount)["requests"])
    counts["getxattr"] -= 1
    return counts


def read_small_files(mount: Mount) -> Counter[str]:
    """Open, read and close every file of ``small/`` (listed first); the requests that took."""
    names = sorted(os.listdir(mount.path / "small"))
    assert len(names) == FILES
    before = requests(mount)
    for i, name in enumerate(names):
        with open(mount.path / "small" / name, "rb") as f:
            assert f.read() == bytes([i]) * 4096
    return requests(mount) - before


def test_read_only_close_sends_no_flush(mount: Mount) -> None:
    """close() of a file opened for reading waits for no FLUSH request (FOPEN_NOFLUSH); a
    file opened for writing still gets its flush."""
    spent = read_small_files(mount)
    assert spent["open"] == FILES
    assert spent["flush"] == 0, spent
    before = requests(mount)
    with open(mount.path / "small" / "f00.bin", "r+b") as f:
        f.write(b"x")
    assert (requests(mount) - before)["flush"] == 1


def test_read_only_open_of_a_store_file_sends_no_read(mount: Mount, store: Path) -> None:
    """A file of the store, never read before, opened read-only: the kernel reads the
    store's local copy itself (passthrough), so no READ request reaches the daemon and the
    whole open+read+close costs an open and a release. Without passthrough (a kernel
    before 6.9, no CAP_SYS_ADMIN, the stock pyfuse3) the reads go through the daemon."""
    spent = read_small_files(mount)
    if not passthrough_expected():
        assert spent["read"] >= FILES
        return
    assert spent["read"] == 0, spent
    assert spent["open"] == FILES and spent["release"] == FILES
    assert sum(spent.values()) - spent["getxattr"] == 2 * FILES, spent
    assert spent["getxattr"] <= 2, spent  # per run, not per file
    assert status(mount)["passthrough"]["opens"] >= FILES


def test_open_reader_of_a_store_file_sees_changes_in_place(mount: Mount, store: Path) -> None:
    """A reader of the store's file through passthrough sees an in-place change on the
    store, its new size included; a new open reads the new content too."""
    path = mount.path / "small" / "f01.bin"
    with open(path, "rb", buffering=0) as reader:
        assert reader.read() == b"\x01" * 4096
        with open(store / "small" / "f01.bin", "ab") as server:
            server.write(b"more")
        deadline = time.monotonic() + 15
        while os.fstat(reader.fileno()).st_size != 4100:
            assert time.monotonic() < deadline, "the open reader never saw the new size"
            time.sleep(0.05)
        assert os.pread(reader.fileno(), 8192, 0) == b"\x01" * 4096 + b"more"
        assert path.read_bytes() == b"\x01" * 4096 + b"more"


def test_writer_while_readers_read_the_store_file(mount: Mount, store: Path) -> None:
    """An open for writing while readers read the store's local copy through the kernel
    fails with ETXTBSY (the kernel serves all opens of a file alike, and the store's copy
    is never written behind the write-back); once they close, the write works."""
    path = mount.path / "small" / "f02.bin"
    reader = open(path, "rb")  # noqa: SIM115 - closed below
    try:
        assert reader.read() == b"\x02" * 4096
        if passthrough_expected():
            with pytest.raises(OSError) as refused:
                open(path, "r+b")  # noqa: SIM115 - it fails
            assert refused.value.errno == errno.ETXTBSY
    finally:
        reader.close()
    with open(path, "r+b") as writer:
        writer.write(b"W")
    flush(mount)
    assert (store / "small" / "f02.bin").read_bytes() == b"W" + b"\x02" * 4095


def test_second_listing_sends_no_readdir(mount: Mount, store: Path) -> None:
    """A folder listed again comes from the kernel's cache (FOPEN_CACHE_DIR): no READDIR,
    only an opendir and a releasedir per folder; a remote change and a local one still show
    in the next listing."""
    tree = mount.path / "tree"
    subprocess.run(["ls", "-lR", str(tree)], check=True, capture_output=True)
    before = requests(mount)
    listed = subprocess.run(["ls", "-lR", str(tree)], check=True, capture_output=True,
                            text=True).stdout
    spent = requests(mount) - before
    assert "file19.txt" in listed
    assert spent["readdir"] == 0, spent
    assert spent["opendir"] == 4 and spent["lookup"] == 0, spent
    (store / "tree" / "d0" / "remote.txt").write_text("new\n")
    deadline = time.monotonic() + 15
    while "remote.txt" not in os.listdir(tree / "d0"):
        assert time.monotonic() < deadline, "a remote change never showed in the listing"
        time.sleep(0.05)
    (tree / "d1" / "local.txt").write_text("here\n")
    assert "local.txt" in os.listdir(tree / "d1")
    os.unlink(tree / "d1" / "file0.txt")
    assert "file0.txt" not in os.listdir(tree / "d1")


def test_by_default_a_writer_may_open_a_file_readers_have_open(store: Path,
                                                               tmp_path: Path) -> None:
    """Without ``-o passthrough=copies`` readers read through the daemon, and a program may
    save in place over a file another one is reading, as on a local disk."""
    with mounted(f"file://{store}", tmp_path / "plain",
                 {"cache_dir": str(tmp_path / "plain-cache")}) as m:
        path = m.path / "small" / "f03.bin"
        with open(path, "rb") as reader:
            assert reader.read() == b"\x03" * 4096
            with open(path, "r+b") as writer:
                writer.write(b"W")
            reader.seek(0)
            assert reader.read(1) == b"W"
        flush(m)
    assert (store / "small" / "f03.bin").read_bytes() == b"W" + b"\x03" * 4095


@pytest.fixture
def plain(store: Path, tmp_path: Path) -> Iterator[Mount]:
    """The default options: no passthrough to the store's copy."""
    with mounted(f"file://{store}", tmp_path / "plain",
                 {"cache_dir": str(tmp_path / "plain-cache")}) as m:
        yield m


def test_small_file_read_after_open_sends_no_read(plain: Mount, store: Path) -> None:
    """By default a small file whose content lies on local disk (here the store's own
    file) is stored in the kernel page cache while its open is answered
    (vfs/pagefill.py): open+read+close costs an open and a release, no READ. A second
    open while the first is still open reads the same bytes."""
    spent = read_small_files(plain)
    assert spent["read"] == 0, spent
    assert spent["open"] == FILES and spent["release"] == FILES, spent
    assert status(plain)["page_fills"] == FILES
    path = plain.path / "small" / "f04.bin"
    with open(path, "rb") as first, open(path, "rb") as second:
        assert first.read() == second.read() == b"\x04" * 4096


def test_filled_file_changed_on_the_store_reads_the_new_content(plain: Mount,
                                                                store: Path) -> None:
    """A small file read once (its content kept in the kernel page cache) and then
    rewritten on the store, same size, other bytes: the next open reads the new bytes."""
    path = plain.path / "small" / "f05.bin"
    assert path.read_bytes() == b"\x05" * 4096
    (store / "small" / "f05.bin").write_bytes(b"\xaa" * 4096)
    deadline = time.monotonic() + 15
    while path.read_bytes() != b"\xaa" * 4096:
        assert time.monotonic() < deadline, "the store's change never showed"
        time.sleep(0.05)
