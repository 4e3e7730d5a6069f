"""Progress lines for the command line's long waits (a mount of a slow store, an unmount
that uploads first): nothing for a wait that ends within ``quiet`` seconds, then one line
every ``every`` seconds on stdout (where ``assetfs mount`` says it mounted: stderr keeps
the one-line reason of a failure) saying what is awaited and for how long; on a terminal
the line is rewritten in place."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Shows ``what`` (and ``detail()``, if given) while a ``with`` block waits. The
    lines come from a thread of its own, so the waiting call itself stays as it is;
    ``detail`` runs on that thread, and an exception from it shows as no detail."""

    def __init__(
        self,
        what: str,
        detail: Callable[[], str] | None = None,
        quiet: float = 2.0,
        every: float = 5.0,
        out: TextIO | None = None,
    ) -> None:
        self.what = what
        self.detail = detail
        self.quiet = quiet
        self.out = out or sys.stdout
        self.every = 1.0 if self.out.isatty() else every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="assetfs-progress", daemon=True)
        self._shown = False

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._shown and self.out.isatty():
            self.out.write("\n")
            self.out.flush()

    def line(self) -> str:
        """The progress line as it reads now."""
        text = f"assetfs: {self.what} ({time.monotonic() - self._started:.0f} s)"
        if self.detail is not None:
            try:
                extra = self.detail()
            except Exception:
                extra = ""
            if extra:
                text += f": {extra}"
        return text

    def _run(self) -> None:
        if self._stop.wait(self.quiet):
            return
        while True:
            text = self.line()
            if self.out.isatty():
                self.out.write(f"\r\033[K{text}")
            else:
                self.out.write(text + "\n")
            self.out.flush()
            self._shown = True
            if self._stop.wait(self.every):
                return
