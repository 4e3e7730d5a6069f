"""Driver registry: URL scheme -> driver class, through the ``assetfs.drivers`` entry points.

A third party adds a backend by declaring, in its own package metadata::

    [project.entry-points."assetfs.drivers"]
    myscheme = "mypackage.driver:MyDriver"
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from urllib.parse import urlsplit

from .. import errors
from .base import Driver

GROUP = "assetfs.drivers"


def available() -> dict[str, EntryPoint]:
    """All registered schemes and the entry point that provides each."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def scheme_of(url: str) -> str:
    """The lower-cased scheme of ``url``. Raises :class:`~assetfs.errors.BadURL`."""
    scheme = urlsplit(url).scheme.lower()
    rest = url[len(scheme) + 1 :]
    if not scheme or (rest and not rest.startswith("/")):
        raise errors.BadURL(
            f"not a URL (expected SCHEME://HOST/PATH, SCHEME:/PATH or SCHEME:): {url!r}")
    return scheme


def driver_class(url: str) -> type[Driver]:
    """The driver class for ``url``'s scheme.

    Raises BadURL for a malformed URL or an unknown scheme, and NotSupported (with the
    ``pip install`` hint) when the driver's backend library is not installed.
    """
    scheme = scheme_of(url)
    entry = available().get(scheme)
    if entry is None:
        known = ", ".join(sorted(available())) or "none"
        raise errors.BadURL(f"unknown URL scheme {scheme!r} (known: {known})")
    try:
        cls = entry.load()
    except ImportError as exc:
        raise errors.NotSupported(
            f"the {scheme}: driver needs a library that is not installed ({exc.name}); "
            f"install it with: pip install 'assetfs[{entry.extras[0] if entry.extras else scheme}]'"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise errors.BadURL(f"entry point {entry.value} is not an assetfs driver")
    return cls
