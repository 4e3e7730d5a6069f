"""The operations of the model test: each runs on a folder tree and gives a comparable
result (a value, or the errno it failed with), so that a mount and a plain local folder
(the model) can be driven side by side and compared after every step.

Paths are relative to the tree's root and drawn from a handful of names, so that renames
land on existing targets, folders are replaced and names are re-created often.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMES = ("a", "b", "c")
FOLDERS = ("a", "b")
PATHS = (*NAMES, *(f"{d}/{n}" for d in FOLDERS for n in NAMES))
"""Every path an operation may name: three top-level names and three under two of them."""
LIST_PATHS = ("", *PATHS)
"""Paths a listing may name ("" is the root)."""

Result = tuple[str, Any]
"""``("ok", value)`` or ``("err", errno name)``."""


def _outcome(action: Callable[[], Any]) -> Result:
    try:
        return "ok", action()
    except OSError as exc:
        return "err", _errno_name(exc.errno)


def _errno_name(number: int | None) -> str:
    import errno

    return errno.errorcode.get(number or 0, str(number))


@dataclass(frozen=True)
class Op:
    """One operation: ``kind`` and its arguments; :meth:`apply` runs it under ``root``."""

    kind: str
    path: str = ""
    other: str = ""
    offset: int = 0
    size: int = 0
    data: bytes = b""
    flag: bool = False

    def __str__(self) -> str:
        args = [repr(self.path)]
        if self.kind == "rename":
            args.append(repr(self.other))
        if self.kind == "write":
            args += [str(self.offset), repr(self.data)]
        if self.kind in ("write", "create"):
            args.append(f"create={self.flag}" if self.kind == "write" else f"trunc={self.flag}")
        if self.kind == "truncate":
            args.append(str(self.size))
        return f"{self.kind}({', '.join(args)})"

    def apply(self, root: Path) -> Result:
        """Run the operation on the tree at ``root``; its value or errno name."""
        return _outcome(lambda: getattr(self, f"_{self.kind}")(root))

    def _create(self, root: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if self.flag else 0)
        os.close(os.open(root / self.path, flags, 0o644))

    def _write(self, root: Path) -> int:
        flags = os.O_WRONLY | (os.O_CREAT if self.flag else 0)
        fd = os.open(root / self.path, flags, 0o644)
        try:
            return os.pwrite(fd, self.data, self.offset)
        finally:
            os.close(fd)

    def _truncate(self, root: Path) -> None:
        os.truncate(root / self.path, self.size)

    def _rename(self, root: Path) -> None:
        os.rename(root / self.path, root / self.other)

    def _unlink(self, root: Path) -> None:
        os.unlink(root / self.path)

    def _mkdir(self, root: Path) -> None:
        os.mkdir(root / self.path)

    def _rmdir(self, root: Path) -> None:
        os.rmdir(root / self.path)

    def _read(self, root: Path) -> bytes:
        with open(root / self.path, "rb") as f:
            return f.read()

    def _list(self, root: Path) -> list[str]:
        return sorted(os.listdir(root / self.path))

    def _stat(self, root: Path) -> tuple[str, int]:
        st = os.stat(root / self.path)
        if stat.S_ISDIR(st.st_mode):
            return "dir", 0
        return "file", st.st_size


def tree(root: Path) -> dict[str, str | bytes]:
    """Relative path -> ``"dir"`` or the file's bytes, for everything under ``root``."""
    found: dict[str, str | bytes] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = Path(folder, name)
            found[os.path.relpath(path, root)] = path.read_bytes()
    return found


def clear(root: Path, tries: int = 20) -> None:
    """Delete everything under ``root`` (a mount's or the model's), keeping ``root``. A
    mount that shows a name it cannot delete (one of the disagreements the model test
    looks for) is tried again a few times, then left as it is."""
    for _ in range(tries):
        children = list(root.iterdir())
        if not children:
            return
        for child in children:
            with contextlib.suppress(OSError):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        time.sleep(0.01)


KINDS = ("create", "write", "truncate", "rename", "unlink", "mkdir", "rmdir", "read", "list",
         "stat")
FILE_KINDS = ("create", "write", "truncate", "unlink")
"""Operations that make, change or delete files."""
FOLDER_KINDS = ("mkdir", "rmdir")


@dataclass(frozen=True)
class Shape:
    """What a store can hold and do, as the operations drawn for it: file operations name
    only ``files``, mkdir and rmdir only ``folders``, rename only ``renames`` (both ends);
    read, stat and list name every path. Operations outside ``kinds`` are not drawn."""

    kinds: tuple[str, ...] = KINDS
    files: tuple[str, ...] = PATHS
    folders: tuple[str, ...] = PATHS
    renames: tuple[str, ...] = PATHS

    def paths(self, kind: str) -> tuple[str, ...]:
        """The paths an operation of ``kind`` may name."""
        if kind in FILE_KINDS:
            return self.files
        if kind in FOLDER_KINDS:
            return self.folders
        if kind == "rename":
            return self.renames
        return LIST_PATHS if kind == "list" else PATHS


EVERYTHING = Shape()
"""A POSIX folder tree: every operation on every path."""
ITEMS = Shape(kinds=KINDS, files=tuple(p for p in PATHS if "/" in p), folders=NAMES,
              renames=NAMES)
"""A vSphere content library mounted at a library (docs/vsphere.md): its folders are
items, which hold files and no folders; items can be renamed, files cannot."""
FOLDERS_ONLY = Shape(kinds=("mkdir", "rmdir", "rename", "read", "list", "stat"))
"""A store whose files only its own application makes (the Resonite inventory,
docs/resonite.md): folders are made, renamed and deleted."""


def random_op(rng: random.Random, shape: Shape = EVERYTHING) -> Op:
    """One operation drawn from ``rng`` among those ``shape`` has, with the arguments the
    model test draws."""
    kind = rng.choice(shape.kinds)
    path = rng.choice(shape.paths(kind))
    if kind == "rename":
        return Op(kind, path, other=rng.choice(shape.renames))
    if kind == "write":
        return Op(kind, path, offset=rng.randrange(17),
                  data=rng.randbytes(rng.randrange(1, 9)), flag=rng.random() < 0.5)
    if kind == "create":
        return Op(kind, path, flag=rng.random() < 0.5)
    if kind == "truncate":
        return Op(kind, path, size=rng.randrange(25))
    return Op(kind, path)
