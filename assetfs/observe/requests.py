"""FUSE request statistics: counts, latency histograms and errors, by operation.

Fed by the handler wrapper of vfs/operations.py (one :meth:`RequestStats.finished` per
request, on the loop thread, a few microseconds); read by ``assetfs status`` (the counts)
and the Prometheus endpoint (observe/metrics.py: everything).
"""

from __future__ import annotations

import bisect
import collections
import errno
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the latency histogram's buckets; a last one is +Inf."""


@dataclass
class Latency:
    """One operation's latency histogram: ``buckets[i]`` counts requests that took at most
    ``LATENCY_BUCKETS[i]`` seconds and more than the bound before it (the last: the rest);
    ``total_s`` is the sum of all their durations, seconds."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_s: float = 0.0

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound, requests at most that long), ...]`` ending with ``(inf, all)``:
        the shape Prometheus histograms take."""
        running, out = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            running += count
            out.append((bound, running))
        return out


class RequestStats:
    """Requests answered by one mount."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        """Requests received, by operation name (``lookup``, ``read``...)."""
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        """Requests answered with an error, by (operation, errno name such as ``ENOENT``)."""
        self.latency: dict[str, Latency] = collections.defaultdict(Latency)
        """Operation -> how long its requests took (start of the handler to its answer)."""

    def started(self, operation: str) -> None:
        """Count a request of ``operation``."""
        self.counts[operation] += 1

    def finished(self, operation: str, seconds: float, error: int = 0) -> None:
        """A request of ``operation`` was answered after ``seconds``, with errno ``error``
        (0: success)."""
        latency = self.latency[operation]
        latency.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total_s += seconds
        if error:
            self.errors[operation, errno.errorcode.get(error, str(error))] += 1
