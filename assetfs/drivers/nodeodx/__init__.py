"""NodeODX (the REST processing node behind WebODM and pyodx) mounted as a folder of tasks.

URL: ``nodeodx://HOST:PORT/`` (http, port 3000 by default) or ``nodeodxs://HOST:PORT/``
(https, 443). The tree::

    /.node/info.json, /.node/options.json      the node's /info and /options
    /<task>/info.json                          the task info (status, progress...)
    /<task>/console.txt                        the console output; grows while it runs
    /<task>/all.zip                            the result archive, once COMPLETED
    /<task>/results/<member>                   the archive's members as files

``<task>`` is the task's name (its uuid without one; see :mod:`.tasks` for repeats and
names that cannot be file names); ``.node`` is reserved. Task folders carry
``user.assetfs.uuid``, ``status``, ``progress``, ``images_count``, ``processing_time`` and
``error`` (the errorMessage of a FAILED task); ``user.assetfs.cancel``, ``restart``
(value: optional options JSON) and ``remove`` are actions on them.

New tasks (:mod:`.staging`): ``mkdir`` stages one; files copied in are uploaded as they are
closed (the write-back's workers run several at once); ``options.json`` sets its options,
checked against ``/options`` (EINVAL at the commit, the message in the log and in the
folder's ``user.assetfs.error``). ``setfattr -n user.assetfs.commit -v 1 FOLDER``, or
creating a file named ``COMMIT`` in it (a file manager's "new document"), commits it,
once every other file there is uploaded; only then does processing start. After that the
folder is a task folder and refuses writes (EROFS). ``rm -r`` of a task removes it.

Options (``-o``):

- ``token_file=PATH``: a file (mode 0600, yours) holding the node's token; otherwise
  ``$ASSETFS_NODEODX_TOKEN``; never in the URL or ``-o token=`` (refused);
- ``poll_interval=SECONDS`` (2): how often watched folders are re-listed; infos of queued
  and running tasks are re-read at most every half of it;
- ``poll_finished=SECONDS`` (30): how long the info of a finished task is kept;
- ``call_timeout=SECONDS`` (30): connect/read/write timeout of each HTTP call;
- ``spool_dir=PATH``: where result archives are downloaded (default
  ``$XDG_CACHE_HOME/assetfs/nodeodx-spool-<mount id>``, emptied at mount and unmount);
- ``insecure``, ``ca_bundle=PATH``: TLS verification for ``nodeodxs://``.

Server quirks handled (docs/backends/nodeodx.md): errors come as HTTP 200 +
``{"error": ...}`` (translated in :func:`.client.node_error` only); the token only as
``?token=`` (log lines redact query strings); no Range, so archives are fetched whole
once (:mod:`.archive`); no push events, so changes are polled; a task is invisible before
its commit and a failed commit drops the upload session; a restarted node may lose
upload sessions (re-opened, lost images must be copied again before a commit), tasks
(their folders vanish) or result folders (``all.zip`` and ``results/`` vanish).
"""

from .client import TOKEN_ENV
from .driver import NodeODXDriver

__all__ = ["TOKEN_ENV", "NodeODXDriver"]
