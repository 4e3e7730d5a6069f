"""The inode table: inode number <-> driver path, and the kernel's lookup counts.

An inode lives while the kernel holds a lookup count on it (FUSE protocol: every successful
``lookup``, ``create``, ``mkdir`` and readdirplus entry adds one; ``forget`` subtracts).
A path that is deleted or replaced gets a fresh inode number, so a stale kernel handle never
reaches a new object. Inode numbers are never reused within one mount.
"""

from __future__ import annotations

import pyfuse3

from .. import errors

ROOT_INODE: int = pyfuse3.ROOT_INODE
_DETACHED = "\0detached:"


class InodeTable:
    """Bidirectional map ``inode <-> path`` with lookup counts."""

    def __init__(self) -> None:
        self._next = ROOT_INODE + 1
        self._path: dict[int, str] = {ROOT_INODE: "/"}
        self._inode: dict[str, int] = {"/": ROOT_INODE}
        self._lookups: dict[int, int] = {ROOT_INODE: 1}

    def __len__(self) -> int:
        return len(self._path)

    def path(self, inode: int) -> str:
        """The path of ``inode``. Raises NotFound for an inode that is gone (unlinked)."""
        path = self._path.get(inode)
        if path is None or path.startswith(_DETACHED):
            raise errors.NotFound(f"inode {inode} is gone")
        return path

    def get(self, path: str) -> int | None:
        """The inode the kernel knows for ``path``, if any (no new allocation)."""
        return self._inode.get(path)

    def lookup(self, path: str) -> int:
        """The inode for ``path``, allocated if new, with one more kernel lookup count."""
        inode = self._inode.get(path)
        if inode is None:
            inode = self._next
            self._next += 1
            self._inode[path] = inode
            self._path[inode] = path
        self._lookups[inode] = self._lookups.get(inode, 0) + 1
        return inode

    def forget(self, inode: int, count: int) -> str | None:
        """Drop ``count`` kernel references; return the path if the inode is now gone."""
        left = self._lookups.get(inode, 0) - count
        if left > 0 or inode == ROOT_INODE:
            self._lookups[inode] = max(left, 1)
            return None
        self._lookups.pop(inode, None)
        path = self._path.pop(inode, None)
        if path is not None and self._inode.get(path) == inode:
            del self._inode[path]
        return path

    def detach(self, path: str) -> int | None:
        """``path`` no longer names its inode (unlinked or replaced); the inode stays valid
        for open handles until forgotten. Returns the detached inode."""
        inode = self._inode.pop(path, None)
        if inode is not None:
            self._path[inode] = f"{_DETACHED}{inode}"
        return inode

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` (and every known path under it) to ``new``; an inode that was at
        ``new`` is detached first."""
        self.detach(new)
        prefix = old.rstrip("/") + "/"
        moved = [(p, i) for p, i in self._inode.items() if p == old or p.startswith(prefix)]
        for p, _ in moved:
            del self._inode[p]
        for p, i in moved:
            target = new + p[len(old) :]
            self._inode[target] = i
            self._path[i] = target

    def known_paths(self) -> list[str]:
        """Every path the kernel holds an inode for."""
        return list(self._inode)
