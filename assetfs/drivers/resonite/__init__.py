"""Resonite IO: the Resonite game's inventory as folders, through the Resonite IO mod's
gRPC server on a Unix socket (``grpcio``; messages from the project's ``.proto`` files,
protocol.py). Facts about the server: docs/backends/resonite.md; user guide:
docs/resonite.md.

URL: ``resonite:`` mounts ``/Inventory``; ``resonite:/Inventory/FOLDER`` one folder
(percent-encoded; ``.``, ``..`` and ``//`` are resolved here, since the server resolves
none of them).

Options (``-o``):

- ``socket=PATH``: the game's socket; otherwise ``$RESONITE_IO_SOCKET``, else the one
  live ``resonite-<pid>.sock`` in ``$RESONITE_IO_SOCKET_DIR`` (else ``~/.resonite-io``),
  found again after the game restarts (discovery.py);
- ``ready_timeout=SECONDS`` (20): how long the mount waits for ``Connection/Ping`` to stop
  answering FAILED_PRECONDITION (the game starting); the core's ``-o timeout`` (30) bounds
  the whole connect as well;
- ``call_timeout=SECONDS`` (10): the deadline of each rpc;
- ``thumbnail_cache=PATH`` (``$XDG_CACHE_HOME/assetfs/resonite-thumbnails``): the store of
  thumbnails by record id and modification time, shared by all mounts (thumbnails.py);
- ``concurrency=N`` (16): FetchThumbnail calls in flight while a folder is listed;
- ``listing_ttl=SECONDS`` (1): how old a folder's listing may be when a single name in it
  is looked up;
- ``poll_interval=SECONDS`` (5): watched folders are re-listed this often (the server has no
  change events).

Mapping: folders and links are folders; every other record is one file whose bytes are its
thumbnail, named with the image type's extension (naming.py for repeated names, ``/`` in
names and items without thumbnails). ``mkdir`` is MakeDir, ``mv`` Move, ``rm``/``rmdir``
Remove; ``setfattr -n user.assetfs.copy -v DEST`` is Copy and ``-n user.assetfs.spawn``
Spawn. Writing file contents is refused with EOPNOTSUPP (no rpc stores bytes). gRPC
status codes are translated in one place, session.py :func:`~.session.translate`.
"""

from .driver import ResoniteDriver

__all__ = ["ResoniteDriver"]
