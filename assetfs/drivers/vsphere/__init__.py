"""vSphere Content Library through its classic ``/rest`` API, with ``httpx``.

URL: ``vsphere://USER@HOST[:PORT]/`` mounts every library of the server,
``vsphere://USER@HOST/LIBRARY`` one library (``/LIBRARY/ITEM`` one item). The tree is
``/<library>/<item>/<file>``: libraries and items are folders, an item's files are files.

Options (``-o``):

- ``http``: speak plain http (the test simulator); default https, port 443 (80 with http);
- ``insecure``: do not verify the server's TLS certificate; ``ca_bundle=PATH``: trust the
  PEM certificates in PATH (a self-signed vCenter);
- ``credentials=PATH``: a file holding the password (one line, or ``password=...`` and
  optionally ``user=...`` lines); it must be mode 0600 (no group/other bits) and owned by
  the caller. Otherwise the password comes from ``$ASSETFS_VSPHERE_PASSWORD``. Never argv;
- ``call_timeout=SECONDS`` (30): the connect/read/write/pool timeout of every HTTP call
  (``-o timeout`` stays the core's per-request deadline and is not passed to drivers);
- ``prepare_timeout=SECONDS`` (120): how long a download session may take to reach
  ``PREPARED`` (a real vCenter may first pull a subscribed item);
- ``keepalive=SECONDS`` (120): transfer sessions are kept alive this often while in use;
- ``item_type=TYPE`` (``file``): the type of items created by ``mkdir``;
- ``datastore=ID``: datastore id for libraries created by ``mkdir`` at the top level (else
  the storage backing of an existing library is reused);
- ``spool_dir=PATH``: scratch space for the simulator's item rebuild (see below);
- ``transfers_via_url``: send uploads and downloads to the mount URL's scheme, host and
  port instead of the address in the server's transfer URLs (a server behind a proxy or
  NAT; tests put a fault-injecting proxy in front of vcsim this way).

Transport: every REST call, upload and download goes through one ``httpx.AsyncClient``,
whose connections receive up to 1 MiB per socket read instead of httpcore's 64 KiB
(:class:`~assetfs.drivers.http.LargeReadBackend`, an httpcore network backend): the
download's cost in the daemon is mostly per read.

Units: sizes in bytes, times in seconds unless a name says ``_ns``.

Errors: every HTTP status, vAPI error type and transport failure is translated in one place,
:meth:`.rest.RestClient.error`, into :mod:`assetfs.errors` types: 401/403 -> PermissionDenied,
404 -> NotFound, ``already_exists`` -> AlreadyExists, ``invalid_argument`` -> InvalidName,
``resource_busy``/``not_allowed_in_current_state`` -> Locked, 502/503/504, connection and
read failures -> Unavailable, timeouts -> TimedOut, TLS verification failures -> a plain
AssetFSError naming ``-o ca_bundle``/``-o insecure``.

Server quirks handled here (vcsim from govmomi 0.24.2; a real vCenter may differ):

- **No ranged read**: the download endpoint ignores ``Range`` and replies 200 with the whole
  body (chunked, no Content-Length), so ``capabilities.read_mode`` is ``STREAM`` and content is
  read with :meth:`~VsphereDriver.open_stream`. :meth:`~VsphereDriver.read` still works: it
  uses a 206 reply when the server honours Range and otherwise skips to ``offset``.
- **One global lock**: the simulator serves every ``/rest`` request, data transfers included,
  under one mutex, so no other call is answered while a download or upload is in flight.
  Consumers of :meth:`open_stream` should drain it promptly; the driver never makes a second
  call while it holds a transfer open (except a keep-alive, which has a short deadline).
- **No change signal**: item ``content_version``/``size``/``last_modified_time`` never change
  and files carry no checksum, so a file's ``version`` combines the file's ``version``,
  size, checksum (when given) and how many entries share its name. On vcsim a replacement
  of the same size made by another client's item rebuild is therefore not seen as a change
  (a REST re-upload is: it adds an entry); a real vCenter bumps the file's ``version``.
- **Duplicate file names**: uploading a name that exists adds a second entry (the bytes on
  disk are replaced); listings show one file per name, the last entry. A write therefore
  removes the old file in the same update session (``updatesession/file ~action=remove``).
  The simulator answers that call by deleting the whole session and never removes the
  file; the driver detects it (the session is gone) and falls back to **rebuilding the
  item**: a hidden ``.assetfs-rebuild-*`` item receives the surviving files (spooled to
  local disk, since the global lock forbids piping a download into an upload) plus the new
  one, the old item is deleted and the new one renamed. The item id changes; the cost is
  the item's size. ``rm`` of a file uses the same path. Changes of an item are therefore
  ordered by a lock per item name (not id), and lookups and listings in the library wait
  while a rebuild runs there: between the delete and the rename the item is missing.
- **PREPARED for missing files**: preparing an unknown file name succeeds and the GET then
  fails with 500, so the file is looked up before any download session is made.
- **Error shapes**: not found is 404 with a plain-text body, ``~action=get`` of an unknown
  file is 200 ``{"value": null}``, bad JSON 400 with an empty body, file system errors 500
  plain text, duplicate item names 400 ``{"type": "...already_exists"}``; empty lists come
  back as ``{"value": null}``. Duplicate library names are allowed: the oldest keeps its
  name, the others show as ``NAME~<first 8 of id>``.
- **Lists carry ids only**: a listing costs one GET per child; they run 8 at a time.
"""

from .driver import VsphereDriver
from .rest import PASSWORD_ENV

__all__ = ["PASSWORD_ENV", "VsphereDriver"]
