"""pyfuse3 request handlers: POSIX in, errno out.

Each handler resolves inodes to driver paths, asks the :class:`Namespace` what exists, and
sends data through the block cache; project exceptions become ``FUSEError(exc.errno)`` in
one place (:func:`_errno`). Handlers never call ``pyfuse3.invalidate_*`` (that deadlocks
the mount, docs/architecture.md); the invalidator task does.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from .. import errors
from ..cache.blocks import BlockCache
from ..cache.item import CacheItem
from ..cache.writeback import WriteBack
from ..drivers.base import Entry, Kind, join, split
from ..events.echoes import OwnChanges
from ..loopwatch import OPERATION
from ..observe.requests import RequestStats
from ..remote import Remote
from .crossing import Crossing
from .inodes import ROOT_INODE, InodeTable
from .metadata import MetadataCache
from .namespace import Namespace
from .pagefill import PageFill
from .passthrough import IOMode, Passthrough

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
XATTR_PREFIX = "user.assetfs."
BLKSIZE = 1 << 20
"""st_blksize: cp and friends size their buffers from it; 1 MiB requests suit FUSE."""
_FILE_INFO = set(dir(pyfuse3.FileInfo))
NOFLUSH = "noflush" in _FILE_INFO
"""pyfuse3 can answer an open with FOPEN_NOFLUSH: close() of a read-only open then waits for
no FLUSH request (scripts/patches/pyfuse3-3.5.0-noflush.patch)."""
CACHE_DIR = "cache_readdir" in _FILE_INFO
"""pyfuse3 can answer an opendir with FOPEN_CACHE_DIR: the kernel lists a folder again from
its own cache (scripts/patches/pyfuse3-3.5.0-cache-readdir.patch)."""


def _errno(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Translate project exceptions and local OS errors into ``pyfuse3.FUSEError``."""

    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        stats: RequestStats | None = getattr(args[0], "requests", None)
        if stats is not None:
            stats.started(name)
        OPERATION.set(name)
        started, failure = time.perf_counter(), 0
        try:
            try:
                return await handler(*args, **kwargs)
            except BaseExceptionGroup as group:
                raise first_error(group) from None
        except errors.AssetFSError as exc:
            if exc.errno in (errno.EIO, errno.ETIMEDOUT) and not exc.logged:
                log.warning("%s: %s", handler.__name__, exc)
            failure = exc.errno
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.warning("%s: local error %s", handler.__name__, exc)
            failure = exc.errno or errno.EIO
            raise pyfuse3.FUSEError(failure) from None
        except pyfuse3.FUSEError as exc:
            failure = exc.errno
            raise
        except trio.Cancelled:
            failure = errno.EINTR
            raise
        except Exception:
            log.exception("%s failed", handler.__name__)
            failure = errno.EIO
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if stats is not None:
                stats.finished(name, time.perf_counter() - started, failure)

    return wrapper


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first project error in a (nested) exception group from a nursery, else the
    first leaf: a handler fails with one errno, not with a group."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    for leaf in leaves:
        if isinstance(leaf, errors.AssetFSError):
            return leaf
    return leaves[0]


def entry_attributes(entry: Entry) -> dict[str, str]:
    """The ``user.assetfs.*`` attributes of an entry: its store metadata plus ``version``
    (the etag the cache keys content by)."""
    values = dict(entry.metadata)
    if entry.version and not entry.is_dir:
        values.setdefault("version", entry.version)
    return values


@dataclass(eq=False)
class Handle:
    """An open file: its inode, cache item, whether it may write, and how the kernel
    serves it (:class:`~assetfs.vfs.passthrough.IOMode`)."""

    inode: int
    item: CacheItem
    writable: bool
    mode: IOMode


@dataclass(frozen=True)
class Timeouts:
    """Kernel cache lifetimes in seconds: dentries (``entry``), attributes (``attr``) and
    negative dentries (``negative``, 0 = not cached)."""

    entry: float
    attr: float
    negative: float


class Operations(pyfuse3.Operations):
    """The filesystem of one mount."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        remote: Remote,
        namespace: Namespace,
        metadata: MetadataCache,
        cache: BlockCache,
        writeback: WriteBack,
        inodes: InodeTable,
        timeouts: Timeouts,
        status: Callable[[], dict[str, Any]],
        own: OwnChanges,
        read_only: bool = False,
        passthrough: bool = True,
        passthrough_copies: bool = False,
    ) -> None:
        super().__init__()
        self.remote = remote
        self.ns = namespace
        self.crossing = Crossing(remote, namespace, cache, writeback, namespace.trash.local)
        """Renames between the store and the local trash (vfs/crossing.py)."""
        self.metadata = metadata
        self.cache = cache
        self.writeback = writeback
        self.inodes = inodes
        self.timeouts = timeouts
        self.status = status
        self.own = own
        """Paths changed on the store by this mount (their late events are re-checked)."""
        self.read_only = read_only or not remote.capabilities.writable
        self.passthrough = Passthrough(passthrough)
        self.passthrough_copies = passthrough_copies
        """Read-only opens may pass through to the store's local copy (-o passthrough=copies)."""
        self.kernel_version: dict[int, str] = {}
        """inode -> content version the kernel page cache holds (keep_cache on open)."""
        self.page_fill = PageFill()
        """Small files' content pushed into the kernel page cache at open (vfs/pagefill.py)."""
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, tuple[int, str, list[tuple[str, Entry]]]] = {}
        """Folder handle -> (inode, path, the listing it reads)."""
        self._listed: set[int] = set()
        """Folder handles already read from, or served from the kernel's cache (opened with
        ``keep_cache``): a read at offset 0 is then a rewinddir."""
        self.kernel_listings: dict[int, tuple[tuple[str, Kind, int | None], ...]] = {}
        """Folder inode -> the listing the kernel caches for it (FOPEN_CACHE_DIR), as
        :meth:`_listing_key` s: an opendir keeps that cache only while it is still true."""
        self._next_fh = 1
        self.requests = RequestStats()
        """FUSE requests by operation: counts, latencies, errors (observe/requests.py)."""
        self.uid, self.gid = os.getuid(), os.getgid()

    @property
    def enable_passthrough(self) -> bool:
        """Asks pyfuse3 to negotiate FUSE_PASSTHROUGH at init (the patched wheel reads it)."""
        return self.passthrough.enabled

    # --- helpers --------------------------------------------------------------------
    def attributes(self, inode: int, entry: Entry) -> pyfuse3.EntryAttributes:
        """``struct stat`` for ``entry`` at ``inode``."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.entry_timeout = self.timeouts.entry
        attr.attr_timeout = self.timeouts.attr
        attr.st_mode = entry.st_mode
        if self.read_only:
            attr.st_mode &= ~0o222
        attr.st_nlink = 2 if entry.is_dir else 1
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_rdev = 0
        attr.st_size = entry.size
        attr.st_blksize = BLKSIZE
        attr.st_blocks = (entry.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = entry.mtime_ns
        return attr

    def _path(self, inode: int) -> str:
        return self.inodes.path(inode)

    def _child(self, parent: int, name: bytes) -> str:
        text = os.fsdecode(name)
        if "/" in text or text in (".", ".."):
            raise errors.InvalidName(text)
        return join(self._path(parent), text)

    def _writable(self) -> None:
        if self.read_only:
            raise errors.ReadOnly()

    def _known(self, path: str, entry: Entry) -> pyfuse3.EntryAttributes:
        """Count a kernel lookup of ``path`` and return its attributes."""
        inode = self.inodes.lookup(path)
        if entry.is_dir:
            self.remote.watch(path)
        return self.attributes(inode, entry)

    def _listing_key(
        self, folder: str, entries: list[tuple[str, Entry]]
    ) -> tuple[tuple[str, Kind, int | None], ...]:
        """What the kernel's cache of a folder listing holds: names, kinds, inode numbers."""
        return tuple((name, e.kind, self.inodes.get(join(folder, name))) for name, e in entries)

    async def _on_store(self, path: str, entry: Entry) -> bool:
        """Whether the store may hold ``path`` (shown as ``entry``), so that deleting or
        renaming it must reach the store: a folder always does (folders are made on the
        store at once), a file the store has, that was uploaded from here, or whose failed
        upload may have left a copy there (the name came back after an unlink on
        ``file:``, where a failed copy leaves a partial file: tests/test_model.py). Only a
        file made here and never sent is not asked for: a stale cached "absent" would
        otherwise skip the store and leave the old name there, or move a folder only in
        the cache, so that the files under it upload into a folder the store lacks."""
        if entry.is_dir or await self.ns.remote(path) is not None:
            return True
        item = self.cache.item(path)
        return item is None or bool(item.base_version) or self.writeback.may_have_written(item)

    async def _rebase_moved(self, items: list[CacheItem]) -> None:
        """After a rename on the store: the ``items`` it moved (at their new paths) that
        hold or started from a store version take the version the store now gives the file
        there. A store may give a moved file a new version (the Storage API peer derives it
        from the resource identity, which holds the path: docs/backends/nucleus.md), and the
        next upload took that for another writer's change (a ``.conflict-`` copy, seen by
        the model test, tests/test_model.py). When the store cannot say, the old one stays."""
        for item in items:
            if item.base_version and not item.unlinked:
                with contextlib.suppress(errors.AssetFSError):
                    entry = await self.remote.stat(item.path)
                    if not entry.is_dir:
                        await self.cache.moved_version(item, entry.version)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # --- metadata -------------------------------------------------------------------
    @_errno
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        folder = self._path(parent_inode)
        await self.ns.folder(folder)
        self.remote.watch(folder)  # the kernel now caches a name in it: keep it coherent
        entry = await self.ns.find(path)
        if entry is None:
            if self.timeouts.negative > 0:
                attr = pyfuse3.EntryAttributes()
                attr.st_ino = 0
                attr.entry_timeout = self.timeouts.negative
                return attr
            raise errors.NotFound()
        return self._known(path, entry)

    @_errno
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        try:
            return self.attributes(inode, await self.ns.entry(self._path(inode)))
        except errors.NotFound:
            # unlinked, replaced, or deleted on the store while open: fstat still works
            item = next((h.item for h in self._handles.values() if h.inode == inode), None)
            if item is None:
                raise
            return self.attributes(inode, item.entry(None, split(item.path)[1]))

    @_errno
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        entry = await self.ns.entry(path)
        if fields.update_size or fields.update_mtime:
            self._writable()
        if fields.update_size:
            if entry.is_dir:
                raise errors.IsADirectory()
            self.remote.check_write(path)
            handle = self._handles.get(fh) if fh is not None else None
            item = handle.item if handle else self.cache.get(path, entry)
            await self.cache.truncate(item, attr.st_size)
            if not item.writers:
                self.writeback.schedule(item)
        if fields.update_mtime and not entry.is_dir:
            shadow = self.cache.shadowing(path)
            if shadow is not None:
                self.cache.set_mtime(shadow, attr.st_mtime_ns)
            elif (remote := await self.ns.remote(path)) is not None:
                self.ns.mtimes.keep(path, remote.version, attr.st_mtime_ns)
        # chmod/chown/atime: the stores keep no POSIX owners or modes; accepted and ignored
        # so that cp -p and rsync -a work (as rclone mount and gcsfuse do).
        return self.attributes(inode, await self.ns.entry(path))

    # pyfuse3 calls forget from its C callback without awaiting (handlers.pxi), so a plain
    # function runs at once, before the next request; its stub declares a coroutine.
    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:  # type: ignore[override]
        self.requests.started("forget")
        for inode, count in inode_list:
            path = self.inodes.forget(inode, count)
            if path is not None:
                self.kernel_version.pop(inode, None)
                self.kernel_listings.pop(inode, None)
                self.remote.unwatch(path)

    @_errno
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self.cache.root)
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = disk.f_frsize
        data.f_blocks = disk.f_blocks
        data.f_bfree = data.f_bavail = disk.f_bavail
        data.f_files = 1 << 32
        data.f_ffree = data.f_favail = 1 << 31
        data.f_namemax = 255
        return data

    # --- folders --------------------------------------------------------------------
    @_errno
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        """A folder handle; with FOPEN_CACHE_DIR, the kernel keeps what readdir returns and
        keeps it across opens (``keep_cache``) while the listing is unchanged: a second
        ``ls`` of the folder sends no readdir. Remote changes drop that cache
        (the invalidator's ``invalidate_inode`` of the folder), local ones too (the kernel)."""
        path = self._path(inode)
        await self.ns.folder(path)
        self.remote.watch(path)
        fh = self._new_fh()
        entries = sorted((await self.ns.listing(path)).items())
        self._dirs[fh] = (inode, path, entries)
        if not CACHE_DIR or not entries:
            # An empty listing is cached without a page, and no opendir without keep_cache
            # nor invalidate_inode then resets it (only a change of the folder's mtime
            # does, fs/fuse/readdir.c): the kernel would list the folder as empty for good.
            return fh
        held = self.kernel_listings.get(inode)
        keep = held is not None and held == self._listing_key(path, entries)
        if keep:
            self._listed.add(fh)  # listed from the kernel's cache; the snapshot may age
        else:
            self.kernel_listings.pop(inode, None)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, cache_readdir=True)

    @_errno
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        folder_inode, folder, entries = self._dirs[fh]
        if start_id == 0 and fh in self._listed:
            # rewinddir() on a handle held open (a file manager, os.listdir(fd)): POSIX
            # wants the folder as it is now, not the snapshot taken at opendir.
            entries = sorted((await self.ns.listing(folder)).items())
            self._dirs[fh] = (folder_inode, folder, entries)
        self._listed.add(fh)
        for index in range(start_id, len(entries)):
            name, entry = entries[index]
            path = join(folder, name)
            inode = self.inodes.lookup(path)
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self.attributes(inode, entry), index + 1
            ):
                self.inodes.forget(inode, 1)
                return
            if entry.is_dir:
                self.remote.watch(path)
        self.kernel_listings[folder_inode] = self._listing_key(folder, entries)

    async def releasedir(self, fh: int) -> None:
        self.requests.started("releasedir")
        self._dirs.pop(fh, None)
        self._listed.discard(fh)

    @_errno
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        path = self._child(parent_inode, name)
        await self.ns.folder(self._path(parent_inode))
        if await self.ns.find(path) is not None:
            raise errors.AlreadyExists()
        self.ns.trash.check_create(path)
        self.remote.check_create(path, Kind.DIR)
        with self.own.changing(path):
            entry = await self.remote.mkdir(path)
            self.metadata.put(path, entry)
            self.metadata.put_listing(path, [])
            self.ns.touched(split(path)[0])
            return self._known(path, entry)

    @_errno
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        await self.ns.folder(path)
        if await self.ns.listing(path):
            raise errors.DirectoryNotEmpty()
        with self.own.changing(path):
            await self.remote.remove(path, Kind.DIR)
            self.metadata.forget_tree(path)
            self.metadata.put(path, None)
            self.remote.unwatch(path)
            self.inodes.detach(path)
            self.ns.touched(split(path)[0])

    @_errno
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        entry = await self.ns.entry(path)
        if entry.is_dir:
            raise errors.IsADirectory()
        item = self.cache.item(path)
        with self.own.changing(path):
            async with self.writeback.held([item] if item is not None else []):
                if await self._on_store(path, entry):
                    with contextlib.suppress(errors.NotFound):
                        await self.remote.remove(path, Kind.FILE)
                self.cache.unlinked(path)
            self.ns.mtimes.drop(path)
            self.metadata.put(path, None)
            self.inodes.detach(path)
            self.ns.touched(split(path)[0])

    @_errno
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise errors.InvalidName("RENAME_EXCHANGE is not supported")
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        source = await self.ns.entry(old)
        await self.ns.folder(self._path(parent_inode_new))
        if old == new:
            return
        if source.is_dir and (new + "/").startswith(old + "/"):
            raise errors.InvalidName("cannot move a folder into itself")
        self.ns.trash.check_create(new)
        self.remote.check_create(new, source.kind)
        with self.own.changing(old, new):
            target = await self.ns.find(new)
            if target is not None:
                if flags & pyfuse3.RENAME_NOREPLACE:
                    raise errors.AlreadyExists()
                if source.is_dir and not target.is_dir:
                    raise errors.NotADirectory()
                if target.is_dir and not source.is_dir:
                    raise errors.IsADirectory()
                if target.is_dir:
                    if await self.ns.listing(new):
                        raise errors.DirectoryNotEmpty()
                    await self.remote.remove(new, Kind.DIR)
            moving = self.cache.under(old, new)
            async with self.writeback.held(moving):  # no upload to either name meanwhile
                renamed = False
                if self.crossing.crosses(old, new):  # into or out of the local trash
                    await self.crossing.move(old, new, source)
                elif await self._on_store(old, source):
                    if not self.remote.capabilities.rename:
                        raise errors.NotSupported("the store cannot rename")
                    await self.remote.rename(old, new)
                    renamed = True
                elif target is not None and await self.ns.remote(new) is not None and target.is_dir:
                    await self.remote.remove(new, Kind.DIR)
                await self.cache.moved(old, new)
                if renamed:
                    await self._rebase_moved(moving)
                self.ns.mtimes.moved(old, new)
            for path in (old, new):
                self.metadata.forget_tree(path)
                self.metadata.forget_listing(split(path)[0])
            self.metadata.put(old, None)
            self.inodes.move(old, new)
            self.ns.touched(split(old)[0], split(new)[0])
            for item in self.cache.under(new):
                if item.dirty and not item.writers:
                    self.writeback.schedule(item)

    # --- files ----------------------------------------------------------------------
    async def _open_handle(
        self, inode: int, item: CacheItem, writable: bool
    ) -> pyfuse3.FileInfo:
        """Register an open of ``item`` and choose how the kernel serves it: passthrough to
        the cache file when it holds the whole content (and, for a writer, the cache bound
        leaves room, and the inode is not open in cached mode); for a reader of an idle
        inode, passthrough to the store's local copy (with ``-o passthrough=copies``, or
        when the mount can never write the file and the driver knows the copy without
        I/O); else through the daemon (vfs/passthrough.py), a small file's content stored
        in the kernel page cache first when it lies on local disk (vfs/pagefill.py)."""
        if writable and self.passthrough.bound_to_local_copy(inode):
            raise errors.FileBusy(f"{item.path} is open for reading from the store's copy")
        unopened = self.passthrough.unopened(inode)
        fd = self.cache.whole_fd(item)
        if writable and fd is not None and not self.cache.passthrough_room(item):
            fd = None
        # a file the mount can never write may be read from the store's local copy too
        local_copy = (fd is None and not writable and self.passthrough.idle(inode)
                      and (self.passthrough_copies or self._never_written(item.path)))
        if local_copy:
            fd = await self.cache.local_copy_fd(item, known_only=not self.passthrough_copies)
        mode, backing_id = self.passthrough.open(inode, item, fd, local_copy)
        self.cache.opened(item)  # from now on: the item stays while the journal is written
        if writable:
            item.writers += 1
        if writable and mode is IOMode.PASSTHROUGH:
            try:
                await self.cache.passthrough_writer_opened(item)  # journaled before open returns
            except BaseException:
                item.writers -= 1
                self.passthrough.release(inode, mode)
                self.cache.closed(item)
                raise
        fh = self._new_fh()
        self._handles[fh] = Handle(inode, item, writable, mode)
        info = pyfuse3.FileInfo(fh=fh)
        if NOFLUSH and not writable:  # flush() has nothing to do for a reader
            info.noflush = True
        if mode is IOMode.PASSTHROUGH:
            if writable:  # the page cache of earlier cached opens is stale from now on
                self.kernel_version.pop(inode, None)
            info.backing_id = backing_id
            return info
        version = item.base_version if not item.dirty else f"local:{item.key}"
        held = self.kernel_version.get(inode)
        info.keep_cache = held == version
        if held is None and unopened and not writable and self.page_fill.wanted(item.size):
            data = self.cache.read_now(item)
            info.keep_cache = data is not None and self.page_fill.fill(inode, data)
        self.kernel_version[inode] = version
        return info

    def _never_written(self, path: str) -> bool:
        """Whether no open through this mount can ever write the file ``path`` (a read-only
        mount or store, or ``check_write`` refuses it): then nothing is lost by binding its
        readers to a read-only local copy (vfs/passthrough.py). No I/O."""
        if self.read_only:
            return True
        try:
            self.remote.check_write(path)
        except errors.AssetFSError:
            return True
        return False

    @_errno
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        path = self._path(inode)
        entry = await self.ns.entry(path)
        if entry.is_dir:
            raise errors.IsADirectory()
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._writable()
            self.remote.check_write(path)
        # an inode open in passthrough mode is bound to its cache file (vfs/passthrough.py)
        item = self.passthrough.bound_item(inode) or self.cache.get(path, entry)
        if flags & os.O_TRUNC and writable:
            await self.cache.truncate(item, 0)
        return await self._open_handle(inode, item, writable)

    @_errno
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        path = self._child(parent_inode, name)
        await self.ns.folder(self._path(parent_inode))
        existing = await self.ns.find(path)
        if existing is not None and existing.is_dir:
            raise errors.IsADirectory()
        self.ns.trash.check_create(path)
        self.remote.check_create(path, Kind.FILE)
        self.remote.check_write(path)
        item = await self.cache.new_file(path)
        if self.passthrough.bound_item(self.inodes.get(path) or 0) is not None:
            self.inodes.detach(path)  # that inode's open files keep the old content
        if existing is not None:
            item.base_version = existing.version
        entry = item.entry(existing, split(path)[1])
        self.ns.touched(split(path)[0])
        attr = self._known(path, entry)
        return await self._open_handle(attr.st_ino, item, True), attr

    @_errno
    async def read(  # type: ignore[override]  # pyfuse3 replies from any buffer; its stub says bytes
        self, fh: int, off: int, size: int,
    ) -> bytes | memoryview:
        return await self.cache.read(self._handles[fh].item, off, size)

    @_errno
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if not handle.writable:
            raise errors.PermissionDenied()
        return await self.cache.write(handle.item, off, buf)

    @_errno
    async def fsync(self, fh: int, datasync: bool) -> None:
        # Durable means on the store: an uploaded file needs no flush of its cache file, so
        # that flush (about 0.1 s per 256 MiB) is only paid when the upload failed and the
        # next mount must find the data on the cache disk.
        item = self._handles[fh].item
        try:
            await self.writeback.flush(item)
        except errors.AssetFSError:
            await self.cache.fsync(item)
            raise

    @_errno
    async def flush(self, fh: int) -> None:
        return None

    @_errno
    async def release(self, fh: int) -> None:
        self._release(fh, connected=True)

    def release_all(self) -> None:
        """The FUSE connection is gone (unmounted, lazily too): the kernel sends no RELEASE
        for files still open, and a lazy unmount drops those it had queued. Release them
        here, so that what they wrote counts and is uploaded before the daemon exits."""
        for fh in list(self._handles):
            self._release(fh, connected=False)

    def _release(self, fh: int, connected: bool) -> None:
        """Close handle ``fh``; with ``connected`` False, its backing id went with the
        connection."""
        handle = self._handles.pop(fh)
        self.passthrough.release(handle.inode, handle.mode, connected)
        item = handle.item
        if handle.writable:
            if handle.mode is IOMode.PASSTHROUGH:
                self.cache.passthrough_writer_closed(item)
            item.writers -= 1
            if item.dirty:
                self.cache.sync_soon(item)
        if item.dirty and not item.writers:
            self.writeback.schedule(item)
        self.cache.closed(item)

    # --- extended attributes: store metadata, control actions, status ------------------
    @_errno
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        entry = await self.ns.entry(self._path(inode))
        names = [XATTR_PREFIX + key for key in entry_attributes(entry)]
        if not entry.is_dir:
            names += [XATTR_PREFIX + key for key in self.remote.lazy_xattrs]
        if inode == ROOT_INODE:
            names.append(XATTR_PREFIX + "status")
        return [os.fsencode(n) for n in names]

    @_errno
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = os.fsdecode(name)
        if inode == ROOT_INODE and key == XATTR_PREFIX + "status":
            return json.dumps(self.status(), indent=1).encode()
        if not key.startswith("user."):
            # security.* and system.* (SELinux labels, POSIX ACLs, file capabilities) are
            # not supported: EOPNOTSUPP, not ENODATA, so that ls -l and friends remember it
            # per filesystem instead of asking for every entry (coreutils caches an
            # "unsupported" answer), and the kernel's capability check before each write
            # costs no namespace lookup.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if not key.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        path = self._path(inode)
        entry = await self.ns.entry(path)
        short = key[len(XATTR_PREFIX):]
        values = entry_attributes(entry)
        if short in values:
            return values[short].encode()
        if short not in entry.metadata:  # computed on demand; the driver may not know it
            value = await self.remote.xattr(path, short)
            if value is not None:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_errno
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        key = os.fsdecode(name)
        if not key.startswith(XATTR_PREFIX):
            raise errors.NotSupported("only user.assetfs.* attributes can be set")
        action = key[len(XATTR_PREFIX):]
        if inode == ROOT_INODE and action == "flush":
            # starts the uploads and returns at once: a setxattr holds the kernel's lock of
            # the root inode while it waits, and a signal cannot end that wait (control.py)
            self.writeback.hurry()
            return
        if inode == ROOT_INODE and action == "umount_timeout":  # umount --no-flush sets 0
            try:
                self.writeback.exit_timeout = float(value)
            except ValueError:
                raise errors.InvalidName("umount_timeout takes seconds") from None
            return
        path = self._path(inode)
        await self.writeback.settle(path)  # the action sees what was written there
        await self.remote.control(path, action, value)
        if path != "/":  # the root always exists: lookups below it must not need a stat
            self.metadata.forget(path, children=False)

    @_errno
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise errors.NotSupported("store metadata cannot be removed")

