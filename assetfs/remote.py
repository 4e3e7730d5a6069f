"""The driver call layer: the one way the VFS, the cache and write-back reach a store.

Every driver call made on behalf of a request passes through :class:`Remote`, which runs it
under the mount's :class:`~assetfs.retry.RetryPolicy` (a deadline of ``-o timeout``
seconds, capped exponential backoff on :class:`~assetfs.errors.Unavailable`, the breaker
that fails fast while the store is down) and logs a call that fails for want of the store
once, with the store URL; the FUSE layer then does not log it again. So no request waits on
a store without a deadline: a hung server costs a request ``timeout`` seconds and EIO or
ETIMEDOUT, never a pinned kernel lock (docs/architecture.md, Concurrency rules).

Retries: the policy retries an attempt that raised Unavailable; an attempt that overran is
retried only while the deadline leaves room, which the mount's policy (attempt timeout =
deadline) never does, so a mutation that may have reached the store is not sent twice.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import trio

from . import errors, retry
from .drivers.base import Capabilities, Driver, Entry, Kind, LocalRange, ReadMode

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_UPLOAD_RATE = 1 << 20
"""Bytes per second an upload is allowed at least: its deadline is ``timeout`` plus
``size / MIN_UPLOAD_RATE`` seconds (a 1 GiB upload may take 17 minutes past it)."""


class Remote:
    """A driver behind deadlines, retries and one log line per failure.

    ``policy`` is the mount's; :meth:`write` stretches it by the upload's size. The
    read-only properties (``capabilities``, ``read_mode``, ``lazy_xattrs``) and the no-I/O
    hooks (``describe``, ``check_create``, ``check_write``, ``watch``, ``unwatch``) pass
    straight through.
    """

    def __init__(self, driver: Driver, policy: retry.RetryPolicy) -> None:
        self._driver = driver
        self.policy = policy
        self.calls: collections.Counter[str] = collections.Counter()
        """Requests sent to the store by kind (``stat``, ``list``, ``read``, ``upload``,
        ``download`` for a stream...), each attempt of a retried call counted: what
        ``assetfs status`` and the metrics report as store requests."""

    # --- no I/O -----------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        """What the store can do."""
        return self._driver.capabilities

    @property
    def read_mode(self) -> ReadMode:
        """How content is fetched from the store."""
        return self._driver.capabilities.read_mode

    @property
    def lazy_xattrs(self) -> tuple[str, ...]:
        """Attributes the driver computes on demand (:meth:`xattr`)."""
        return self._driver.lazy_xattrs

    def describe(self, path: str) -> str:
        """The store URL of a driver path."""
        return self._driver.describe(path)

    def check_create(self, path: str, kind: Kind) -> None:
        """Raise when the store cannot hold a new ``kind`` at ``path`` (no I/O)."""
        self._driver.check_create(path, kind)

    def check_write(self, path: str) -> None:
        """Raise when new content can never be stored at file ``path`` (no I/O)."""
        self._driver.check_write(path)

    def uploads_last(self, path: str) -> bool:
        """Whether ``path`` is a control file uploaded after its siblings (no I/O)."""
        return self._driver.uploads_last(path)

    def appends_only(self, path: str) -> bool:
        """Whether the content of ``path`` only grows (no I/O)."""
        return self._driver.appends_only(path)

    def status(self) -> dict[str, object]:
        """The driver's state for ``assetfs status`` (no I/O)."""
        return self._driver.status()

    def watch(self, folder: str) -> None:
        """Report changes to the children of ``folder`` from now on."""
        self._driver.watch(folder)

    def unwatch(self, folder: str) -> None:
        """Stop reporting changes under ``folder``."""
        self._driver.unwatch(folder)

    @property
    def watched(self) -> list[str]:
        """The folders being watched."""
        return self._driver.watched

    # --- calls ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect the driver: checks the URL, the credentials and the root (raises
        NotFound, PermissionDenied, Unavailable, TimedOut...)."""
        await self._call("connect", "/", self._driver.connect)

    async def _call(self, what: str, path: str, fn: Callable[[], Awaitable[T]],
                    policy: retry.RetryPolicy | None = None) -> T:
        """``fn()`` under ``policy`` (the mount's by default). A failure for want of the
        store (Unavailable, TimedOut) is logged here once with the URL and marked
        ``logged``; other errors (NotFound...) are answers, not failures."""
        label = f"{what} of {self.describe(path)}"

        async def attempt() -> T:
            self.calls[what] += 1
            return await fn()

        try:
            return await retry.call(attempt, policy or self.policy, label)
        except errors.Unavailable as exc:
            text = str(exc)
            log.warning("%s", text if text.startswith(label) else f"{label}: {text}")
            exc.logged = True
            raise

    def _policy(self, once: bool) -> retry.RetryPolicy | None:
        return dataclasses.replace(self.policy, attempts=1) if once else None

    async def stat(self, path: str, once: bool = False) -> Entry:
        """The store's entry at ``path``. Raises NotFound, Unavailable, TimedOut.
        ``once``: a single attempt, no retries (the caller has a stale answer to give).
        An entry the driver knows without I/O (``Driver.known_entry``) is taken without the
        deadline and retry of a remote call."""
        known = self._driver.known_entry(path)
        if known is not None:
            return known
        return await self._call("stat", path, lambda: self._driver.stat(path),
                                self._policy(once))

    async def list(self, path: str, once: bool = False) -> list[Entry]:
        """The children of folder ``path``. Raises NotFound, NotADirectory, Unavailable.
        ``once``: a single attempt, no retries (the caller has a stale answer to give)."""
        return await self._call("list", path, lambda: self._driver.list(path),
                                self._policy(once))

    async def read_into(self, path: str, offset: int, size: int, fd: int) -> int:
        """Bytes of ``path`` at ``offset`` into local file ``fd`` (ReadMode.RANGED)."""
        return await self._call("read", path,
                                lambda: self._driver.read_into(path, offset, size, fd))

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``path`` at ``offset`` (ReadMode.RANGED)."""
        return await self._call("read", path, lambda: self._driver.read(path, offset, size))

    async def local_range(self, path: str) -> LocalRange:
        """Where ``path``'s content lies on local disk (ReadMode.LOCAL)."""
        return await self._call("local copy", path, lambda: self._driver.local_range(path))

    def known_local_range(self, path: str) -> LocalRange | None:
        """:meth:`local_range` when the driver knows it without I/O (no deadline needed),
        else None."""
        return self._driver.known_local_range(path)

    async def open_stream(self, path: str) -> AsyncIterator[bytes | memoryview]:
        """The whole content of ``path`` from offset 0 (ReadMode.STREAM). The deadline is a
        stall timeout: each chunk must come within the policy's attempt timeout, however
        long the whole file takes; past it, TimedOut."""
        stall = self.policy.attempt_timeout
        self.calls["download"] += 1
        stream = self._driver.open_stream(path)
        try:
            while True:
                with trio.move_on_after(stall) as scope:
                    try:
                        chunk = await stream.__anext__()
                    except StopAsyncIteration:
                        return
                if scope.cancelled_caught:
                    exc = errors.TimedOut(f"no data for {stall:g}s", url=self.describe(path))
                    log.warning("download of %s stalled: %s", self.describe(path), exc)
                    exc.logged = True
                    raise exc
                yield chunk
        finally:
            await stream.aclose()

    def upload_policy(self, size: int) -> retry.RetryPolicy:
        """The mount's policy with a deadline stretched for ``size`` bytes
        (:data:`MIN_UPLOAD_RATE`) and a breaker of its own: a slow upload does not mark the
        store down for the requests of others."""
        limit = self.policy.attempt_timeout + size / MIN_UPLOAD_RATE
        return dataclasses.replace(self.policy, attempt_timeout=limit, deadline=limit,
                                   breaker=retry.Breaker())

    async def write(self, path: str, source: str, size: int) -> Entry:
        """Upload local file ``source`` (``size`` bytes) as ``path``; the new entry."""
        return await self._call("upload", path,
                                lambda: self._driver.write(path, source, size),
                                self.upload_policy(size))

    async def mkdir(self, path: str) -> Entry:
        """Create folder ``path``. Raises AlreadyExists, NotFound, ReadOnly..."""
        return await self._call("mkdir", path, lambda: self._driver.mkdir(path))

    async def remove(self, path: str, kind: Kind) -> None:
        """Delete the file or empty folder at ``path``."""
        await self._call("remove", path, lambda: self._driver.remove(path, kind))

    async def rename(self, old: str, new: str) -> None:
        """Move ``old`` to ``new`` on the store."""
        await self._call("rename", old, lambda: self._driver.rename(old, new))

    async def control(self, path: str, action: str, value: bytes) -> None:
        """Run store action ``action`` on ``path`` (an xattr write)."""
        await self._call(action, path, lambda: self._driver.control(path, action, value))

    async def xattr(self, path: str, key: str) -> bytes | None:
        """Lazily computed attribute ``key`` of ``path``, or None."""
        return await self._call(key, path, lambda: self._driver.xattr(path, key))
