"""The OMERO.fs change feed: one ``MonitorServer`` monitor on the mounted root, kept alive
across server hangs and restarts, its events mapped to :class:`ChangeEvent` s.

Quirks of the real server it is shaped by (docs/omerofs.md): one Persistent monitor with
PathMode Follow and the event types listed one by one (``All`` delivers nothing); a stopped
monitor cannot be restarted, so a lost one is replaced by a new one and a ``RESYNC`` of ``/``
is sent (events for an unreachable client are dropped, not replayed); ``getMonitorState``
always fails, so liveness is a ping plus "is it still the same connection" (a restarted
server means a new connection and a forgotten monitor).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import Ice
import trio

from ... import errors
from ...backoff import Backoff
from ...bridge import run_and_wait
from ..base import ChangeEvent, ChangeKind, EventSink
from .entries import Versions
from .ice import IceSession, monitors

log = logging.getLogger(__name__)

RECREATE_BACKOFF = Backoff(base=0.2, cap=5.0, floor=1.0)
"""Waits between tries to (re)create the monitor while the MonitorServer does not answer."""


class MonitorKeeper:
    """Keeps one Persistent/Follow monitor on ``root`` (a server path) and forwards its
    events. ``rel`` maps a server fileId to a driver path (None outside the root), the events
    move ``versions`` on, and ``url`` names the store in errors.
    """

    def __init__(
        self, root: str, rel: Callable[[str], str | None], versions: Versions, url: str
    ) -> None:
        self.root = root
        self._rel = rel
        self._versions = versions
        self._url = url
        self._ids: list[str] = []
        self.monitor_id = ""
        """The id of the live monitor ("" while there is none)."""
        self.generation = 0
        """How many monitors were created (1 after the first start)."""

    async def run(
        self,
        session: IceSession,
        sink: EventSink,
        callback_host: str,
        check_interval: float,
        ready: trio.Event,
    ) -> None:
        """Keep the monitor alive and forward its events to ``sink`` until cancelled; set
        ``ready`` once the first monitor is live.

        Our ``MonitorClient`` servant lives on its own adapter (``tcp -h callback_host``);
        ``fsEventHappened`` runs on an Ice dispatch thread and waits until trio took the
        batch (so a slow consumer slows the server's callback, which then batches, as the
        real server does). Create -> CREATED, Modify -> UPDATED, Delete -> DELETED (a rename
        is Delete + Create). Every ``check_interval`` seconds the MonitorServer is pinged:

        - ping fails, later answers on the SAME connection (a hung server): the monitor is
          kept, ``RESYNC "/"`` is sent (callbacks to us may have failed meanwhile);
        - the connection is new (server restarted, monitor forgotten): a new monitor is created
          once the server answers and ``RESYNC "/"`` is sent, since missed events are never
          replayed. Older monitors are not destroyed then: if the server process is in fact
          the same one, the old monitor still covers the subfolders the new one cannot.

        On the way out every monitor made is stopped and destroyed (best effort, 2 s).
        """
        token = trio.lowlevel.current_trio_token()
        keeper = self

        class Client(monitors.MonitorClient):  # type: ignore[misc]  # an untyped Ice class
            def fsEventHappened(self, monitor_id: str, events: Any, current: Any = None) -> None:
                batch = [(str(e.fileId), e.type) for e in events]
                try:
                    run_and_wait(token, keeper._deliver, sink, monitor_id, batch)
                except Exception as exc:  # never let a Python error become an Ice exception
                    log.warning("dropping OMERO.fs events: %s", exc)

        adapter = session.communicator.createObjectAdapterWithEndpoints(
            f"assetfs-monitor-client-{uuid.uuid4().hex[:8]}", f"tcp -h {callback_host}"
        )
        identity = Ice.Identity(name=uuid.uuid4().hex, category="assetfs")
        client = monitors.MonitorClientPrx.uncheckedCast(adapter.add(Client(), identity))
        adapter.activate()
        try:
            await self._supervise(session, client, sink, check_interval, ready)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._drop_all(session)
            try:
                await trio.to_thread.run_sync(adapter.destroy)
            except Exception as exc:
                log.debug("adapter destroy: %s", exc)

    async def _create(self, session: IceSession, client: Any) -> str:
        monitor_id = str(
            await session.call(
                session.ms,
                "createMonitor",
                monitors.MonitorType.Persistent,
                # Listed one by one: WatchEventType.All delivers nothing in the real server.
                [
                    monitors.WatchEventType.Creation,
                    monitors.WatchEventType.Modification,
                    monitors.WatchEventType.Deletion,
                ],
                monitors.PathMode.Follow,  # Recurse misses new subfolders, Flat all of them
                self.root,
                [],  # whitelist: ignored by the server
                [],  # blacklist: ignored by the server
                0.0,  # timeout: only for Inactivity monitors (which do not work)
                0,  # blockSize 0: one callback per server poll (100 ms) with all events
                False,  # ignoreSysFiles: ignored by the server
                False,  # ignoreDirEvents: we want folder Create/Delete
                False,  # platformCheck
                client,
                url=self._url,
            )
        )
        self._ids.append(monitor_id)
        self.monitor_id = monitor_id
        await session.call(session.ms, "startMonitor", monitor_id, url=self._url)
        return monitor_id

    async def _supervise(
        self,
        session: IceSession,
        client: Any,
        sink: EventSink,
        check_interval: float,
        ready: trio.Event,
    ) -> None:
        failures = 0
        connection = ""
        lost = False  # events may have been missed since the last good check
        while True:
            try:
                await session.call(session.ms, "ice_ping", url=self._url)
                current = session.connection_name(session.ms)
                if current != connection or not self.monitor_id:
                    await self._create(session, client)
                    self.generation += 1
                    log.info("OMERO.fs monitor %s on %s", self.monitor_id, self.root)
                    ready.set()
                connection = current
            except errors.AssetFSError as exc:
                delay = RECREATE_BACKOFF.delay(failures)
                failures += 1
                log.debug("OMERO.fs monitor not (re)created: %s; retry in %.1fs", exc, delay)
                await trio.sleep(delay)
                continue
            failures = 0
            if lost:
                lost = False
                self._versions.all_changed()
                await sink.send(ChangeEvent(ChangeKind.RESYNC, "/"))
            while not lost:
                await trio.sleep(check_interval)
                try:
                    await session.call(session.ms, "ice_ping", url=self._url)
                except errors.AssetFSError as exc:
                    log.warning("OMERO.fs monitor server lost (%s)", exc)
                    lost = True
                else:
                    if session.connection_name(session.ms) != connection:
                        log.warning("OMERO.fs monitor server reconnected: new monitor")
                        lost = True

    async def _drop_all(self, session: IceSession) -> None:
        """Stop and destroy every monitor we created, best effort (servers may be gone)."""
        self.monitor_id = ""
        while self._ids:
            monitor_id = self._ids.pop()
            for op in ("stopMonitor", "destroyMonitor"):
                try:
                    await session.call(session.ms, op, monitor_id, url=self._url)
                except errors.AssetFSError as exc:
                    log.debug("%s %s: %s", op, monitor_id, exc)
                    break

    async def _deliver(
        self, sink: EventSink, monitor_id: str, batch: list[tuple[str, Any]]
    ) -> None:
        """Map one ``fsEventHappened`` batch to ChangeEvents (runs in trio)."""
        if monitor_id not in self._ids:
            log.debug("ignoring %d events of unknown monitor %s", len(batch), monitor_id)
            return
        kinds: dict[Any, ChangeKind] = {
            monitors.EventType.Create: ChangeKind.CREATED,
            monitors.EventType.Modify: ChangeKind.UPDATED,
            monitors.EventType.Delete: ChangeKind.DELETED,
        }
        for file_id, event_type in batch:
            kind = kinds.get(event_type)
            path = self._rel(file_id)
            if kind is None or path is None:
                log.debug("OMERO.fs event ignored: %s %s", event_type, file_id)
                continue
            self._versions.changed(path)
            try:
                await sink.send(ChangeEvent(kind, path))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
