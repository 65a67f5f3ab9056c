"""The soak's webhook receiver: keeps only what the checks need, and fails on command.

tests/receiver.py keeps every request whole; over 15 minutes at ~170 webhooks/s that is
hundreds of MiB, so the soak has this lean one: per request the arrival time, the status it
answered, the `Idempotency-Key` and the event uuid from the body. It can be down (not
listening, kept-alive connections cut) and answer a scripted run of statuses (503, 429 with
Retry-After) before it answers 200 again.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One request: when it arrived, what it was answered, its key and its event's uuid."""

    t: float
    status: int
    key: str
    uuid: str


class SoakReceiver:
    """A webhook receiver on a fixed port of 127.0.0.1 that can go down and come back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.hits: list[Hit] = []
        self.ok = 0  # 2xx answers so far
        self.lock = threading.Lock()
        self._script: list[tuple[int, dict[str, str]]] = []
        self.script_done_at: float | None = None  # when the last scripted failure was answered
        self._connections: set[Any] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{self.name}"

    def start(self) -> None:
        """Listen (on the same port as before, if it ran before)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # one write per answer: no Nagle / delayed-ACK stall
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    uuid = str(json.loads(body).get("uuid", ""))
                except (ValueError, AttributeError):
                    uuid = ""
                status, headers = receiver._answer()
                receiver.record(Hit(time.time(), status, self.headers.get("Idempotency-Key", ""),
                                    uuid))
                payload = b'{"ok":true}' if status < 300 else b'{"error":"soak fault"}'
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with receiver.lock:
                    receiver._connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with receiver.lock:
                    receiver._connections.discard(request)
                super().shutdown_request(request)

        server = Server(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"receiver-{self.name}")
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections: the target is down."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def fail_next(self, status: int, count: int, headers: dict[str, str] | None = None) -> None:
        """Answer `status` (with `headers`) to the next `count` requests."""
        with self.lock:
            self._script.extend([(status, dict(headers or {}))] * count)
            self.script_done_at = None

    def script_left(self) -> int:
        with self.lock:
            return len(self._script)

    def _answer(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            if self._script:
                answer = self._script.pop(0)
                if not self._script:
                    self.script_done_at = time.time()
                return answer
        return 200, {}

    def record(self, hit: Hit) -> None:
        with self.lock:
            self.hits.append(hit)
            if hit.status < 300:
                self.ok += 1
