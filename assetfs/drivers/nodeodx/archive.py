"""A task's result archive (``all.zip``), fetched whole, once, into a local spool file.

The node ignores HTTP Range (docs/backends/nodeodx.md, The result archive): a member can
only be had by fetching the whole archive, whose index (the zip central directory) is at
its end. So the first read of ``all.zip`` or of anything under ``results/`` starts one
download per task into ``<spool>/<uuid>.zip``; readers of ``all.zip`` follow it as it
grows (bytes already received answer at once); listings and members of ``results/``
wait until it is complete, then are served from the spool file with :mod:`zipfile`.

While it arrives, a worker thread inflates the members in archive order into files of
their own (:mod:`.unzip`): a member's size is known once its local header has arrived
(or, for a member with a data descriptor, once it is extracted), and its reader follows
the extraction; so the first ``cat`` of a member overlaps the download, and once the
archive is in, every member is a local file. Members the extractor leaves alone are read
with :mod:`zipfile` from the complete archive. The block cache reads an inflated member, or
the complete archive, in place (:meth:`Archives.local_copy`, the driver's
``known_local_range``), and the kernel reads it itself for a read-only open (FUSE
passthrough): no byte of it passes through the daemon.

The download runs in a trio system task, so it outlives the reader that started it (a
``cat`` interrupted halfway does not waste what arrived); :meth:`Archives.close` stops it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import logging
import os
import posixpath
import shutil
import threading
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from ... import errors
from ...bridge import call_soon
from .client import NodeClient, node_error
from .unzip import Extracted, Growing, extract

log = logging.getLogger(__name__)
CHUNK = 1 << 20
"""Bytes per piece handed to readers of a member (and per spool-file write)."""


@dataclass(frozen=True)
class Member:
    """One file of an archive: its path inside it, size (bytes), mtime (ns), CRC-32."""

    name: str
    size: int
    mtime_ns: int
    crc: int


@dataclass
class Download:
    """The spool of one task's archive: ``received`` bytes so far of ``size`` (None until
    the reply's headers came), ``complete`` once all arrived; ``error`` of the last attempt."""

    uuid: str
    path: Path
    size: int | None = None
    received: int = 0
    complete: bool = False
    running: bool = False
    error: errors.AssetFSError | None = None
    members: dict[str, Member] | None = None
    arrived: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None
    received_all: bool = False
    """No more bytes will be written to the spool (done or failed): the extractor's end."""
    extracted: dict[str, Extracted] = field(default_factory=dict)
    """Members found by the extractor, by path."""
    stop: threading.Event = field(default_factory=threading.Event)
    folder: Path | None = None
    """Where the current attempt inflates the members (``<uuid>.<attempt>.d``)."""

    def signal(self) -> None:
        """Wake everyone waiting for progress."""
        self.arrived.set()
        self.arrived = trio.Event()


def read_index(path: Path) -> dict[str, Member]:
    """The members (files only) of the zip file at ``path``, by name. Raises
    AssetFSError for a damaged archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise errors.AssetFSError(f"the result archive is damaged: {exc}") from exc
    members: dict[str, Member] = {}
    for info in infos:
        name = posixpath.normpath(info.filename.lstrip("/"))
        if info.is_dir() or name.startswith("..") or name == ".":
            continue
        try:
            when = dt.datetime(*info.date_time, tzinfo=dt.UTC)
            mtime_ns = int(when.timestamp()) * 1_000_000_000
        except ValueError:
            mtime_ns = 0
        members[name] = Member(name, info.file_size, mtime_ns, info.CRC)
    return members


class Archives:
    """The downloads of one mount, spooled in ``spool`` (a folder the driver owns)."""

    def __init__(self, client: NodeClient, spool: Path) -> None:
        self.client = client
        self.spool = spool
        self.downloads: dict[str, Download] = {}
        self._attempts = itertools.count()

    def status(self) -> dict[str, dict[str, int | bool | None]]:
        """Per task uuid: ``received`` and ``size`` in bytes, ``complete`` (assetfs status)."""
        return {u: {"received": d.received, "size": d.size, "complete": d.complete}
                for u, d in self.downloads.items()}

    def forget(self, uuid: str) -> None:
        """Drop the spool of ``uuid`` (task removed, restarted, or its results gone).
        Files already read stay in the block cache."""
        download = self.downloads.pop(uuid, None)
        if download is None:
            return
        download.stop.set()
        if download.scope is not None:
            download.scope.cancel()
        with contextlib.suppress(OSError):
            download.path.unlink()
        if download.folder is not None:
            shutil.rmtree(download.folder, ignore_errors=True)

    def close(self) -> None:
        """Stop every download and delete the spool files."""
        for uuid in list(self.downloads):
            self.forget(uuid)

    def local_copy(self, uuid: str, name: str | None) -> Path | None:
        """The local file holding member ``name`` of the archive of ``uuid`` once it is
        inflated whole and checked (its CRC-32 and size), or (``name`` None) the archive
        itself once its download is complete; else None. No I/O. Such a file is never
        written again: a new attempt or a new archive inflates into new files
        (:meth:`forget` deletes the old ones, which readers holding them open keep)."""
        download = self.downloads.get(uuid)
        if download is None:
            return None
        if name is None:
            return download.path if download.complete else None
        member = download.extracted.get(name)
        if member is None or not member.done or member.failed:
            return None
        return member.path

    def _get(self, uuid: str) -> Download:
        download = self.downloads.get(uuid)
        if download is None:
            download = self.downloads[uuid] = Download(uuid, self.spool / f"{uuid}.zip")
        return download

    def _start(self, download: Download, where: str) -> None:
        if download.running or download.complete:
            return
        download.running, download.error = True, None
        trio.lowlevel.spawn_system_task(self._fetch, download, where)

    async def _fetch(self, download: Download, where: str) -> None:
        """The download itself (a system task: it must not raise)."""
        endpoint = f"/task/{download.uuid}/download/all.zip"
        what = f"download of all.zip of task {download.uuid}"
        with trio.CancelScope() as scope:
            download.scope = scope
            download.received, download.received_all = 0, False
            download.extracted, download.stop = {}, threading.Event()
            try:
                fd = os.open(download.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                failure: list[errors.AssetFSError | OSError] = []
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._extract, download)
                        try:
                            await self._receive(download, endpoint, what, where, fd)
                        except (errors.AssetFSError, OSError) as exc:
                            failure.append(exc)  # raised below, not as an exception group
                        finally:
                            download.received_all = True
                finally:
                    os.close(fd)
                if failure:
                    raise failure[0]
                download.members = await trio.to_thread.run_sync(read_index, download.path)
                for name, extracted in download.extracted.items():
                    member = download.members.get(name)
                    if member is None or member.size != extracted.size:
                        extracted.failed = True
                download.complete = True
                log.info("downloaded all.zip of task %s (%d bytes)", download.uuid,
                         download.received)
            except errors.AssetFSError as exc:
                download.error = exc
                log.warning("%s", exc)
            except OSError as exc:
                download.error = (errors.NoSpace(str(exc)) if exc.errno == errno.ENOSPC
                                  else errors.AssetFSError(f"{what}: {exc}"))
                log.warning("%s", download.error)
        download.running, download.scope = False, None
        if scope.cancelled_caught and download.error is None:
            download.error = errors.Unavailable(f"{what}: stopped")
        download.signal()

    async def _extract(self, download: Download) -> None:
        """Run :func:`.unzip.extract` over the spool as it grows, in a worker thread."""
        # a folder of its own per attempt: a file inflated once is never written again
        earlier = download.folder
        folder = download.folder = self.spool / f"{download.uuid}.{next(self._attempts)}.d"
        token = trio.lowlevel.current_trio_token()
        stop = download.stop

        def found(member: Extracted) -> None:
            download.extracted.setdefault(member.name, member)

        def progress() -> None:
            call_soon(token, download.signal)

        def run() -> None:
            if earlier is not None:  # its files may be open (read in place): kept till closed
                shutil.rmtree(earlier, ignore_errors=True)
            folder.mkdir()
            feed = Growing(download.path, lambda: download.received,
                           lambda: download.received_all, stop)
            try:
                extract(feed, folder, found, progress)
            finally:
                feed.close()

        try:
            await trio.to_thread.run_sync(run, abandon_on_cancel=True)
        except OSError as exc:
            log.debug("extraction of all.zip of task %s stopped: %s", download.uuid, exc)
        finally:
            stop.set()
            for member in download.extracted.values():
                member.failed = member.failed or not member.done  # left to zipfile
            download.signal()

    async def _receive(self, download: Download, endpoint: str, what: str, where: str,
                       fd: int) -> None:
        http = self.client.http
        try:
            async with http.stream("GET", endpoint, params=self.client.params()) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise node_error(resp, what, where)
                if not resp.headers.get("content-type", "").startswith("application/zip"):
                    await resp.aread()
                    try:
                        text = str(resp.json().get("error") or "not an archive")
                    except (ValueError, AttributeError):
                        text = "not an archive"
                    raise node_error(text, what, where)
                length = resp.headers.get("content-length")
                download.size = int(length) if length and length.isdigit() else None
                async for chunk in resp.aiter_raw(CHUNK):
                    os.pwrite(fd, chunk, download.received)
                    download.received += len(chunk)
                    download.signal()
        except httpx.HTTPError as exc:
            raise node_error(exc, what, where) from None
        if download.size is not None and download.received != download.size:
            raise errors.Unavailable(
                f"{what}: cut short at {download.received} of {download.size} bytes", url=where)

    async def _wait(self, download: Download, where: str, until: int | None) -> None:
        """Wait until ``until`` bytes (None: all) have arrived, (re)starting the download
        when none runs. Raises the download's error."""
        joined = False
        while not download.complete and (until is None or download.received < until):
            if not download.running:
                if joined:  # the attempt this call started or joined ended short
                    raise download.error or errors.Unavailable("download stopped", url=where)
                self._start(download, where)
            joined = True
            await download.arrived.wait()

    async def members(self, uuid: str, where: str) -> dict[str, Member]:
        """The archive's members by path (waits for the whole download)."""
        download = self._get(uuid)
        await self._wait(download, where, None)
        assert download.members is not None
        return download.members

    async def stream_archive(self, uuid: str, where: str) -> AsyncIterator[bytes]:
        """The archive's bytes from offset 0, following the download as it arrives."""
        download = self._get(uuid)
        offset = 0
        while True:
            await self._wait(download, where, offset + 1)
            if download.received <= offset:
                if download.complete:
                    return
                continue
            end = download.received
            with open(download.path, "rb") as stream:
                stream.seek(offset)
                while offset < end:
                    piece = stream.read(min(CHUNK, end - offset))
                    if not piece:
                        break
                    offset += len(piece)
                    yield piece
            if download.complete and offset >= download.received:
                return

    async def member(self, uuid: str, name: str, where: str) -> Member | None:
        """Member ``name`` as soon as its size is known (its local header arrived, or it is
        extracted, or the archive is complete); None when ``name`` is a folder of the
        archive. Starts the download if none runs. Raises NotFound, the download's error."""
        download = self._get(uuid)
        joined = False
        prefix = name + "/"
        while True:
            if download.complete and download.members is not None:
                found = download.members.get(name)
                if found is not None:
                    return found
                if any(n.startswith(prefix) for n in download.members):
                    return None
                raise errors.NotFound(f"no {name} in the archive", url=where)
            early = download.extracted.get(name)
            if early is not None and early.size is not None and early.crc is not None:
                return Member(name, early.size, early.mtime_ns, early.crc)
            if any(n.startswith(prefix) for n in download.extracted):
                return None
            if not download.running:
                if joined:
                    raise download.error or errors.Unavailable("download stopped", url=where)
                self._start(download, where)
            joined = True
            await download.arrived.wait()

    async def stream_member(self, uuid: str, name: str, where: str) -> AsyncIterator[bytes]:
        """The bytes of member ``name``: following its extraction while the archive
        arrives, else (a member the extractor left alone) from the complete archive.
        Raises NotFound, IsADirectory, the download's error."""
        download = self._get(uuid)
        sent = 0
        if await self.member(uuid, name, where) is None:
            raise errors.IsADirectory(url=where)
        early = download.extracted.get(name)
        if early is not None:
            with open(early.path, "rb") as stream:
                while not early.failed:
                    piece = stream.read(min(CHUNK, early.written - sent))
                    if piece:
                        sent += len(piece)
                        yield piece
                    elif early.done:
                        return
                    else:
                        await download.arrived.wait()
        members = await self.members(uuid, where)
        if name not in members:
            raise errors.NotFound(f"no {name} in the archive", url=where)
        archive = await trio.to_thread.run_sync(zipfile.ZipFile, download.path)
        try:
            member = await trio.to_thread.run_sync(archive.open, name)
            try:
                skip = sent  # the extractor's bytes before it failed were sent already
                while piece := await trio.to_thread.run_sync(member.read, CHUNK):
                    if skip >= len(piece):
                        skip -= len(piece)
                        continue
                    yield piece[skip:]
                    skip = 0
            finally:
                member.close()
        except (OSError, zipfile.BadZipFile) as exc:
            raise errors.AssetFSError(f"reading {name} from the archive: {exc}",
                                      url=where) from exc
        finally:
            archive.close()
