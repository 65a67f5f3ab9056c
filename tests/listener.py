"""Bare TCP servers for tests about what reached a port: a listener that records every byte
(proving nothing reached "the other port"), and an HTTP server that never answers (a request
held on its way)."""

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
