"""A mount at home on a desktop and in a studio: Prometheus metrics, ``assetfs status`` for
people, GIO's trash, the names file managers probe, user services and fstab automounts,
progress of the command line's long waits. Real mounts of omni.client's ``file:`` provider
(and of vcsim for an upload slow enough to watch)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mounting import Mount, assetfs_command, is_mounted, mounted, wait_for
from peers.vcsim_peer import PASSWORD, USER, running
from prometheus_client.parser import text_string_to_metric_families

from assetfs.observe.statusview import human_size, render

REPO = Path(__file__).resolve().parent.parent
PROBES = [".hidden", "desktop.ini", "Thumbs.db", ".DS_Store", ".directory", "autorun.inf"]


def status(mount: Mount) -> dict[str, Any]:
    return json.loads(os.getxattr(mount.path, "user.assetfs.status"))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(assetfs_command(*args), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "Photos").mkdir(parents=True)
    for i in range(5):
        (root / "Photos" / f"Sub{i}").mkdir()
        (root / "Photos" / f"shot{i}.jpg").write_bytes(os.urandom(20_000))
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    return root


def mount_file(store: Path, tmp_path: Path, name: str = "mnt", **options: str | None) -> Any:
    opts: dict[str, str | None] = {"cache_dir": str(tmp_path / f"{name}-cache"),
                                   "write_back_delay": "0.2", "timeout": "10"}
    opts.update(options)
    return mounted(f"file://{store}", tmp_path / name, opts)


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` as sample name -> {sorted labels: value}, parsed by prometheus-client."""
    text = httpx.get(url, timeout=10).text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def one(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


# --- metrics --------------------------------------------------------------------------
def test_metrics_are_scraped_while_work_runs(store: Path, tmp_path: Path) -> None:
    """``-o metrics=0`` serves Prometheus text on a free loopback port; scrapes made while a
    writer and a reader work through the mount see their requests, latencies, errors,
    cache and upload counters grow, and never stall the mount."""
    # passthrough=no: the reader's reads must reach the daemon to be counted (with
    # passthrough the kernel reads the store's file itself, docs/speed.md)
    with mount_file(store, tmp_path, metrics="0", cache_max="64M", passthrough="no") as m:
        url = status(m)["metrics"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
        stop = threading.Event()
        failures: list[BaseException] = []

        def work() -> None:
            try:
                n = 0
                while not stop.is_set():
                    (m.path / f"out{n}.bin").write_bytes(os.urandom(256 << 10))
                    assert (m.path / "big.bin").read_bytes()[:4]
                    assert not (m.path / "Photos" / f"none{n}").exists()
                    os.listdir(m.path / "Photos")
                    n += 1
            except BaseException as exc:  # reported by the test thread below
                failures.append(exc)

        worker = threading.Thread(target=work)
        worker.start()
        try:
            scrapes = []
            for _ in range(4):
                time.sleep(0.5)
                scrapes.append(scrape(url))
        finally:
            stop.set()
            worker.join(timeout=60)
        assert not failures, failures
        first, last = scrapes[0], scrapes[-1]
        assert one(last, "assetfs_requests_total", operation="create") > \
            one(first, "assetfs_requests_total", operation="create")
        assert one(last, "assetfs_request_duration_seconds_count", operation="read") >= 1
        buckets = {dict(k)["le"]: v for k, v in
                   last["assetfs_request_duration_seconds_bucket"].items()
                   if dict(k)["operation"] == "lookup"}
        assert buckets["+Inf"] == one(last, "assetfs_request_duration_seconds_count",
                                      operation="lookup")
        assert list(buckets.values()) == sorted(buckets.values())  # cumulative
        assert one(last, "assetfs_request_errors_total", operation="getxattr",
                   errno="ENOTSUP") >= 1  # the kernel's security.capability probes
        assert one(last, "assetfs_cache_limit_bytes") == 64 << 20
        assert one(last, "assetfs_cache_used_bytes") > 0
        assert one(last, "assetfs_cache_hits_total") + one(last, "assetfs_cache_misses_total") \
            >= 1
        assert one(last, "assetfs_store_requests_total", call="list") >= 1
        assert one(last, "assetfs_events_subscription_state", state="live") == 1
        for name in ("assetfs_uploads_queued", "assetfs_uploads_in_flight",
                     "assetfs_upload_failures_total", "assetfs_upload_conflicts_total",
                     "assetfs_events_backlog", "assetfs_events_lag_seconds",
                     "assetfs_loop_stalls_total", "assetfs_downloaded_bytes_total"):
            assert name in last, name
        wait_for(lambda: not status(m)["dirty_files"], 30, "uploads")
        final = scrape(url)
        assert one(final, "assetfs_uploaded_bytes_total") >= \
            one(final, "assetfs_uploaded_files_total") * (256 << 10) > 0
        info = final["assetfs_mount_info"]
        assert dict(next(iter(info)))["url"] == f"file://{store}"


def test_metrics_on_a_taken_port_fail_the_mount_cleanly(store: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "mnt").mkdir()
        result = cli("mount", f"file://{store}", str(tmp_path / "mnt"), "-o",
                     f"metrics={port},cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 1
    assert f"metrics=127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not is_mounted(tmp_path / "mnt")
    bad = cli("mount", f"file://{store}", str(tmp_path / "mnt"), "-o", "metrics=here")
    assert bad.returncode == 1 and "expected [HOST:]PORT" in bad.stderr


# --- status ---------------------------------------------------------------------------
def test_status_for_people_watch_and_json(store: Path, tmp_path: Path) -> None:
    with mount_file(store, tmp_path, cache_max="10G") as m:
        (m.path / "written.bin").write_bytes(os.urandom(3 << 20))
        wait_for(lambda: not status(m)["dirty_files"], 30, "upload")
        text = cli("status", str(m.path)).stdout
        assert "of 10.0 GiB" in text and "3.0 MiB done" in text, text
        assert not re.search(r"\d{5,} bytes", text), text
        as_json = json.loads(cli("status", str(m.path), "--json").stdout)
        assert as_json["cache"]["max_bytes"] == 10 << 30
        assert as_json["uploads"]["bytes"] == 3 << 20
        assert set(as_json) >= {"url", "driver", "pid", "cache", "dirty_files", "uploads",
                                "events", "loop", "requests"}
        watch = subprocess.Popen(assetfs_command("status", str(m.path), "--watch", "0.2"),
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        watch.send_signal(signal.SIGINT)
        out, _ = watch.communicate(timeout=20)
        assert watch.returncode == 0
        assert out.count("\033[2J") >= 2 and out.count(f"{m.path}: file://") >= 2


def test_status_says_which_upload_fails_and_why(tmp_path: Path) -> None:
    """A store that keeps refusing uploads for a while (memory://'s injected Unavailable):
    the upload is retried, and ``assetfs status`` names the file and the store's reason."""
    options = {"cache_dir": str(tmp_path / "cache"), "write_back_delay": "0",
               "fail": "write:unavailable:1000", "timeout": "2"}
    with mounted(f"memory://{tmp_path.name}/", tmp_path / "mnt", options) as m:
        (m.path / "new.txt").write_bytes(b"hello")
        failing = wait_for(lambda: status(m)["uploads"]["failing"], 30, "a failed upload")
        assert failing[0]["path"] == "/new.txt" and "injected unavailable" in failing[0]["error"]
        text = cli("status", str(m.path)).stdout
        assert "failing /new.txt: " in text and "attempts" in text, text
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=False)
        m.proc.send_signal(signal.SIGINT)  # no final upload wait: it cannot succeed
        m.proc.send_signal(signal.SIGINT)


def test_render_shows_a_running_upload_with_progress() -> None:
    now = 1_000_000.0
    sample = {
        "url": "vsphere://u@h/", "driver": "VsphereDriver", "pid": 7,
        "cache": {"used_bytes": 4096, "max_bytes": 10 << 30, "dirty_bytes": 300 << 20,
                  "dir": "/c", "hits": 3, "misses": 1, "downloaded_bytes": 1536},
        "dirty_files": ["/lib/item/big.iso"],
        "uploads": {"files": 0, "bytes": 0, "retries": 0, "conflicts": 0, "last_error": None,
                    "conflict_files": [], "queued": 0, "failing": [],
                    "in_flight": [{"path": "/lib/item/big.iso", "bytes": 300 << 20,
                                   "sent_bytes": 75 << 20, "started": now - 10}]},
        "events": {"state": "polling", "received": 0, "last_event": None},
    }
    text = render("/mnt", sample, now)
    assert "cache: 4.0 KiB of 10.0 GiB (0%), 300.0 MiB not uploaded yet" in text
    assert "uploading /lib/item/big.iso: 75.0 MiB of 300.0 MiB (25%), 10 s, 7.5 MiB/s" in text
    assert "1.5 KiB downloaded" in text
    assert [human_size(n) for n in (0, 1023, 1024, 5 << 30)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]


# --- trash ----------------------------------------------------------------------------
def test_gio_trash_follows_the_trash_option(store: Path, tmp_path: Path) -> None:
    """Default (off): ``gio trash`` fails before touching anything (a file manager then
    offers to delete), no ``.Trash-*`` is made on the store, and one there stays unseen;
    ``-o trash=server``: the file goes to the store's ``.Trash-$uid/files``."""
    (store / ".Trash-1234").mkdir()
    (tmp_path / "home").mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    with mount_file(store, tmp_path) as m:
        result = subprocess.run(["gio", "trash", str(m.path / "big.bin")], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "trash" in result.stderr.lower(), result
        assert (m.path / "big.bin").exists() and (store / "big.bin").exists()
        assert sorted(p.name for p in store.iterdir()) == [".Trash-1234", "Photos", "big.bin"]
        assert ".Trash-1234" not in os.listdir(m.path)
        with pytest.raises(PermissionError):
            (m.path / f".Trash-{os.getuid()}").mkdir()
        subprocess.run(["gio", "remove", str(m.path / "big.bin")], env=env, check=True)
        wait_for(lambda: not (store / "big.bin").exists(), 10, "the delete")
    with mount_file(store, tmp_path, "srv", trash="server") as m:
        (m.path / "Photos" / "shot0.jpg").exists()
        subprocess.run(["gio", "trash", str(m.path / "Photos" / "shot0.jpg")], env=env,
                       check=True, timeout=60)
        trashed = store / f".Trash-{os.getuid()}" / "files" / "shot0.jpg"
        wait_for(trashed.exists, 20, "the trashed file on the store")
        assert not (store / "Photos" / "shot0.jpg").exists()
    bad = cli("mount", f"file://{store}", str(tmp_path / "mnt"), "-o", "trash=bin")
    assert bad.returncode == 1 and "one of off|server|local" in bad.stderr


# --- probe names ----------------------------------------------------------------------
def test_probe_names_are_answered_without_the_store(store: Path, tmp_path: Path) -> None:
    """What file managers look for in every folder they show costs no store request once
    known absent, also after the cache lifetime; an ordinary missing name is asked again;
    a probe file made on the store later still shows up."""
    options = {"attr_timeout": "1", "entry_timeout": "1", "negative_timeout": "0"}
    with mount_file(store, tmp_path, **options) as m:
        photos = m.path / "Photos"
        folders = [photos] + [photos / f"Sub{i}" for i in range(5)]

        def visit(names: list[str]) -> dict[str, int]:
            before = status(m)["store_requests"]
            os.listdir(photos)
            for folder in folders:
                for name in names:
                    assert not (folder / name).exists()
            after = status(m)["store_requests"]
            return {k: after.get(k, 0) - before.get(k, 0) for k in ("stat", "list")}

        first = visit(PROBES)
        assert first["stat"] >= 5  # the subfolders' names were never listed
        time.sleep(1.5)  # past the metadata lifetime (attr_timeout)
        again = visit(PROBES)
        assert again["stat"] <= 1, again  # Photos itself: its entry expired too
        assert again["list"] <= 1  # the folder itself is listed again: it may have changed
        visit(["notes.txt"])
        time.sleep(1.5)
        assert visit(["notes.txt"])["stat"] >= 5  # an ordinary name is asked again
        (store / "Photos" / "Sub1" / ".hidden").write_text("shot0.jpg\n")
        wait_for((photos / "Sub1" / ".hidden").exists, 20, "a .hidden made on the store")


# --- services -------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["systemd/assetfs@.service", "systemd/user/assetfs@.service"])
def test_service_units_verify(unit: str, tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about an instance of each unit (its
    assetfs path pointed at the one under test, which must exist to verify)."""
    text = (REPO / unit).read_text()
    command = str(Path(sys.executable).parent / "assetfs")
    text = text.replace("/usr/local/bin/assetfs", command).replace("%h/.local/bin/assetfs",
                                                                   command)
    instance = tmp_path / "assetfs@home-me-nucleus.service"
    instance.write_text(text)
    user = "/user/" in unit
    runtime = tmp_path / "run"
    runtime.mkdir()
    result = subprocess.run(
        ["systemd-analyze", *(["--user"] if user else []), "verify", str(instance)],
        capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert "Type=notify" in text and ("WantedBy=default.target" in text) == user


FSTAB_LINE = ("omniverse://nucleus.example.com/Projects  /mnt/projects  fuse.assetfs  "
              "noauto,x-systemd.automount,x-systemd.idle-timeout=10min,_netdev,cache_max=50G"
              "  0 0")


def test_fstab_automount_line(store: Path, tmp_path: Path) -> None:
    """The documented fstab line gives systemd an automount, and the helper mount(8) runs
    mounts with those options (mount-only and ``x-systemd.*`` ones dropped)."""
    readme = (REPO / "docs" / "desktop.md").read_text()
    assert FSTAB_LINE in readme
    generator = Path("/usr/lib/systemd/system-generators/systemd-fstab-generator")
    fstab, out = tmp_path / "fstab", tmp_path / "units"
    fstab.write_text(FSTAB_LINE + "\n")
    out.mkdir()
    subprocess.run([str(generator), str(out), str(out), str(out)], check=True,
                   env={**os.environ, "SYSTEMD_FSTAB": str(fstab),
                        "SYSTEMD_PROC_CMDLINE": ""}, timeout=60)
    automount = (out / "mnt-projects.automount").read_text()
    assert "Where=/mnt/projects" in automount and "TimeoutIdleSec=10min" in automount
    unit = (out / "mnt-projects.mount").read_text()
    assert "Type=fuse.assetfs" in unit
    assert "What=omniverse://nucleus.example.com/Projects" in unit
    assert (out / "remote-fs.target.requires" / "mnt-projects.automount").exists()
    mnt = tmp_path / "auto"
    mnt.mkdir()
    options = ("rw,noauto,x-systemd.automount,x-systemd.idle-timeout=10min,_netdev,"
               f"cache_dir={tmp_path / 'auto-cache'}")
    helper = [sys.executable, "-c", "import sys; from assetfs.cli import mount_helper; "
              "sys.exit(mount_helper())", f"file://{store}", str(mnt), "-o", options]
    result = subprocess.run(helper, capture_output=True, text=True, timeout=60)
    try:
        assert result.returncode == 0, result.stderr
        assert is_mounted(mnt) and sorted(os.listdir(mnt)) == ["Photos", "big.bin"]
    finally:
        done = cli("umount", str(mnt))
        assert done.returncode == 0, done.stderr


# --- progress of long waits ------------------------------------------------------------
def test_a_slow_mount_shows_progress(tmp_path: Path) -> None:
    """A store that accepts the connection and never answers: ``assetfs mount`` says what
    it waits for while it waits, then fails with one line."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        (tmp_path / "mnt").mkdir()
        env = {**os.environ, "ASSETFS_VSPHERE_PASSWORD": "x"}
        result = subprocess.run(
            assetfs_command("mount", f"vsphere://u@127.0.0.1:{silent.getsockname()[1]}/",
                            str(tmp_path / "mnt"), "-o",
                            f"http,timeout=4,cache_dir={tmp_path / 'cache'}"),
            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert any(re.match(r"assetfs: mounting vsphere://.* \(\d+ s\)", line) for line in lines), \
        lines
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("assetfs: cannot mount"), result.stderr


@pytest.fixture
def sim() -> Iterator[Any]:
    with running() as peer:
        yield peer


@pytest.mark.vsphere
def test_status_and_umount_during_a_large_upload(sim: Any, tmp_path: Path) -> None:
    """While a large file uploads to vcsim, ``assetfs status`` shows it with its progress;
    ``assetfs umount`` then says what it still waits for, and returns once it is up."""
    lid = sim.create_library("lib")
    sim.create_item(lid, "iso")
    # a long poll interval keeps the root's attributes cached: vcsim answers no request
    # while it receives an upload, and the kernel checks the root before each status read
    options = {"http": None, "poll_interval": "30", "cache_dir": str(tmp_path / "cache"),
               "write_back_delay": "0"}
    with mounted(f"vsphere://{USER}@{sim.host}/", tmp_path / "mnt", options,
                 {"ASSETFS_VSPHERE_PASSWORD": PASSWORD}) as m:
        size = 768 << 20  # sparse: written in no time, uploaded at the store's pace
        with open(m.path / "lib" / "iso" / "big.bin", "wb") as f:
            f.truncate(size)
        text = ""
        while "uploading" not in text and status(m)["dirty_files"]:
            running = status(m)["uploads"]["in_flight"]
            if running and running[0]["sent_bytes"]:
                assert running[0]["path"] == "/lib/iso/big.bin" and running[0]["bytes"] == size
                text = cli("status", str(m.path)).stdout
            time.sleep(0.01)
        print(text)
        assert re.search(r"uploading /lib/iso/big\.bin: [\d.]+ [KMG]iB of 768\.0 MiB "
                         r"\(\d+%\), \d+ s", text), text
        started = time.monotonic()
        done = subprocess.run(assetfs_command("umount", str(m.path)), capture_output=True,
                              text=True, timeout=300)
        took = time.monotonic() - started
        print(done.stdout, done.stderr)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        lines = done.stdout.splitlines()
        assert lines[:1] in ([], ["assetfs: waiting for 1 uploads: /lib/iso/big.bin"]), lines
        if took > 5:  # a progress line comes after 2 s of one wait
            assert any(re.match(r"assetfs: (uploading before unmount|unmounted; waiting for "
                                r"the daemon).* \(\d+ s\)", line) for line in lines), lines
    item = sim.find_item(lid, "iso")
    assert any(f["name"] == "big.bin" and f["size"] == 768 << 20 for f in sim.files(item))


def test_type_sniffing_fetches_a_window_not_whole_files_on_a_ranged_store(
    tmp_path: Path,
) -> None:
    """A file manager's type sniffer opens each file, reads 4 KiB and closes it (libfm
    does): on a store with ranged reads that fetches the blocks the kernel asked for and
    one read-ahead window behind them (cache/blocks.py), not the file."""
    seed = tmp_path / "seed"
    seed.mkdir()
    size, files = 32 << 20, 6
    for i in range(files):
        (seed / f"take{i}").write_bytes(os.urandom(size))
    options = {"seed": str(seed), "cache_dir": str(tmp_path / "cache")}
    with mounted(f"memory://{tmp_path.name}/", tmp_path / "mnt", options) as m:
        for i in range(files):
            with open(m.path / f"take{i}", "rb") as f:
                assert f.read(4096) == (seed / f"take{i}").read_bytes()[:4096]
        time.sleep(1)  # what a background read-ahead would fetch meanwhile
        downloaded = status(m)["cache"]["downloaded_bytes"]
        window = (2 + 8) << 20  # the kernel's first two requests' blocks + 8 read ahead
        assert 0 < downloaded <= files * window < files * size, downloaded
