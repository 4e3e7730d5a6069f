"""Where a file manager's "Move to Trash" goes on a mount (``-o trash=off|server|local``).

GIO (and so Nautilus, Thunar, PCManFM, Caja, Nemo, ``gio trash``) trashes a file of a
filesystem other than the home one into a folder at the top of that filesystem, following
the freedesktop.org Trash specification: ``$topdir/.Trash/$uid`` if an administrator made
``.Trash`` (sticky), else ``$topdir/.Trash-$uid``, which it creates (and uses only when its
owner is the user); it writes ``info/NAME.trashinfo`` there, then renames the file into
``files/`` (a rename on the same filesystem: EXDEV makes GIO fail, it never copies). On a
mount that means a trash folder on the asset server: one per user who ever pressed Delete
on a shared store, and files that never go away.

- ``off`` (the default): the mount has no trash. Those names at the top of the mount are
  not shown and cannot be created (EACCES), so GIO answers "Unable to find or create trash
  directory" before it has touched anything, and file managers offer to delete at once
  instead. A trash folder already on the store stays there, untouched and unseen.
- ``server``: allowed, as on any filesystem: the trash lives on the store.
- ``local``: ``/.Trash-$uid`` (``$uid``: the daemon's user) is a folder on this machine,
  under the mount's cache directory (assetfs/routing.py sends every call under it to a
  local folder, so no ``.Trash*`` name ever reaches the store); the other trash names
  behave as with ``off``. A rename between the store and that folder moves the content
  (vfs/crossing.py): into the trash, the file's bytes are kept here and it is deleted from
  the store; out of it (restore), it is uploaded by the write-back like a new file.

docs/desktop.md tells users which to choose.
"""

from __future__ import annotations

import re

from .. import errors
from ..drivers.base import split

_TRASH_NAME = re.compile(r"^\.Trash(-\d+)?$")
MODES = ("off", "server", "local")
"""The values of ``-o trash``."""


class TrashPolicy:
    """The trash rule of one mount: ``mode`` is one of :data:`MODES`; ``uid`` is the
    user whose ``.Trash-$uid`` is local with ``mode="local"`` (the daemon's)."""

    def __init__(self, mode: str, uid: int = 0) -> None:
        self.mode = mode
        self.local_name = f".Trash-{uid}"
        """The top-level name of the local trash (``mode="local"``)."""

    def local(self, path: str) -> bool:
        """Whether ``path`` (a store path, ``/`` is the top of the mount) is the local trash
        folder or inside it."""
        return self.mode == "local" and (path == "/" + self.local_name
                                         or path.startswith(f"/{self.local_name}/"))

    def hides(self, path: str) -> bool:
        """Whether ``path`` is a trash folder the mount does not show (all of them with
        ``off``, those of the store and of other users with ``local``)."""
        if self.mode == "server" or path == "/":
            return False
        parent, name = split(path)
        return (parent == "/" and _TRASH_NAME.match(name) is not None
                and not (self.mode == "local" and name == self.local_name))

    def check_create(self, path: str) -> None:
        """Refuse to create a hidden trash folder at ``path``: raises
        :class:`~assetfs.errors.PermissionDenied` (EACCES)."""
        if self.hides(path):
            raise errors.PermissionDenied(
                f"{split(path)[1]}: this mount has no such trash (-o trash={self.mode}); "
                "delete instead")
