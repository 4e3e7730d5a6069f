"""Event-loop stalls: how long one trio task step ran without giving the loop back.

A mount answers every FUSE request on one trio run (docs/architecture.md, Concurrency rules), so one
step that blocks (a disk sync, a synchronous library call, a long loop over the cache)
stalls every request of the mount, ``ls`` and cached reads included. :class:`LoopWatch` times
each step (wall clock, so a blocked system call counts), keeps the longest one and counts
those over a threshold, logs them (at most one line a second) with the loop thread's stack
as a sampler thread saw it, and ``assetfs status`` shows them. It was written after the cache
journal's commits were found syncing the disk on the loop (0.09-0.11 s per upload,
cache/journal.py), and then found three more: a cache file's last close after its flush, the
deletion of a big cache file just written, and omni.client request starts waiting behind a
big copy (cache/blocks.py, drivers/nucleus.py).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
import traceback

import trio

log = logging.getLogger(__name__)

STALL = 0.1
"""Seconds a step may run before it counts as a stall (a file manager's user notices ~0.1 s)."""

OPERATION: contextvars.ContextVar[str] = contextvars.ContextVar("assetfs_operation", default="")
"""The FUSE operation a task answers or last answered (set by vfs/operations.py at the start
of each request and left set: a step that blocks inside a handler often ends after it),
named with its stalls: pyfuse3's worker tasks all look alike."""


class LoopWatch(trio.abc.Instrument):
    """A trio instrument timing task steps; install it with
    ``trio.lowlevel.add_instrument``. A step preempted by other processes on a busy machine
    also counts: the daemon was not answering then either."""

    def __init__(self, threshold: float = STALL) -> None:
        self.threshold = threshold
        """Seconds from which a step counts as a stall."""
        self.stalls = 0
        """Steps that ran ``threshold`` seconds or longer."""
        self.longest = 0.0
        """The longest step so far (seconds) and the name of its task."""
        self.longest_task = ""
        self._step_started: float | None = None
        """When the running step began (None: it began before the watch was installed)."""
        self._logged = -1.0
        self._loop_thread: int | None = None
        self._stop = threading.Event()
        self._stack: tuple[float | None, str] = (None, "")
        """(start of the step the sampler caught stalled, where the loop thread was)."""

    def sample_stacks(self) -> None:
        """Start a thread that looks at the loop every ``threshold / 2`` seconds and, when a
        step has run past the threshold, records the loop thread's Python stack for the log
        line: the blocking call itself, which the step's task name alone does not tell.
        Call from the loop thread."""
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        threading.Thread(target=self._sample, name="assetfs-loopwatch", daemon=True).start()

    def stop_sampling(self) -> None:
        """End the sampler thread."""
        self._stop.set()

    def _sample(self) -> None:
        while not self._stop.wait(self.threshold / 2):
            started = self._step_started
            if (started is None or self._stack[0] == started
                    or time.perf_counter() - started < self.threshold):
                continue
            frame = sys._current_frames().get(self._loop_thread or 0)
            if frame is not None:
                self._stack = (started, "".join(traceback.format_stack(frame, limit=8)))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._step_started is None:
            return
        started, self._step_started = self._step_started, None
        now = time.perf_counter()
        took = now - started
        if took < self.threshold and took <= self.longest:
            return
        operation = task.context.get(OPERATION)
        name = f"{task.name} ({operation})" if operation else task.name
        if took > self.longest:
            self.longest, self.longest_task = took, name
        if took >= self.threshold:
            self.stalls += 1
            if now - self._logged >= 1.0:
                self._logged = now
                caught, stack = self._stack
                where = f"; it was in:\n{stack.rstrip()}" if caught == started else ""
                log.warning("the event loop was blocked %.3f s by task %s (every request of "
                            "the mount waited)%s", took, name, where)

    def status(self) -> dict[str, float | int | str]:
        """``longest_step_s``, ``longest_task``, ``stalls`` and ``stall_s`` (the threshold)."""
        return {"longest_step_s": round(self.longest, 4), "longest_task": self.longest_task,
                "stalls": self.stalls, "stall_s": self.threshold}
