"""A loopback TCP proxy that injects network faults at a test's command.

``127.0.0.1:PORT`` (``FaultProxy.port``) forwards every connection to ``127.0.0.1:target``.
The switches a test flips while traffic flows:

- :meth:`FaultProxy.cut`: reset (RST) every open connection now;
- :meth:`FaultProxy.refuse`: for ``seconds``, reset each new connection as it arrives;
- :meth:`FaultProxy.stall`: for ``seconds``, forward nothing (connections stay open, the
  bytes wait in the kernel's buffers);
- :meth:`FaultProxy.limit`: forward at most ``rate`` bytes per second per direction, so
  a transfer lasts long enough to be cut half-way;
- :meth:`FaultProxy.heal`: end every fault at once.

One thread per connection (at most :data:`MAX_CONNECTIONS`) polls its two sockets every
:data:`TICK` seconds, so a switch takes effect within a tick. :func:`proxying` stops the
proxy and its threads on exit, whatever the test did.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

TICK = 0.05
"""Seconds between checks of the switches, by every thread."""
MAX_CONNECTIONS = 64
"""Connections served at once; more are reset on arrival."""
PIECE = 64 * 1024
"""Bytes read from a socket at a time."""


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of a FIN (linger on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``; see the module docstring."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TICK)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._generation = 0
        self._refuse_until = 0.0
        self._stall_until = 0.0
        self._rate: float | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        """Connections accepted so far (reset ones included)."""
        self.forwarded = {"up": 0, "down": 0}
        """Bytes forwarded to the target (``up``) and back to clients (``down``)."""
        self._acceptor = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        self._acceptor.start()

    # --- switches -------------------------------------------------------------------
    def cut(self) -> None:
        """Reset every open connection (RST to both ends) within a tick."""
        with self._lock:
            self._generation += 1

    def refuse(self, seconds: float) -> None:
        """Reset every connection that arrives in the next ``seconds`` seconds."""
        self._refuse_until = time.monotonic() + seconds

    def stall(self, seconds: float) -> None:
        """Forward nothing, either way, for ``seconds`` seconds."""
        self._stall_until = time.monotonic() + seconds

    def limit(self, rate: float | None) -> None:
        """Forward at most ``rate`` bytes per second per connection and direction
        (None: no limit)."""
        self._rate = rate

    def heal(self) -> None:
        """End the refusal, the stall and the rate limit now."""
        self._refuse_until = self._stall_until = 0.0
        self._rate = None

    @property
    def stalled(self) -> bool:
        """True while a stall is on."""
        return time.monotonic() < self._stall_until

    # --- lifecycle ------------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting, reset every connection and join the threads (bounded)."""
        self._stopping.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        for thread in list(self._threads):
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._threads = [t for t in self._threads if t.is_alive()]
            if time.monotonic() < self._refuse_until or len(self._threads) >= MAX_CONNECTIONS:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                _reset(client)
                continue
            thread = threading.Thread(
                target=self._pump, args=(client, upstream), name="faultproxy-conn", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward both ways until either end closes (then close both), a cut or
        :meth:`close` (then reset both)."""
        generation = self._generation
        peers = {client: (upstream, "up"), upstream: (client, "down")}
        ended = False
        try:
            while not self._stopping.is_set() and generation == self._generation:
                if self.stalled:
                    time.sleep(TICK)
                    continue
                readable, _, _ = select.select(list(peers), [], [], TICK)
                for sock in readable:
                    other, direction = peers[sock]
                    rate = self._rate
                    size = PIECE if rate is None else max(1, min(PIECE, int(rate * TICK)))
                    data = sock.recv(size)
                    if not data:
                        ended = True
                        return
                    other.sendall(data)
                    with self._lock:
                        self.forwarded[direction] += len(data)
                    if rate is not None:
                        time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in peers:
                if ended:
                    sock.close()
                else:
                    _reset(sock)


@contextlib.contextmanager
def proxying(target: int) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` to ``127.0.0.1:target``, closed on exit."""
    proxy = FaultProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
