"""The change subscription of one mount: runs the driver's event source and keeps it alive.

A push-capable driver delivers events from its library's threads through the trio token; a
polling driver re-lists watched folders (drivers/base.py). Either way the events go into one
trio memory channel read by the invalidator. If the source fails (server restart, lost
connection) it is restarted with capped exponential backoff, and a ``RESYNC`` event tells
the invalidator to re-validate everything cached, because events were lost meanwhile.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import trio

from .. import errors
from ..drivers.base import ChangeEvent, ChangeKind, Driver

log = logging.getLogger(__name__)


@dataclass
class SubscriptionState:
    """What ``assetfs status`` shows: ``state`` is "starting", "live", "polling" or
    "reconnecting"; ``last_event`` a unix time or None; ``events`` a count."""

    state: str = "starting"
    restarts: int = 0
    last_error: str | None = None


class Subscription:
    """Supervises ``driver.run_events`` (the invalidator counts the events themselves)."""

    def __init__(self, driver: Driver, sink: trio.MemorySendChannel[ChangeEvent]) -> None:
        self.driver = driver
        self.sink = sink
        self.status = SubscriptionState()

    async def run(self) -> None:
        """Run the event source until cancelled, restarting it on failure."""
        attempt = 0
        while True:
            self.status.state = "live" if self.driver.capabilities.push_events else "polling"
            try:
                await self.driver.run_events(self.sink.clone())
                return
            except (errors.AssetFSError, OSError) as exc:
                attempt += 1
                self.status.restarts += 1
                self.status.state = "reconnecting"
                self.status.last_error = str(exc)
                log.warning("event subscription lost (%s); reconnecting", exc)
                await trio.sleep(random.uniform(0.5, 1.0) * min(30.0, 0.5 * 2**attempt))
                await self.sink.send(ChangeEvent(ChangeKind.RESYNC, "/"))
