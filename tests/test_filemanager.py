"""A real file manager on a mount: PCManFM under Xvfb browses a vSphere content library
served by vcsim, a store without ranged reads (docs/vsphere.md, docs/desktop.md).

PCManFM (libfm) reads the first 4 KiB of every file whose type its name does not tell, and
thumbnails images itself. On a store without Range the first read starts a download of the
whole file; it must stop when the reader closes, so browsing a folder of big files fetches
a little of each. Then a folder of images must show their thumbnails: the screenshot is
checked for the images' colours, and its path is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mounting import Mount, mounted, stop_process
from peers.vcsim_peer import PASSWORD, USER, running

pytestmark = pytest.mark.vsphere

COLOURS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255),
           "orange": (255, 160, 0)}
"""Image name -> the colour at its top (a gradient to white below)."""
BIG = 4
BIG_SIZE = 128 << 20


def status(mount: Mount) -> dict[str, Any]:
    return json.loads(os.getxattr(mount.path, "user.assetfs.status"))


def gradient(path: Path, colour: tuple[int, int, int]) -> None:
    rgb = "#{:02x}{:02x}{:02x}".format(*colour)
    subprocess.run(["convert", "-size", "320x240", f"gradient:{rgb}-white", str(path)],
                   check=True, timeout=60)


def pixels(ppm: Path) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a binary PPM (P6, maxval 255), as ImageMagick
    writes it."""
    data = ppm.read_bytes()
    fields: list[bytes] = []
    at = 0
    while len(fields) < 4:
        while data[at:at + 1].isspace():
            at += 1
        end = at
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[at:end])
        at = end
    assert fields[0] == b"P6" and fields[3] == b"255", fields
    width, height = int(fields[1]), int(fields[2])
    return width, height, data[at + 1:at + 1 + 3 * width * height]


def colour_counts(width: int, rgb: bytes, slack: int = 40, stride: int = 2) -> dict[str, int]:
    """Image name -> pixels of the screen (every ``stride``-th in each direction) within
    ``slack`` of its top colour on every channel."""
    counts = dict.fromkeys(COLOURS, 0)
    row = 3 * width
    for y in range(0, len(rgb) // row, stride):
        for x in range(0, width, stride):
            at = y * row + 3 * x
            r, g, b = rgb[at], rgb[at + 1], rgb[at + 2]
            for name, (r0, g0, b0) in COLOURS.items():
                if abs(r - r0) <= slack and abs(g - g0) <= slack and abs(b - b0) <= slack:
                    counts[name] += 1
    return counts


@pytest.fixture
def display(tmp_path: Path) -> Iterator[str]:
    """A private X server (Xvfb, a free display number); stopped by pid."""
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0",
                             "1024x768x24", "-nolisten", "tcp", "-noreset"],
                            pass_fds=(write_end,), stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        number = os.read(read_end, 64).decode().strip()
        assert number.isdigit(), "Xvfb did not start"
        yield f":{number}"
    finally:  # the pipe stays open meanwhile: Xvfb writes its number again if it resets
        stop_process(xvfb, timeout=10)
        os.close(read_end)


def desktop_env(tmp_path: Path, display: str) -> dict[str, str]:
    """A desktop session of its own: home, configuration (thumbnail view), no gvfs."""
    home = tmp_path / "home"
    (home / ".config" / "libfm").mkdir(parents=True)
    (home / ".config" / "libfm" / "libfm.conf").write_text(
        "[config]\nthumbnail_local=1\nthumbnail_max=8192\n[ui]\nshow_thumbnail=1\n"
        "thumbnail_size=128\n")
    (home / ".config" / "pcmanfm" / "default").mkdir(parents=True)
    (home / ".config" / "pcmanfm" / "default" / "pcmanfm.conf").write_text(
        "[ui]\nview_mode=thumbnail\nwin_width=1000\nwin_height=700\n")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    return {**os.environ, "DISPLAY": display, "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_RUNTIME_DIR": str(runtime), "GIO_USE_VFS": "local", "NO_AT_BRIDGE": "1"}


def settle(mount: Mount, seconds: float, quiet: float = 2.0) -> dict[str, Any]:
    """Wait until the mount's reads and downloads have not moved for ``quiet`` seconds
    (at most ``seconds``); return the status then."""
    def mark(s: dict[str, Any]) -> tuple[int, int, int]:
        return (s["requests"].get("read", 0), s["requests"].get("open", 0),
                s["cache"]["downloaded_bytes"])
    deadline = time.monotonic() + seconds
    last, since = mark(status(mount)), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = mark(status(mount))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet and now[1]:
            break
    return status(mount)


def test_pcmanfm_browses_without_downloading_and_shows_thumbnails(
    tmp_path: Path, display: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with running() as sim:
        library = sim.create_library("lib")
        photos = sim.create_item(library, "photos")
        for name, colour in COLOURS.items():
            image = tmp_path / f"{name}.png"
            gradient(image, colour)
            sim.upload(photos, image.name, image.read_bytes())
        takes = sim.create_item(library, "takes")
        for i in range(BIG):  # no extension: libfm reads their start to tell the type
            sim.upload(takes, f"take{i}", bytes(BIG_SIZE))
        options = {"http": None, "poll_interval": "5", "cache_dir": str(tmp_path / "cache")}
        env = desktop_env(tmp_path, display)
        with mounted(f"vsphere://{USER}@{sim.host}/", tmp_path / "mnt", options,
                     {"ASSETFS_VSPHERE_PASSWORD": PASSWORD}) as m:
            log = open(tmp_path / "pcmanfm.log", "wb")  # noqa: SIM115 - closed below
            manager = subprocess.Popen(["pcmanfm", str(m.path / "lib" / "takes")], env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
            try:
                browsed = settle(m, 30)
                assert browsed["requests"].get("open", 0) >= BIG, browsed["requests"]
                downloaded = browsed["cache"]["downloaded_bytes"]
                assert downloaded < BIG * BIG_SIZE // 2, downloaded  # not the whole files
                assert browsed["cache"]["streams_stopped"] >= 1
                time.sleep(2)  # a download left running would go on meanwhile
                assert status(m)["cache"]["downloaded_bytes"] == downloaded

                subprocess.run(["pcmanfm", str(m.path / "lib" / "photos")], env=env,
                               check=True, timeout=30)
                shot, ppm = tmp_path / "pcmanfm-photos.png", tmp_path / "screen.ppm"
                deadline, missing = time.monotonic() + 30, list(COLOURS)
                while missing and time.monotonic() < deadline:
                    time.sleep(0.5)
                    subprocess.run(["import", "-window", "root", "-depth", "8", str(ppm)], env=env,
                                   check=True, timeout=30)
                    width, _, rgb = pixels(ppm)
                    missing = [n for n, c in colour_counts(width, rgb).items() if c < 100]
                subprocess.run(["convert", str(ppm), str(shot)], check=True, timeout=30)
                with capsys.disabled():
                    print(f"\nbrowsing {BIG} files of {BIG_SIZE >> 20} MiB downloaded "
                          f"{downloaded / (1 << 20):.1f} MiB; screenshot of PCManFM on the "
                          f"mount: {shot}")
                assert not missing, f"no thumbnail of {missing} on the screen ({shot})"
                thumbnailed = status(m)
                assert thumbnailed["requests"].get("read", 0) > browsed["requests"]["read"]
            finally:
                stop_process(manager, timeout=10)
                log.close()
