"""The one backoff formula of the project: capped exponential growth with jitter.

Every wait between two tries of the same thing (a driver call retried by the call layer, an
upload retried by the write-back, the event source restarted by its supervisor, a transfer
session polled until it is ready) is ``min(cap, base * 2**attempt)`` seconds scaled by a
random factor drawn uniformly from ``[floor, 1]``:

- ``floor=0``: "full jitter" (the wait is uniform in ``[0, min(cap, base * 2**attempt)]``),
  which spreads retries of many clients best;
- ``floor=0.5``: at least half the step (a restart should not come at once);
- ``floor=1``: no jitter, the plain doubling of a poll interval.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits, in seconds, before try number ``attempt`` (0-based) of something.

    ``base`` is the first step and ``cap`` the largest (seconds); ``floor`` in ``[0, 1]`` is
    the smallest jitter factor (see the module docstring). Raises ValueError for values out
    of those ranges.
    """

    base: float
    cap: float
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"bad backoff: base={self.base} cap={self.cap} floor={self.floor}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt`` (0 is the first retry's step, ``base``)."""
        step = self.cap if attempt >= 64 else min(self.cap, self.base * 2**attempt)
        if self.floor >= 1.0:
            return step
        return step * random.uniform(self.floor, 1.0)
