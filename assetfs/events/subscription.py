"""The change subscription of one mount: runs the driver's event source and keeps it alive.

A push-capable driver delivers events from its library's threads through the trio token; a
polling driver re-lists watched folders (drivers/base.py). Either way the events go into one
trio memory channel read by the invalidator. If the source fails (server restart, lost
connection) it is restarted with capped exponential backoff, and a ``RESYNC`` event tells
the invalidator to re-validate everything cached, because events were lost meanwhile. The
backoff counts consecutive failures only: a source that stayed up for ``healthy_after``
seconds recovered, and its next failure waits as little as the first one did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from .. import errors
from ..backoff import Backoff
from ..drivers.base import ChangeEvent, ChangeKind, Driver

log = logging.getLogger(__name__)


@dataclass
class SubscriptionState:
    """What ``assetfs status`` shows: ``state`` is "starting", "live", "polling" or
    "reconnecting"; ``last_event`` a unix time or None; ``events`` a count."""

    state: str = "starting"
    restarts: int = 0
    last_error: str | None = None


RESTART_BACKOFF = Backoff(base=0.5, cap=30.0, floor=0.5)
"""Waits before restarting a failed event source: 0.5-1 s after a first failure, doubling
per consecutive failure up to 15-30 s."""


class Subscription:
    """Supervises ``driver.run_events`` (the invalidator counts the events themselves).

    ``healthy_after`` (seconds, default the backoff's cap) is how long a run of the source
    must last to count as recovered, which resets the count of consecutive failures.
    """

    def __init__(
        self,
        driver: Driver,
        sink: trio.MemorySendChannel[ChangeEvent],
        healthy_after: float = RESTART_BACKOFF.cap,
    ) -> None:
        self.driver = driver
        self.sink = sink
        self.healthy_after = healthy_after
        self.status = SubscriptionState()

    async def run(self) -> None:
        """Run the event source until cancelled, restarting it on failure."""
        failures = 0
        while True:
            self.status.state = "live" if self.driver.capabilities.push_events else "polling"
            started = trio.current_time()
            try:
                await self.driver.run_events(self.sink.clone())
                return
            except (errors.AssetFSError, OSError) as exc:
                if trio.current_time() - started >= self.healthy_after:
                    failures = 0
                failures += 1
                self.status.restarts += 1
                self.status.state = "reconnecting"
                self.status.last_error = str(exc)
                log.warning("event subscription lost (%s); reconnecting", exc)
                await trio.sleep(RESTART_BACKOFF.delay(failures))
                await self.sink.send(ChangeEvent(ChangeKind.RESYNC, "/"))
