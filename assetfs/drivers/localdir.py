"""A folder on this machine behind the driver contract (the local trash of ``-o trash=local``).

Paths map to ``root/<path>``. It answers every read mode (ranged reads, a stream, the
file itself as the local copy), so it can stand beside any store whose read mode the block
cache uses (assetfs/routing.py). Versions are ``<size>:<mtime_ns>``. An upload is copied
into ``partial/`` first, flushed to disk and renamed into place, so a crash leaves the old
content or the new, never a part. It has no URL scheme and no entry point: the daemon makes one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import trio

from .. import errors
from .base import Capabilities, Driver, Entry, Kind, ReadMode, size_mtime_version

CHUNK = 1 << 20
"""Bytes per chunk of :meth:`LocalFolder.open_stream`."""

_ERRORS: dict[int, type[errors.AssetFSError]] = {
    errno.ENOENT: errors.NotFound,
    errno.EEXIST: errors.AlreadyExists,
    errno.ENOTDIR: errors.NotADirectory,
    errno.EISDIR: errors.IsADirectory,
    errno.ENOTEMPTY: errors.DirectoryNotEmpty,
    errno.EACCES: errors.PermissionDenied,
    errno.EPERM: errors.PermissionDenied,
    errno.ENOSPC: errors.NoSpace,
    errno.EDQUOT: errors.NoSpace,
}


class LocalFolder(Driver):
    """The driver of local folder ``root`` (an absolute path); uploads pass through
    ``partial``, a folder on the same filesystem."""

    capabilities = Capabilities(writable=True, read_mode=ReadMode.RANGED, rename=True)

    def __init__(self, root: Path, partial: Path) -> None:
        super().__init__(root.as_uri(), {})
        self.root = root
        self.partial = partial

    async def connect(self) -> None:
        """Make both folders (mode 0700) if missing and clear ``partial`` of uploads a
        crash interrupted (their source is still in the cache). Raises NotADirectory,
        PermissionDenied... when ``root`` cannot be a folder."""
        with self._translated("/"):
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.partial.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in self.partial.iterdir():
                stale.unlink(missing_ok=True)
        await super().connect()

    def describe(self, path: str) -> str:
        """The local file of ``path``."""
        return str(self._local(path))

    def _local(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @contextlib.contextmanager
    def _translated(self, path: str) -> Iterator[None]:
        """OSError -> the project's error of the same errno (EIO for the rest)."""
        try:
            yield
        except OSError as exc:
            kind = _ERRORS.get(exc.errno or 0, errors.AssetFSError)
            raise kind(exc.strerror or str(exc), url=self.describe(path)) from None

    def _entry(self, name: str, st: os.stat_result) -> Entry:
        kind = Kind.DIR if stat.S_ISDIR(st.st_mode) else Kind.FILE
        size = 0 if kind is Kind.DIR else st.st_size
        return Entry(name=name, kind=kind, size=size, mtime_ns=st.st_mtime_ns,
                     version="" if kind is Kind.DIR else size_mtime_version(size, st.st_mtime_ns),
                     mode=stat.S_IMODE(st.st_mode))

    async def stat(self, path: str) -> Entry:
        with self._translated(path):
            return self._entry(self._local(path).name, os.stat(self._local(path)))

    async def list(self, path: str) -> list[Entry]:
        with self._translated(path), os.scandir(self._local(path)) as children:
            return [self._entry(child.name, child.stat(follow_symlinks=False))
                    for child in children]

    async def read(self, path: str, offset: int, size: int) -> bytes:
        with self._translated(path):
            fd = os.open(self._local(path), os.O_RDONLY)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)

    async def local_path(self, path: str) -> str:
        return self.describe(path)

    def known_local_path(self, path: str) -> str | None:
        return self.describe(path)

    async def open_stream(self, path: str) -> AsyncGenerator[bytes, None]:
        with self._translated(path):
            file = open(self._local(path), "rb")  # noqa: SIM115 - closed in finally
        try:
            while chunk := file.read(CHUNK):
                yield chunk
                await trio.sleep(0)
        finally:
            file.close()

    async def write(self, path: str, source: str, size: int) -> Entry:
        target = self._local(path)
        part = self.partial / uuid.uuid4().hex
        with self._translated(path):
            try:
                await trio.to_thread.run_sync(_copy_durably, source, part)
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
            return self._entry(target.name, os.stat(target))

    async def mkdir(self, path: str) -> Entry:
        with self._translated(path):
            os.mkdir(self._local(path), 0o700)
        return await self.stat(path)

    async def remove(self, path: str, kind: Kind) -> None:
        with self._translated(path):
            if kind is Kind.DIR:
                os.rmdir(self._local(path))
            else:
                os.unlink(self._local(path))

    async def rename(self, old: str, new: str) -> None:
        with self._translated(old):
            os.rename(self._local(old), self._local(new))


def _copy_durably(source: str, target: Path) -> None:
    """Copy file ``source`` to ``target`` and flush it to disk: once the upload returns,
    the cache forgets its own copy. Raises OSError."""
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
