"""The event-loop watch (assetfs/loopwatch.py), without FUSE: a step that blocks the loop is
counted, named and logged with the blocking call; steps that give the loop back are not."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from assetfs.loopwatch import OPERATION, LoopWatch


async def test_a_blocking_step_is_counted_named_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = LoopWatch(threshold=0.05)
    caplog.set_level(logging.WARNING, logger="assetfs.loopwatch")

    async def blocker() -> None:
        OPERATION.set("unlink")  # what vfs/operations.py does for each request
        await trio.sleep(0.01)
        time.sleep(0.12)  # a synchronous call made on the loop

    async def polite() -> None:
        for _ in range(20):
            await trio.sleep(0.005)

    trio.lowlevel.add_instrument(watch)
    watch.sample_stacks()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(polite, name="polite")
            nursery.start_soon(blocker, name="blocker")
    finally:
        trio.lowlevel.remove_instrument(watch)
        watch.stop_sampling()
    assert watch.longest_task == "blocker (unlink)" and watch.longest >= 0.12
    assert watch.stalls >= 1
    assert "blocked 0.1" in caplog.text and "by task blocker (unlink)" in caplog.text
    assert "time.sleep(0.12)" in caplog.text, "the log shows the blocking call"
    status = watch.status()
    assert status["longest_task"] == "blocker (unlink)" and status["stall_s"] == 0.05
