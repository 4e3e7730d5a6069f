"""A rename between the store and the mount's local trash (``-o trash=local``).

GIO trashes by a rename into ``.Trash-$uid/files`` and restores by a rename back, and
fails on EXDEV (vfs/trash.py), so such a rename must succeed although no driver call can do
it (assetfs/routing.py: the two sides are different drivers). :meth:`Crossing.move` does
what the rename means, through the block cache, before the VFS moves its caches as for any
rename:

1. every file of the moved tree gets its whole content into the cache (what is not cached
   is fetched from its side, under the call layer's deadlines) -- nothing has changed yet,
   so a failure here leaves both sides as they were;
2. the folders are made on the other side;
3. each file's cache item becomes a new, dirty, journaled file (BlockCache.take_over);
4. the files, then the folders, are deleted from the side they came from.

After the VFS moved the items to the new names, the write-back uploads them to the other
side: to the local trash folder (a local copy) or, for a restore, to the store, retried
until it works like any upload; a crash meanwhile loses nothing (the journal). A failure in
steps 3-4 schedules those uploads at the old names, which puts back what was deleted. The
move takes as long as the fetch: trashing a large file that is not cached downloads it,
and one whose content does not fit in the cache's dirty bound (``cache_max``) gets ENOSPC
before anything changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from .. import errors
from ..cache.blocks import BlockCache
from ..cache.item import CacheItem
from ..cache.writeback import WriteBack
from ..drivers.base import Entry, Kind, join
from ..remote import Remote
from .namespace import Namespace


class Crossing:
    """Moves between the two sides of a mount; ``is_local(path)`` tells them apart
    (vfs/trash.py, ``TrashPolicy.local``)."""

    def __init__(self, remote: Remote, namespace: Namespace, cache: BlockCache,
                 writeback: WriteBack, is_local: Callable[[str], bool]) -> None:
        self.remote = remote
        self.ns = namespace
        self.cache = cache
        self.writeback = writeback
        self.is_local = is_local

    def crosses(self, old: str, new: str) -> bool:
        """Whether a rename of ``old`` to ``new`` goes from one side to the other."""
        return self.is_local(old) != self.is_local(new)

    async def move(self, old: str, new: str, entry: Entry) -> None:
        """Move ``old`` (shown as ``entry``, a file or a folder) to ``new`` on the other
        side (see the module's steps). The caller holds the write-back of the items under
        both names and moves the caches afterwards. Raises what the store calls raise,
        NoSpace (the dirty bound)."""
        folders, files = await self._tree(old, entry)
        items: list[CacheItem] = []
        try:
            for path, file_entry in files:
                item = self.cache.item(path) or self.cache.get(path, file_entry)
                self.cache.opened(item)  # not evicted while the others are fetched
                items.append(item)
                await self.cache.fill_all(item)
            await self._make_folders(old, new, folders)
            stored = [bool(item.base_version) for item in items]
            try:
                for item in items:
                    await self.cache.take_over(item)
                for (path, _), on_side in zip(files, stored, strict=True):
                    if on_side or await self.ns.remote(path) is not None:
                        with contextlib.suppress(errors.NotFound):
                            await self.remote.remove(path, Kind.FILE)
                for folder in reversed(folders):
                    await self.remote.remove(folder, Kind.DIR)
            except BaseException:
                for item in items:
                    self.writeback.schedule(item)
                raise
        finally:
            for item in items:
                self.cache.closed(item)

    async def _tree(self, top: str, entry: Entry) -> tuple[list[str], list[tuple[str, Entry]]]:
        """The folders (parents first) and the files at or under ``top``, as the mount
        shows them (files written here and not uploaded included)."""
        if not entry.is_dir:
            return [], [(top, entry)]
        folders, files, index = [top], [], 0
        while index < len(folders):
            folder = folders[index]
            index += 1
            for name, child in sorted((await self.ns.listing(folder)).items()):
                if child.is_dir:
                    folders.append(join(folder, name))
                else:
                    files.append((join(folder, name), child))
        return folders, files

    async def _make_folders(self, old: str, new: str, folders: list[str]) -> None:
        """Make ``folders`` (under ``old``, parents first) under ``new`` on the other side;
        on a failure, remove those made and raise."""
        made: list[str] = []
        try:
            for folder in folders:
                target = new + folder[len(old):]
                await self.remote.mkdir(target)
                made.append(target)
        except BaseException:
            for target in reversed(made):
                with contextlib.suppress(errors.AssetFSError):
                    await self.remote.remove(target, Kind.DIR)
            raise
