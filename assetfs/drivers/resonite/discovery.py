"""Finding the Resonite IO mod's Unix socket the way the official ``resonite-io`` client
finds it (docs/backends/resonite.md, Transport and socket discovery).

``$RESONITE_IO_SOCKET`` (a full path; empty counts as unset) wins; otherwise the folder
``$RESONITE_IO_SOCKET_DIR`` (else ``~/.resonite-io``) is searched for
``resonite-*.sock``, skipping sockets named after a pid that is not alive (names whose
middle part is not a number are kept). None found, or more than one: an error naming the
variable to set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ... import errors

SOCKET_ENV = "RESONITE_IO_SOCKET"
DIR_ENV = "RESONITE_IO_SOCKET_DIR"
DEFAULT_DIR = "~/.resonite-io"


class SocketNotFound(errors.Unavailable):
    """No live socket of the game was found (the game is not running, or not yet)."""


class AmbiguousSocket(errors.Unavailable):
    """Several live game sockets were found; the user must pick one."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _live(sock: Path) -> bool:
    middle = sock.name[len("resonite-"):-len(".sock")]
    return not middle.isdigit() or _alive(int(middle))


def socket_dir(environ: Mapping[str, str]) -> Path:
    """The folder searched when ``$RESONITE_IO_SOCKET`` is not set."""
    return Path(os.path.expanduser(environ.get(DIR_ENV) or DEFAULT_DIR))


def find_socket(environ: Mapping[str, str] = os.environ) -> Path:
    """The socket path to connect to.

    Raises :class:`SocketNotFound` (no live ``resonite-*.sock``) or
    :class:`AmbiguousSocket` (several), each a one-line message naming
    ``RESONITE_IO_SOCKET``/``RESONITE_IO_SOCKET_DIR`` and ``-o socket``.
    """
    explicit = environ.get(SOCKET_ENV)
    if explicit:
        return Path(explicit)
    folder = socket_dir(environ)
    live = sorted(s for s in folder.glob("resonite-*.sock") if _live(s))
    if not live:
        raise SocketNotFound(
            f"no Resonite IO socket in {folder} (is the game running with the mod? "
            f"set ${SOCKET_ENV}, ${DIR_ENV} or -o socket=PATH)"
        )
    if len(live) > 1:
        names = ", ".join(s.name for s in live)
        raise AmbiguousSocket(
            f"several Resonite IO sockets in {folder} ({names}): "
            f"choose one with ${SOCKET_ENV} or -o socket=PATH"
        )
    return live[0]
