"""A TCP proxy that tests can cut, to play a database outage.

``FaultProxy(host, port)`` listens on an ephemeral port (of 127.0.0.1, or of
``listen_host``: the multi-host test's bridge) and forwards every
connection to ``host:port`` on two threads (one per direction). ``cut()`` closes
every open connection in both directions and, until ``restore()``, closes new
ones as soon as they are accepted: to a driver that looks like a server that
went away, not like a timeout, so tests stay fast.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

#: Only loopback targets: a test proxy must never carry traffic off the machine.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Pair:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self._closed = False
        self.threads: list[threading.Thread] = []

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.upstream):
            # shutdown first: it wakes the pump blocked in recv on this socket,
            # which close alone does not do on Linux.
            with contextlib.suppress(OSError):  # the peer is already gone
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class FaultProxy:
    """Forward ``listen_host``:``port`` to ``target_host:target_port`` until cut."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        max_connections: int = 64,
        connect_timeout: float = 5.0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        if target_host not in LOOPBACK:
            raise ValueError(f"FaultProxy only forwards to loopback, not {target_host!r}")
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        #: Connections accepted and forwarded so far (refused ones are not counted).
        self.forwarded = 0
        #: Connections closed on accept because the proxy was cut or full.
        self.refused = 0
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._cut = False
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(128)
        self.host = listen_host
        # accept() is not woken by close() on Linux: poll instead, so stop()
        # returns within this long.
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    # -- control -------------------------------------------------------------------

    def cut(self) -> None:
        """Drop every open connection, and every new one until ``restore()``."""
        with self._lock:
            self._cut = True
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()
        self._join(pairs)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    @property
    def is_cut(self) -> bool:
        with self._lock:
            return self._cut

    def forwarded_url(self, url: str) -> str:
        """``url`` (a database URL) with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        here = f"{self.host}:{self.port}"
        return parts._replace(netloc=f"{netloc[0]}@{here}" if len(netloc) == 2 else here).geturl()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def stop(self) -> None:
        """Close everything and stop listening; waits (boundedly) for the threads."""
        self._stopping.set()
        self.cut()
        self._acceptor.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- forwarding ----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            client.settimeout(None)
            if not self._admit(client):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError:
                _drop(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                # Database protocols are small request/response messages: Nagle
                # plus delayed ACKs would add ~40 ms to each round trip.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            for src, dst, way in ((client, upstream, "up"), (upstream, client, "down")):
                thread = threading.Thread(
                    target=self._pump,
                    args=(pair, src, dst),
                    name=f"faultproxy-{self.port}-{way}",
                    daemon=True,
                )
                pair.threads.append(thread)
                thread.start()
            with self._lock:
                # Checked again: a cut() while we were connecting must win. The
                # pumps run already (cut() joins them, which needs them started).
                admitted = not (self._cut or self._stopping.is_set() or pair.closed)
                if admitted:
                    self._pairs.add(pair)
                    self.forwarded += 1
                else:
                    self.refused += 1
            if not admitted:
                pair.close()

    def _admit(self, client: socket.socket) -> bool:
        with self._lock:
            if not self._cut and len(self._pairs) < self.max_connections:
                return True
            self.refused += 1
        _drop(client)
        return False

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass  # either side closed, or cut() shut the sockets down
        finally:
            # One direction ending ends both: a half-open database connection
            # would only hang the driver.
            pair.close()
            with self._lock:
                self._pairs.discard(pair)

    def _join(self, pairs: list[_Pair]) -> None:
        current = threading.current_thread()
        for pair in pairs:
            for thread in pair.threads:
                if thread is not current:
                    thread.join(timeout=5)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the peer is already gone
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
