"""Short writes into cache files are never taken as complete (assetfs/localio.py).

A file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes the kernel's pwrite stop short
at the limit; the next write then fails with EFBIG. A single unchecked ``os.pwrite`` would
report success with half the bytes written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import errno, os, resource, signal, sys
from assetfs import errors
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
assert os.pwrite(fd, b"x" * 20, 0) == 10  # what the kernel does: a short write
try:
    errors.pwrite_local(fd, b"y" * 20, 0)
except OSError as exc:
    print("raised", errno.errorcode[exc.errno])
else:
    print("returned")
"""


def test_a_short_write_is_continued_and_its_failure_raised(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cache-file")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "raised EFBIG"
    assert (tmp_path / "cache-file").read_bytes() == b"y" * 10
