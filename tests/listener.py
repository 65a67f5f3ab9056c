"""Bare TCP servers for tests about what reached a port: a listener that records every byte
(proving nothing reached "the other port"), an HTTP server that never answers (a request
held on its way), and a proxy that holds what clients send and lets it through later (a
partition that drops packets silently, then heals)."""

from __future__ import annotations

import socket
import threading


class _Acceptor:
    """A TCP server on 127.0.0.1 whose accept loop hands each connection to `_accepted`."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(2)
        self.sock.close()


class Listener(_Acceptor):
    """A bare TCP listener that records every connection and byte it gets."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        self.connections += 1
        conn.settimeout(0.5)
        try:
            while chunk := conn.recv(4096):
                self.received += chunk
        except OSError:
            pass
        conn.close()


class HoldingServer(_Acceptor):
    """An HTTP server that reads each request and never answers, and says how each connection
    ended: `reset` (RST: the sender discarded it), `closed` (FIN), or still open."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.ends: list[str] = []
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def _accepted(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._hold, args=(conn,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        data = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    self.ends.append("reset")
                    return
                if not chunk:
                    self.ends.append("closed")
                    return
                data += chunk
                if b"\r\n\r\n" in data and data not in self.requests:
                    self.requests.append(data)


class DelayingProxy(_Acceptor):
    """A TCP proxy to a server on 127.0.0.1 that delays what clients send as a silent
    partition does: while `holding`, each connection's bytes are kept (the sender's kernel
    keeps what was not acknowledged and sends it again), and `release()` sends them on, as
    TCP does once the partition heals, also for a connection its client closed meanwhile (a
    closed socket's unsent data still goes). `settled()`: every released connection whose
    client had gone has had the server's answer and its close."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.holding = False
        self._lock = threading.Lock()
        self._held: dict[socket.socket, bytearray] = {}  # upstream -> bytes kept
        self._gone: set[socket.socket] = set()  # upstreams whose client closed
        self._released: set[socket.socket] = set()  # let through after their client went
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        for pump in (self._forward, self._answer):
            thread = threading.Thread(target=pump, args=(conn, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _forward(self, conn: socket.socket, upstream: socket.socket) -> None:
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            with self._lock:
                kept = upstream in self._held
                if chunk and (self.holding or kept):  # in order: behind what is kept
                    self._held.setdefault(upstream, bytearray()).extend(chunk)
                    continue
                if not chunk:
                    self._gone.add(upstream)
            if not chunk:
                if not kept:
                    _shut(upstream)
                return
            upstream.sendall(chunk)

    def _answer(self, conn: socket.socket, upstream: socket.socket) -> None:
        upstream.settimeout(0.1)
        try:
            while not self._stop.is_set():
                try:
                    data = upstream.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                if upstream not in self._gone:
                    conn.sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._released.discard(upstream)
            for sock in (conn, upstream):
                sock.close()

    def release(self) -> None:
        """Stop holding and send every connection's kept bytes on to the server."""
        with self._lock:
            self.holding = False
            held, self._held = self._held, {}
            for upstream, data in held.items():
                upstream.sendall(data)
                if upstream in self._gone:
                    self._released.add(upstream)
                    _shut(upstream)

    def held(self) -> int:
        """How many connections have bytes kept (sent while holding, not released)."""
        with self._lock:
            return sum(1 for data in self._held.values() if data)

    def settled(self) -> bool:
        with self._lock:
            return not self._released


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
