"""Bounded concurrency: run many small remote calls with at most N in flight.

Listings that cost one call per child (OMERO.fs ``getStats``, vSphere item and library
lookups) and reads split into blocks (OMERO.fs ``readBlock``) all go through :func:`gather`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

T = TypeVar("T")


async def gather(jobs: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run every ``jobs[i]()``, at most ``limit`` at once, and return their results in the
    order of ``jobs``. Jobs start in that order (``limit`` workers take the next one as they
    get free), so a job that checks shared state first (an end of file already found) sees
    what the jobs before it learned.

    The first job to raise cancels the others and its exception is raised as it is (not
    wrapped in an ExceptionGroup), so callers catch the project's error types as usual. A
    single job runs in the calling task. Raises ValueError when ``limit`` is below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if len(jobs) <= 1:
        return [await job() for job in jobs]
    results: list[Any] = [None] * len(jobs)
    waiting = iter(range(len(jobs)))
    failure: list[Exception] = []

    async def worker(cancel: trio.CancelScope) -> None:
        for index in waiting:
            try:
                results[index] = await jobs[index]()
            except Exception as exc:
                if not failure:
                    failure.append(exc)
                cancel.cancel()
                return

    async with trio.open_nursery() as nursery:
        for _ in range(min(limit, len(jobs))):
            nursery.start_soon(worker, nursery.cancel_scope)
    if failure:
        raise failure[0]
    return results
