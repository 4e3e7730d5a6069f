"""The project's exception types: one errno each.

Drivers translate their wire-level errors (HTTP status, Ice ``OmeroFSError.reason``,
gRPC status, ``omni.client.Result``) into these in exactly one place per driver; the VFS
turns them into ``pyfuse3.FUSEError(exc.errno)``.
"""

from __future__ import annotations

import errno

from .localio import pwrite_all


class AssetFSError(Exception):
    """Base class. ``errno`` is the POSIX error the kernel sees for it."""

    errno: int = errno.EIO
    logged: bool = False
    """Set once the failure was logged (by the driver call layer, assetfs/remote.py), so
    the FUSE layer does not log it again."""

    permanent: bool = False
    """True when retrying the same call cannot succeed (the store's answer will not change
    by itself): an upload failing so is not retried, its bytes are saved elsewhere
    (cache/writeback.py). Each class has a default; a driver's translation point may
    decide otherwise for one error (``permanent=`` when raising)."""

    def __init__(
        self, message: str = "", *, url: str | None = None, permanent: bool | None = None
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.url = url
        if permanent is not None:
            self.permanent = permanent

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.url})" if self.url else text


class NotFound(AssetFSError):
    """The path does not exist on the store (for an upload: its folder is gone)."""

    errno = errno.ENOENT
    permanent = True


class AlreadyExists(AssetFSError):
    """The target name is taken."""

    errno = errno.EEXIST


class PermissionDenied(AssetFSError):
    """The store refused the operation for this user."""

    errno = errno.EACCES


class NotSupported(AssetFSError):
    """The store (or this provider of it) cannot do this operation at all."""

    errno = errno.EOPNOTSUPP


class ReadOnly(AssetFSError):
    """The store is read-only."""

    errno = errno.EROFS


class NotADirectory(AssetFSError):
    """A path component, or the target, is a file where a folder is needed."""

    errno = errno.ENOTDIR
    permanent = True


class IsADirectory(AssetFSError):
    """The target is a folder where a file is needed."""

    errno = errno.EISDIR
    permanent = True


class DirectoryNotEmpty(AssetFSError):
    """rmdir of a folder that has children."""

    errno = errno.ENOTEMPTY


class CrossDevice(AssetFSError):
    """A rename between two stores of one mount (the store and its local trash,
    assetfs/routing.py)."""

    errno = errno.EXDEV


class InvalidName(AssetFSError):
    """The store rejects this name."""

    errno = errno.EINVAL
    permanent = True


class Locked(AssetFSError):
    """Someone else holds a lock on the item."""

    errno = errno.EBUSY


class FileBusy(AssetFSError):
    """The file is open in a way that excludes this open: a writer of a file whose open
    readers read the store's local copy through the kernel (vfs/passthrough.py)."""

    errno = errno.ETXTBSY


class NoSpace(AssetFSError):
    """The cache (or the store) has no room for the data."""

    errno = errno.ENOSPC


class Unavailable(AssetFSError):
    """The store cannot be reached right now; the call may succeed if retried."""

    errno = errno.EIO


class TimedOut(Unavailable):
    """A remote call passed its deadline."""

    errno = errno.ETIMEDOUT


class BadOption(AssetFSError):
    """A ``-o`` option nobody declared, or a value that does not parse."""

    errno = errno.EINVAL


class BadURL(AssetFSError):
    """The mount URL is malformed or names an unknown scheme."""

    errno = errno.EINVAL


def pwrite_local(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` of ``data`` at ``offset`` (bytes) into a local file, the cache's: a full
    disk or quota becomes :class:`NoSpace` (the writer gets ENOSPC, not EIO); other
    ``OSError`` s propagate. Short writes are looped (localio.py)."""
    try:
        pwrite_all(fd, data, offset)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace("the cache disk is full") from exc
        raise
