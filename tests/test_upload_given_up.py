"""An upload that can never succeed is not retried for ever: its bytes are kept as a
conflict copy beside the name, or in the recovery folder of the cache when the store
refuses that too, and ``assetfs status`` names the file and the reason. On omni.client's
file: provider an upload onto a folder, or under a file, answers ERROR_WRONG_TYPE
(assetfs/drivers/nucleus.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from mounting import Mount, assetfs_command, mounted

from assetfs.cache.journal import Journal


def status(mount: Mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.assetfs.status"))


def given_up(mount: Mount, path: str) -> dict[str, str]:
    """Start the uploads and wait until the one of ``path`` was given up."""
    os.setxattr(mount.path, "user.assetfs.flush", b"")
    deadline = time.monotonic() + 20
    while True:
        found = [g for g in status(mount)["uploads"]["given_up"] if g["path"] == path]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"upload of {path} not given up: {status(mount)}"
        time.sleep(0.05)


def options(tmp_path: Path) -> dict[str, str | None]:
    return {"cache_dir": str(tmp_path / "cache"), "write_back_delay": "60", "timeout": "3"}


def test_a_file_whose_name_became_a_folder_is_saved_beside_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with mounted(f"file://{store}", tmp_path / "mnt", options(tmp_path)) as m:
        (m.path / "t").write_bytes(b"our bytes")
        (store / "t").mkdir()  # another client makes a folder of that name meanwhile
        failed = given_up(m, "/t")
        assert failed["saved_as"].startswith("/t.conflict-")
        assert "ERROR_WRONG_TYPE" in failed["reason"]
        assert (store / failed["saved_as"].lstrip("/")).read_bytes() == b"our bytes"
        assert (store / "t").is_dir()
        assert not status(m)["dirty_files"]
        assert status(m)["uploads"]["retries"] == 0
        shown = subprocess.run(assetfs_command("status", str(m.path)), capture_output=True,
                               text=True, timeout=30)
        assert "not uploaded, cannot be: /t (" in shown.stdout
        assert f"saved as {failed['saved_as']}" in shown.stdout
    journal = Journal(tmp_path / "cache" / "journal.sqlite")
    assert journal.records() == []
    journal.close()


def test_a_file_whose_folder_became_a_file_goes_to_the_recovery_folder(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with mounted(f"file://{store}", tmp_path / "mnt", options(tmp_path)) as m:
        (m.path / "d").mkdir()
        (m.path / "d" / "f").write_bytes(b"kept")
        shutil.rmtree(store / "d")
        (store / "d").write_bytes(b"a file now")
        failed = given_up(m, "/d/f")
        saved = Path(failed["saved_as"])
        assert saved.is_relative_to(tmp_path / "cache" / "recovery")
        assert saved.parts[-2:] == ("d", "f")
        assert saved.read_bytes() == b"kept"
        assert "ERROR_WRONG_TYPE" in failed["reason"]
        assert not status(m)["dirty_files"]
    assert (store / "d").read_bytes() == b"a file now"
    assert saved.read_bytes() == b"kept"
