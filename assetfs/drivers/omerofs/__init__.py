"""OMERO.fs driver: a read-only view of the tree an OMERO.fs ``FileServer`` exposes, kept
coherent by the events its ``MonitorServer`` pushes (``omero.grid.monitors`` over ZeroC Ice).

URL forms (the path is an absolute path *on the server machine*; fileIds are host paths)::

    omerofs://HOST:PORT/absolute/path      FileServer at "FileServer:tcp -h HOST -p PORT"
    omerofs:///absolute/path  -o fileserver=PROXY[,monitor=PROXY][,locator=PROXY]

Mount options (``-o key=value``; times in seconds, sizes in bytes):

- ``fileserver``: an Ice proxy string for the FileServer (``FileServer:tcp -h h -p 4064`` or,
  behind IceGrid, ``FileServer@FileServerAdapter`` with ``locator``). Overrides HOST:PORT.
- ``monitor``: the MonitorServer, as ``HOST:PORT``, ``PORT`` or an Ice proxy string. Default:
  the FileServer's host at PORT+1 (the stock servers are two processes on two ports).
  ``monitor=off`` disables events (the VFS then relies on its metadata timeouts).
- ``fileserver_id`` / ``monitor_id``: object identities (default ``FileServer`` /
  ``MonitorServer``, the stock ``omero.fs.*ServerIdString``).
- ``locator``: ``Ice.Default.Locator``, e.g. ``IceGrid/Locator:tcp -h grid -p 4061``.
- ``call_timeout``: Ice invocation timeout of one call (default 10); ``connect_timeout``
  (default 5). The mount's own ``-o timeout=`` bounds a whole request, retries included.
- ``sha1_timeout``: invocation timeout of ``getSHA1``, which reads the whole file on the
  server (default 300).
- ``block_size``: bytes per ``readBlock`` call (default 256 KiB: small calls pipeline best
  against the single-threaded server, measured). The Ice message limit of our
  communicator is raised to fit (the server's replies are bounded by *our* MessageSizeMax, and
  with Ice's default of 1024 KB a 1 MiB reply raises ``Ice.MemoryLimitException``).
- ``read_parallel``: ``readBlock`` calls in flight for one :meth:`OmeroFSDriver.read`, and in
  the fetch process over all its requests (default 4).
- ``callback_host``: address our ``MonitorClient`` adapter listens on (default ``127.0.0.1``;
  set it to an address the MonitorServer can reach when it runs on another machine).
- ``monitor_check``: seconds between liveness checks of the MonitorServer (default 1).
- any ``Ice.*`` / ``IceSSL.*`` key is passed to the Ice communicator as a property.

The block cache's reads (:meth:`OmeroFSDriver.read_into`) run in a fetch process of their own
(:mod:`.fetch`, :mod:`.fetch_process`), which writes the bytes straight into the cache files:
in the daemon, Ice's reply unmarshalling and the FUSE request path compete for one GIL.

Modules: :mod:`.driver` (the driver: URL, options, metadata and data calls), :mod:`.ice`
(the communicator, error translation, awaiting Ice calls from trio), :mod:`.entries`
(stats to entries and their versions), :mod:`.monitor` (the change feed), :mod:`.fetch` and
:mod:`.fetch_process` (the fetch process, each side).

Quirks of the real servers this driver is shaped by (see docs/backends/omero-fs.md):

- ``getBulkDirectory`` stats names relative to the server's working directory, so listings
  are ``getDirectory`` plus one ``getStats`` per child, issued in parallel (AMI, no threads).
- ``isFile``/``isDir``/``fileExists`` say True for missing paths: existence is ``getStats``.
- mtimes are Ice 32-bit floats (128 s steps at today's epoch), so an entry's ``version`` is
  ``"<size>:<mtime_ns>:<ctime_ns>"`` plus, once this mount has seen a Create/Modify/Delete
  event for the path, ``":<session>.<n>"`` (a per-process id and an event counter). A change
  that keeps the size and lands in the same 128 s bucket is thus caught by its event; one made
  while no daemon runs is caught only if size, mtime or ctime bucket moved.
- errors are ``omero.OmeroFSError`` with only ``reason`` filled; the errno text inside it is the
  only way to tell ENOENT from EACCES. :func:`translate` is the one place that reads it.
- events: one Persistent monitor, PathMode Follow, event types listed explicitly (``All``
  delivers nothing); a stopped monitor cannot be restarted, so a lost one is replaced by a new
  one and a ``RESYNC`` of ``/`` is sent (events for an unreachable client are dropped, not
  replayed). ``getMonitorState`` always fails, so liveness is a ping plus "is it still the
  same connection" (a restarted server means a new connection and a forgotten monitor).
"""

from .driver import OmeroFSDriver
from .ice import translate

__all__ = ["OmeroFSDriver", "translate"]
