"""Deadlines and retries for every remote call (docs/architecture.md, Concurrency rules).

A request handler never waits on the network without a deadline: :func:`call` runs one
driver call with a per-attempt timeout, retries :class:`~assetfs.errors.Unavailable` with
capped exponential backoff and full jitter, and gives up at an overall deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from . import errors
from .backoff import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")
PROBE = 1.0
"""Seconds one attempt may take while the breaker is open."""


class Breaker:
    """Fail fast while the store is known not to answer.

    After a call spent its whole deadline failing, calls within ``window`` seconds make a
    single probe attempt of at most ``PROBE`` seconds instead of retrying for a whole
    deadline: a reader of a file whose server went away gets EIO at once per request, not a
    request queue that drains at one deadline per page; and the first probe that succeeds
    (the server is back) closes the breaker, so the mount recovers by itself.
    """

    def __init__(self) -> None:
        self.down_until = 0.0

    @property
    def open(self) -> bool:
        """True while the store counts as down."""
        return trio.current_time() < self.down_until

    def trip(self, window: float) -> None:
        """The store just failed to answer in time."""
        self.down_until = trio.current_time() + window

    def reset(self) -> None:
        """The store answered."""
        self.down_until = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Timing of :func:`call`, all in seconds.

    ``attempt_timeout`` bounds one attempt, ``deadline`` the whole call including backoff;
    backoff before attempt n is ``uniform(0, min(cap, base * 2**n))`` (AWS "full jitter",
    :class:`~assetfs.backoff.Backoff` with ``floor=0``). ``attempts`` caps the number of
    attempts (None: as many as the deadline allows); a call that ran out of attempts
    before its deadline raises its last error without tripping the breaker.
    """

    attempt_timeout: float = 30.0
    deadline: float = 60.0
    base: float = 0.2
    cap: float = 5.0
    attempts: int | None = None
    breaker: Breaker = field(default_factory=Breaker, compare=False)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return Backoff(self.base, self.cap).delay(attempt)


async def call(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str = "remote call"
) -> T:
    """Run ``fn()`` under ``policy``.

    Returns its result; re-raises non-retryable :class:`~assetfs.errors.AssetFSError` at
    once; raises :class:`~assetfs.errors.TimedOut` when an attempt overruns and the
    deadline is spent, or the last :class:`~assetfs.errors.Unavailable` otherwise.
    """
    if policy.breaker.open:
        try:
            with trio.fail_after(min(PROBE, policy.attempt_timeout)):
                result = await fn()
        except trio.TooSlowError:
            raise errors.TimedOut(f"{what}: the store is not answering") from None
        policy.breaker.reset()
        return result
    attempt = 0
    last: errors.AssetFSError = errors.TimedOut(f"{what}: no answer in {policy.deadline:g}s")
    with trio.move_on_after(policy.deadline):
        while True:
            try:
                with trio.fail_after(policy.attempt_timeout):
                    result = await fn()
                policy.breaker.reset()
                return result
            except trio.TooSlowError:
                last = errors.TimedOut(f"{what}: no answer in {policy.attempt_timeout:g}s")
            except errors.Unavailable as exc:
                last = exc
            attempt += 1
            if policy.attempts is not None and attempt >= policy.attempts:
                raise last
            delay = policy.backoff(attempt - 1)
            log.debug("%s failed (%s); retry %d in %.2fs", what, last, attempt, delay)
            await trio.sleep(delay)
    policy.breaker.trip(min(policy.deadline, 10.0))
    raise last
