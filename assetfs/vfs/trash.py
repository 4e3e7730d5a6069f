"""Where a file manager's "Move to Trash" goes on a mount (``-o trash=off|server``).

GIO (and so Nautilus, Thunar, PCManFM, Caja, Nemo, ``gio trash``) trashes a file of a
filesystem other than the home one into a folder at the top of that filesystem, following
the freedesktop.org Trash specification: ``$topdir/.Trash/$uid`` if an administrator made
``.Trash`` (sticky), else ``$topdir/.Trash-$uid``, which it creates; then it moves the file
into its ``files/`` folder (a rename on the same filesystem). On a mount that means a trash
folder on the asset server: one per user who ever pressed Delete on a shared store, and
files that never go away.

- ``server``: allowed, as on any filesystem: the trash lives on the store.
- ``off`` (the default): the mount has no trash. Those names at the top of the mount are
  not shown and cannot be created (EACCES), so GIO answers "Unable to find or create trash
  directory" before it has touched anything, and file managers offer to delete at once
  instead. A trash folder already on the store stays there, untouched and unseen.

docs/desktop.md tells users which to choose.
"""

from __future__ import annotations

import re

from .. import errors
from ..drivers.base import split

_TRASH_NAME = re.compile(r"^\.Trash(-\d+)?$")


class TrashPolicy:
    """The trash rule of one mount: ``mode`` is ``"off"`` or ``"server"``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def hides(self, path: str) -> bool:
        """Whether ``path`` (a store path, ``/`` is the top of the mount) is a trash folder
        the mount does not show."""
        if self.mode != "off" or path == "/":
            return False
        parent, name = split(path)
        return parent == "/" and _TRASH_NAME.match(name) is not None

    def check_create(self, path: str) -> None:
        """Refuse to create a hidden trash folder at ``path``: raises
        :class:`~assetfs.errors.PermissionDenied` (EACCES)."""
        if self.hides(path):
            raise errors.PermissionDenied(
                f"{split(path)[1]}: this mount has no trash (-o trash=off); delete instead")
