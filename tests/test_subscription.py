"""The event supervisor's restart backoff (assetfs/events/subscription.py), on trio's virtual
clock: minutes of failures and recoveries take milliseconds and no assertion depends on the
machine's speed."""

from __future__ import annotations

import math

import trio

from assetfs import errors
from assetfs.drivers.base import ChangeEvent, ChangeKind, Driver, Entry, EventSink, Kind
from assetfs.events.subscription import RESTART_BACKOFF, Subscription


class FlakySource(Driver):
    """A store whose event source fails at once ``quick_failures`` times, then stays up
    ``uptime`` seconds before failing, over and over; it records when each run started."""

    schemes = ("flaky",)

    def __init__(self, quick_failures: int, uptime: float) -> None:
        super().__init__("flaky:///", {})
        self.quick_failures = quick_failures
        self.uptime = uptime
        self.starts: list[float] = []

    async def stat(self, path: str) -> Entry:
        return Entry("", Kind.DIR)

    async def list(self, path: str) -> list[Entry]:
        return []

    async def run_events(self, sink: EventSink) -> None:
        self.starts.append(trio.current_time())
        if len(self.starts) > self.quick_failures:
            await trio.sleep(self.uptime)
        raise errors.Unavailable("connection to the server lost", url=self.url)


async def supervise(driver: FlakySource, runs: int) -> list[ChangeEvent]:
    """Run the supervisor until the source started ``runs`` times; the events it sent."""
    send, receive = trio.open_memory_channel[ChangeEvent](math.inf)
    subscription = Subscription(driver, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscription.run)
        while len(driver.starts) < runs:
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    events = []
    while True:
        try:
            events.append(receive.receive_nowait())
        except trio.WouldBlock:
            return events


async def test_a_recovered_source_restarts_quickly_after_earlier_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Seven failures in a row push the wait to 15-30 s; then the source stays up for ten
    minutes and fails again (a server restart): that restart waits as long as a first
    failure does (0.5-1 s), not 15-30 s."""
    driver = FlakySource(quick_failures=7, uptime=600.0)
    events = await supervise(driver, runs=10)
    gaps = [b - a for a, b in zip(driver.starts, driver.starts[1:], strict=False)]
    first_wait = RESTART_BACKOFF.base * 2
    assert first_wait * 0.5 <= gaps[0] <= first_wait
    assert gaps[6] >= RESTART_BACKOFF.cap / 2  # consecutive failures still back off
    for gap in gaps[7:]:  # each run after a long one ends with a fresh failure
        up_then_wait = gap - driver.uptime
        assert first_wait * 0.5 <= up_then_wait <= first_wait
    assert [e.kind for e in events] == [ChangeKind.RESYNC] * 9
    assert all(e.path == "/" for e in events)


async def test_failures_in_a_row_back_off_to_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A source that never comes up is retried at growing intervals, never beyond 30 s."""
    driver = FlakySource(quick_failures=20, uptime=0.0)
    await supervise(driver, runs=12)
    gaps = [b - a for a, b in zip(driver.starts, driver.starts[1:], strict=False)]
    assert all(gap <= RESTART_BACKOFF.cap for gap in gaps)
    assert all(gap >= RESTART_BACKOFF.cap / 2 for gap in gaps[5:])
