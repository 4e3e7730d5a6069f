"""The shared concurrency helpers: assetfs/bridge.py (threads to trio), assetfs/bounded.py
(N calls in flight) and assetfs/backoff.py (the one backoff formula)."""

from __future__ import annotations

import threading

import pytest
import trio

from assetfs import bounded, errors
from assetfs.backoff import Backoff
from assetfs.bridge import Handoff, call_and_wait, call_soon, run_and_wait


async def test_handoff_carries_a_value_or_an_error_from_another_thread() -> None:
    value: Handoff[int] = Handoff()
    threading.Thread(target=value.set_result, args=(42,)).start()
    assert await value.wait() == 42

    failure: Handoff[int] = Handoff()
    threading.Thread(target=failure.set_exception, args=(errors.NotFound("gone"),)).start()
    with pytest.raises(errors.NotFound):
        await failure.wait()


async def test_handoff_keeps_the_first_answer() -> None:
    answer: Handoff[str] = Handoff()
    answer.set_result("first")
    answer.set_exception(errors.Unavailable("late"))
    answer.set_result("second")
    assert await answer.wait() == "first"


async def test_call_soon_and_run_and_wait_run_in_the_trio_thread() -> None:
    token = trio.lowlevel.current_trio_token()
    trio_thread = threading.get_ident()
    seen: list[int] = []
    done = trio.Event()

    async def consume(item: int) -> None:
        assert threading.get_ident() == trio_thread
        seen.append(item)

    def on_trio_thread(item: int) -> int:
        assert threading.get_ident() == trio_thread
        return item * 10

    def library_thread() -> None:
        run_and_wait(token, consume, 1)
        seen.append(2)  # run_and_wait returned only once consume had run
        seen.append(call_and_wait(token, on_trio_thread, 3))
        call_soon(token, done.set)

    threading.Thread(target=library_thread).start()
    await done.wait()
    assert seen == [1, 2, 30]


def test_a_library_answering_after_the_run_ended_is_ignored() -> None:
    async def make() -> tuple[Handoff[int], trio.lowlevel.TrioToken]:
        return Handoff(), trio.lowlevel.current_trio_token()

    late, token = trio.run(make)
    late.set_result(1)  # the run is over: nothing raised
    call_soon(token, print)

    async def never() -> None:
        raise AssertionError("ran after the end")

    run_and_wait(token, never)
    with pytest.raises(trio.RunFinishedError):
        call_and_wait(token, print)


async def test_gather_keeps_order_and_the_limit() -> None:
    running = peak = 0
    started: list[int] = []

    async def job(index: int) -> int:
        nonlocal running, peak
        started.append(index)
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.01 * (5 - index % 5))
        running -= 1
        return index

    jobs = [lambda i=i: job(i) for i in range(20)]
    assert await bounded.gather(jobs, 3) == list(range(20))
    assert peak == 3
    assert started == list(range(20))  # jobs start in order, whatever order they end in


async def test_gather_raises_the_first_error_as_is_and_cancels_the_rest() -> None:
    finished: list[int] = []

    async def job(index: int) -> int:
        if index == 2:
            raise errors.PermissionDenied("no")
        await trio.sleep(10)
        finished.append(index)
        return index

    with trio.fail_after(5):
        with pytest.raises(errors.PermissionDenied):
            await bounded.gather([lambda i=i: job(i) for i in range(6)], 4)
    assert finished == []
    with pytest.raises(ValueError):
        await bounded.gather([], 0)


def test_backoff_steps_caps_and_jitter() -> None:
    plain = Backoff(base=0.05, cap=2.0, floor=1.0)
    assert [plain.delay(n) for n in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert plain.delay(10_000) == 2.0
    jittered = Backoff(base=0.5, cap=30.0, floor=0.5)
    for attempt in range(12):
        step = min(30.0, 0.5 * 2**attempt)
        assert step / 2 <= jittered.delay(attempt) <= step
    full = Backoff(base=0.2, cap=5.0)
    assert all(0 <= full.delay(3) <= 1.6 for _ in range(100))
    with pytest.raises(ValueError):
        Backoff(base=1.0, cap=0.5)
