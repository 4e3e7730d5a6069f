"""Staged tasks: a folder made by ``mkdir`` whose images go to a node upload session.

A staged task exists only in this mount until it is committed: the node keeps an upload
session invisible until ``/task/new/commit`` (docs/backends/nodeodx.md, Create in three
steps). The session is opened (``/task/new/init``, with the folder's name and the options
of ``options.json``) when the first image is uploaded; each image is one
``/task/new/upload`` request. Rules kept here:

- ``options.json`` is checked against the node's ``/options`` (names, types, enum
  domains); a problem is kept as the folder's ``error`` and refuses the commit (EINVAL);
  it cannot change once the session is open (the node takes options only at init);
- a session the node lost (restart: ``Invalid uuid``) is replaced by a new one; the images
  it held are *missing* until copied again, and the commit is refused while any is;
- an image removed after its upload cannot be taken back from the session: the commit is
  refused (``rm -r`` the folder and stage again);
- names the node would store as ``name_.jpg`` (a repeat) are shown that way.
"""

from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ... import errors
from ..base import Entry, Kind, size_mtime_version

OPTIONS_FILE = "options.json"
COMMIT_FILE = "COMMIT"
"""Creating a file of this name in a staged folder commits it (after the other files)."""


class Incomplete(errors.AssetFSError):
    """The staged task cannot be committed as it is (images missing, taken back, or none):
    EBUSY, since EAGAIN from a FUSE setxattr reaches the caller as EOPNOTSUPP."""

    errno = errno.EBUSY


def parse_options(data: bytes, offered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``options.json`` (``{"dsm": true, ...}`` or ``[{"name": .., "value": ..}]``) as the
    node's list of ``{name, value}``, checked against ``offered`` (the node's ``/options``:
    name, type bool/int/float/enum/string, enum ``domain``). Raises InvalidName naming
    the first problem."""
    try:
        given = json.loads(data.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.InvalidName(f"{OPTIONS_FILE} is not JSON: {exc}") from None
    if isinstance(given, dict):
        pairs = list(given.items())
    elif isinstance(given, list) and all(isinstance(o, dict) and "name" in o for o in given):
        pairs = [(o["name"], o.get("value")) for o in given]
    else:
        raise errors.InvalidName(
            f'{OPTIONS_FILE} must be {{"name": value, ...}} or [{{"name":..,"value":..}}]')
    known = {str(o.get("name")): o for o in offered}
    result = []
    for name, value in pairs:
        spec = known.get(str(name))
        if spec is None:
            raise errors.InvalidName(
                f"{OPTIONS_FILE}: the node has no option {name!r} (see .node/options.json)")
        problem = _check_value(spec, value)
        if problem:
            raise errors.InvalidName(f"{OPTIONS_FILE}: {name}: {problem}")
        result.append({"name": str(name), "value": value})
    return result


def _check_value(spec: dict[str, Any], value: Any) -> str | None:
    kind = spec.get("type")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if kind == "bool" and text not in ("true", "false"):
        return f"{value!r} is not a boolean (true or false)"
    if kind == "int":
        try:
            int(text)
        except ValueError:
            return f"{value!r} is not an integer"
    if kind == "float":
        try:
            float(text)
        except ValueError:
            return f"{value!r} is not a number"
    domain = spec.get("domain")
    if kind == "enum" and isinstance(domain, list) and text not in [str(d) for d in domain]:
        return f"{value!r} is not one of {', '.join(map(str, domain))}"
    return None


def stored_name(taken: set[str], name: str) -> str:
    """The name the node stores an upload under: a repeat becomes ``name_.jpg``."""
    while name in taken:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem}_.{ext}" if dot else f"{name}_"
    return name


@dataclass
class Staged:
    """One staged task folder: ``name`` is the folder (and the task's name)."""

    name: str
    created_ns: int = field(default_factory=time.time_ns)
    session: str | None = None
    """The upload session's uuid, once opened."""
    session_options: list[dict[str, Any]] | None = None
    files: dict[str, Entry] = field(default_factory=dict)
    """What the current session holds (plus options.json and COMMIT), by shown name."""
    missing: set[str] = field(default_factory=set)
    """Images a lost session held that were not uploaded again."""
    taken_back: set[str] = field(default_factory=set)
    """Images removed after their upload (the node keeps them)."""
    options: list[dict[str, Any]] | None = None
    options_text: bytes | None = None
    """The bytes of ``options.json`` as written (read back through the mount)."""
    options_error: str = ""
    error: str = ""
    """The last problem (options, commit, lost session), shown as ``user.assetfs.error``."""
    committed: str | None = None
    """The task's uuid once committed (the folder then shows the task)."""
    lock: trio.Lock = field(default_factory=trio.Lock)

    def entry(self) -> Entry:
        """The folder's entry: status ``STAGED``, images so far, the last error."""
        images = [n for n in self.files if n not in (OPTIONS_FILE, COMMIT_FILE)]
        metadata = {"status": "STAGED", "images_count": str(len(images))}
        if self.session:
            metadata["uuid"] = self.session
        if self.error:
            metadata["error"] = self.error
        return Entry(name=self.name, kind=Kind.DIR, mtime_ns=self.created_ns,
                     version=f"staged:{self.session}:{len(self.files)}:{self.error}",
                     mode=0o755, metadata=metadata)

    def file_entry(self, name: str, size: int) -> Entry:
        """The entry of a staged file of ``size`` bytes."""
        now = time.time_ns()
        return Entry(name=name, kind=Kind.FILE, size=size, mtime_ns=now,
                     version=size_mtime_version(size, now))

    def lose_session(self) -> None:
        """The node lost the session: its images become missing."""
        lost = {n for n in self.files if n not in (OPTIONS_FILE, COMMIT_FILE)}
        self.missing |= lost
        for name in lost:
            del self.files[name]
        self.session = None
        self.error = (f"the node lost the upload session (restarted?); copy these images "
                      f"again: {', '.join(sorted(self.missing))}")

    def check_committable(self) -> None:
        """Raise InvalidName (bad options) or Incomplete (missing / taken back images)."""
        if self.options_error:
            raise errors.InvalidName(self.options_error)
        if self.missing:
            raise Incomplete(
                f"{len(self.missing)} images the node lost are not uploaded again: "
                f"{', '.join(sorted(self.missing)[:10])}")
        if self.taken_back:
            raise Incomplete(
                f"images removed after upload stay in the node's session "
                f"({', '.join(sorted(self.taken_back)[:10])}): rm -r the folder and stage "
                "again")
        if not [n for n in self.files if n not in (OPTIONS_FILE, COMMIT_FILE)]:
            raise Incomplete("no images staged yet")
