"""Prometheus metrics of one mount (``-o metrics=[HOST:]PORT``), served by prometheus-client.

prometheus-client's HTTP server answers on a thread of its own, so a scrape never waits for
the event loop to be free to accept it. What it reports is read on the loop thread, where
every counter of the mount lives (design.md, Concurrency rules: nothing else touches them):
each scrape hands one snapshot call to the trio run (``trio.from_thread.run_sync``), a few
microseconds of loop time, and builds the metric families from that copy.

Names follow the Prometheus conventions (``_total`` counters, ``_bytes``, ``_seconds``);
README.md and docs/desktop.md list them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import errors
from .requests import RequestStats

SUBSCRIPTION_STATES = ("starting", "live", "polling", "reconnecting")
"""The states ``assetfs_events_subscription_state`` reports one gauge each for."""


@dataclass
class Sample:
    """One copy of a mount's counters, taken on the loop thread: ``status`` is what
    ``assetfs status --json`` shows; the rest copies :class:`RequestStats`."""

    status: dict[str, Any]
    counts: dict[str, int]
    errors: dict[tuple[str, str], int]
    latency: dict[str, tuple[list[tuple[float, int]], float]]


def take_sample(status: Callable[[], dict[str, Any]], requests: RequestStats) -> Sample:
    """Copy the counters of a mount (call on its loop thread)."""
    return Sample(status(), dict(requests.counts), dict(requests.errors),
                  {op: (lat.cumulative(), lat.total_s) for op, lat in requests.latency.items()})


def families(sample: Sample) -> Iterator[Metric]:
    """The metric families of ``sample``."""
    s = sample.status
    cache, uploads, events, loop = s["cache"], s["uploads"], s["events"], s["loop"]
    info = InfoMetricFamily("assetfs_mount", "The mount: store URL, driver, mount point")
    info.add_metric([], {"url": s["url"], "driver": s["driver"],
                         "mountpoint": s["mountpoint"], "version": s["version"]})
    yield info

    requests = CounterMetricFamily("assetfs_requests", "FUSE requests received",
                                   labels=["operation"])
    for op, count in sorted(sample.counts.items()):
        requests.add_metric([op], count)
    yield requests
    latency = HistogramMetricFamily("assetfs_request_duration_seconds",
                                    "Time from a FUSE request to its answer",
                                    labels=["operation"])
    for op, (buckets, total) in sorted(sample.latency.items()):
        latency.add_metric([op], [(_bound(b), n) for b, n in buckets], total)
    yield latency
    failed = CounterMetricFamily("assetfs_request_errors", "FUSE requests answered with an "
                                 "error, by errno", labels=["operation", "errno"])
    for (op, name), count in sorted(sample.errors.items()):
        failed.add_metric([op, name], count)
    yield failed
    store = CounterMetricFamily("assetfs_store_requests", "Requests sent to the store "
                                "(attempts, retries included), by kind", labels=["call"])
    for call, count in sorted(s["store_requests"].items()):
        store.add_metric([call], count)
    yield store

    yield _gauge("assetfs_cache_used_bytes", "Bytes the cache files take on disk",
                 cache["used_bytes"])
    yield _gauge("assetfs_cache_limit_bytes", "Bound on cached bytes (-o cache_max)",
                 cache["max_bytes"])
    yield _gauge("assetfs_cache_dirty_bytes", "Bytes written here and not yet uploaded",
                 cache["dirty_bytes"])
    yield _counter("assetfs_cache_hits", "Reads served without waiting for the store",
                   cache["hits"])
    yield _counter("assetfs_cache_misses", "Reads that waited for the store", cache["misses"])
    yield _counter("assetfs_downloaded_bytes", "Bytes fetched from the store into the cache",
                   cache["downloaded_bytes"])
    yield _counter("assetfs_downloads_stopped", "Whole-file downloads stopped because the "
                   "last reader closed", cache["streams_stopped"])

    yield _counter("assetfs_uploaded_bytes", "Bytes uploaded", uploads["bytes"])
    yield _counter("assetfs_uploaded_files", "Files uploaded", uploads["files"])
    yield _gauge("assetfs_uploads_queued", "Dirty files waiting for their upload",
                 uploads["queued"])
    yield _gauge("assetfs_uploads_in_flight", "Uploads running", len(uploads["in_flight"]))
    yield _gauge("assetfs_uploads_failing", "Files whose last upload attempt failed",
                 len(uploads["failing"]))
    yield _counter("assetfs_upload_failures", "Upload attempts that failed (each is retried)",
                   uploads["retries"])
    yield _counter("assetfs_upload_conflicts", "Uploads saved beside a file changed on the "
                   "store (NAME.conflict-TIME)", uploads["conflicts"])

    yield _counter("assetfs_events_received", "Change events received", events["received"])
    yield _counter("assetfs_events_applied", "Change events applied (after coalescing)",
                   events["applied"])
    yield _gauge("assetfs_events_backlog", "Change events waiting to be applied",
                 events["backlog"])
    yield _gauge("assetfs_events_lag_seconds", "From the arrival of the last batch of events "
                 "until the kernel caches were told", events["lag_s"])
    yield _gauge("assetfs_events_last_seconds", "Unix time of the last change event "
                 "(0: none yet)", events["last_event"] or 0)
    yield _counter("assetfs_events_subscription_restarts", "Reconnections of the change "
                   "subscription", events["restarts"])
    state = GaugeMetricFamily("assetfs_events_subscription_state", "1 for the subscription's "
                              "current state", labels=["state"])
    for name in SUBSCRIPTION_STATES:
        state.add_metric([name], 1.0 if events["state"] == name else 0.0)
    yield state

    yield _counter("assetfs_loop_stalls", "Event-loop steps that ran past the stall "
                   "threshold (every request of the mount waited)", loop["stalls"])
    yield _gauge("assetfs_loop_longest_step_seconds", "The longest event-loop step so far",
                 loop["longest_step_s"])
    yield _gauge("assetfs_loop_stall_threshold_seconds", "From how long a step counts as a "
                 "stall", loop["stall_s"])


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class MountCollector(Collector):
    """A prometheus-client collector that samples a mount on its loop thread at each
    scrape (:func:`take_sample` through ``token``); a scrape after the trio run ended
    gets no samples."""

    def __init__(self, sample: Callable[[], Sample], token: trio.lowlevel.TrioToken) -> None:
        self._sample = sample
        self._token = token

    def collect(self) -> Iterator[Metric]:
        try:
            sample = trio.from_thread.run_sync(self._sample, trio_token=self._token)
        except trio.RunFinishedError:
            return
        yield from families(sample)


class MetricsServer:
    """The HTTP endpoint: ``http://HOST:PORT/metrics`` (any path answers the same)."""

    def __init__(self, host: str, port: int, sample: Callable[[], Sample]) -> None:
        """Start serving on ``host``:``port`` (port 0: a free one, see :attr:`url`); call
        from the loop thread. Raises :class:`~assetfs.errors.AlreadyExists` when the
        address is taken and :class:`~assetfs.errors.BadOption` when it cannot be bound."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MountCollector(sample, trio.lowlevel.current_trio_token()))
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            what = f"-o metrics={host}:{port}: {exc.strerror or exc}"
            if exc.errno == errno.EADDRINUSE:
                raise errors.AlreadyExists(what) from None
            raise errors.BadOption(what) from None
        bound_host, bound_port = self._server.server_address[:2]
        name = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
        shown = f"[{name}]" if ":" in name else name
        self.url = f"http://{shown}:{bound_port}/metrics"
        """Where the metrics are served."""

    async def close(self) -> None:
        """Stop serving. The server's loop ends in a worker thread (it notices within half a
        second); scrapes in progress answer on their own threads."""
        await trio.to_thread.run_sync(self._server.shutdown)
        self._server.server_close()
