"""The one way into the trio thread from another thread.

Libraries that answer on threads of their own (omni.client's callbacks, Ice's client and
dispatch threads, the cache journal's SQLite thread) hand their results to the daemon's one
trio run through its token, and only this way: nothing else in assetfs touches
``trio.from_thread`` or ``TrioToken.run_sync_soon``.

- :class:`Handoff`: one result, awaited by the trio task that started the work;
- :func:`call_soon`: run a plain function on the trio thread, not waiting for it;
- :func:`run_and_wait`: run an async function in trio and block the library's thread until
  it is done (a slow consumer then slows the library's callbacks: back-pressure);
- :func:`call_and_wait`: run a plain function on the trio thread and hand its result to the
  waiting thread (a metrics scrape sampling the mount's state).

A library that answers after the trio run ended (the daemon is stopping) is ignored: there
is nobody left to tell.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


class Handoff(Generic[T]):
    """One result handed from any thread to the trio task awaiting :meth:`wait`.

    Make it on the trio thread (it keeps that run's token). The first of :meth:`set`,
    :meth:`set_result` or :meth:`set_exception` wins, from any thread; later ones are
    ignored (a library that calls back twice).
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._lock = threading.Lock()
        self._outcome: outcome.Outcome[T] | None = None

    def set(self, result: outcome.Outcome[T]) -> None:
        """Deliver ``result`` (an :mod:`outcome` value or error). Never blocks, never raises."""
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome = result
        call_soon(self._token, self._done.set)

    def set_result(self, value: T) -> None:
        """Deliver ``value``: :meth:`wait` returns it."""
        self.set(outcome.Value(value))

    def set_exception(self, exc: BaseException) -> None:
        """Deliver ``exc``: :meth:`wait` raises it."""
        self.set(outcome.Error(exc))

    async def wait(self) -> T:
        """The delivered value, or raise the delivered exception. Cancellable (the result
        is then dropped when it comes); shield it for work that must be waited for."""
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()


def call_soon(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` on the trio thread of ``token`` soon, in call order; from any
    thread, without blocking. Dropped when that trio run has ended."""
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(fn, *args)


def call_and_wait(token: trio.lowlevel.TrioToken, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on the trio thread of ``token`` and return its result to the
    calling (non-trio) thread, which blocks meanwhile; raises what ``fn`` raises, and
    ``trio.RunFinishedError`` when that trio run has ended."""
    return trio.from_thread.run_sync(fn, *args, trio_token=token)


def run_and_wait(
    token: trio.lowlevel.TrioToken, fn: Callable[..., Awaitable[object]], *args: Any
) -> None:
    """Run ``await fn(*args)`` in the trio run of ``token`` and block the calling (non-trio)
    thread until it returns. Returns at once when the run has ended or is cancelling its
    tasks; raises what ``fn`` raises otherwise."""
    with contextlib.suppress(trio.RunFinishedError, trio.Cancelled):
        trio.from_thread.run(fn, *args, trio_token=token)
