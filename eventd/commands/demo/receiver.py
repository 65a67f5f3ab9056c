"""A real HTTP receiver that records what arrives and answers as scripted: the demo's Slack.

Stands in for Slack, Alertmanager or any JSON endpoint, for `eventd demo`, `eventd receive`
and the tests (`tests/receiver.py` imports it): one implementation, so what the tests check
is what a user watches. It can be stopped and started again on the same port, to test a
receiver that is down and then comes back.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 200  # what the receiver answered
    at: float = 0.0  # time.monotonic() when it answered
    peer: str = ""  # the client's address:port

    def json(self) -> Any:
        """The body decoded as JSON (ValueError if it is not)."""
        return json.loads(self.body)

    def text(self) -> str:
        """What a person reads of it: a chat `text`/`message`/`summary`, else the body, short."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return self.body.decode("utf-8", "replace")[:200]
        if isinstance(data, dict):
            for key in ("text", "message", "summary", "content"):
                if isinstance(data.get(key), str):
                    return str(data[key])
        return json.dumps(data)[:200]

    def header(self, name: str) -> str | None:
        """A header's value, whatever its case; None if absent."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class WebhookReceiver:
    """Records requests; `respond_with(status, count, headers)` scripts the next answers,
    `down_for(seconds)` refuses connections for a while and then comes back by itself.
    `screen(request)` may decide a request's status before the script does (a server that
    refuses a stale fencing token with 409, say); None lets the script answer."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_request: Callable[[Received], None] | None = None,
                 screen: Callable[[Received], int | None] | None = None) -> None:
        self.host = host
        self.port = port
        self.on_request = on_request  # called after each request is recorded, before the answer
        self.screen = screen
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._script: list[tuple[int, dict[str, str], bytes]] = []
        self._hold = threading.Event()  # set: answers wait (a stalled endpoint)
        self._released = threading.Event()  # never set: something to wait on with a timeout
        self._connections: set[Any] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._comeback: threading.Timer | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> WebhookReceiver:
        """Listen (on the same port as before after a `stop()`); OSError if it is taken."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # one write per answer: no Nagle / delayed-ACK stall of 40 ms

            def log_message(self, *args: Any) -> None:  # silence access logs
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                while receiver._hold.is_set() and receiver._server is not None:
                    receiver._released.wait(0.05)
                peer = f"{self.client_address[0]}:{self.client_address[1]}"
                refused = None if receiver.screen is None else receiver.screen(
                    Received(self.command, self.path, dict(self.headers.items()), body,
                             peer=peer))
                if refused is None:
                    status, headers, payload = receiver._next_answer()
                else:
                    status, headers, payload = refused, {}, json.dumps({"status": refused}).encode()
                received = Received(self.command, self.path, dict(self.headers.items()), body,
                                    status, time.monotonic(), peer)
                with receiver._lock:
                    receiver._requests.append(received)
                if receiver.on_request is not None:
                    receiver.on_request(received)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with receiver._lock:
                    receiver._connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with receiver._lock:
                    receiver._connections.discard(request)
                super().shutdown_request(request)

        self._server = Server((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"receiver-{self.port}")
        self._thread.start()
        return self

    def down_for(self, seconds: float) -> None:
        """Stop now, and start again on the same port after `seconds` (a scripted outage)."""
        self.stop()
        self._comeback = threading.Timer(seconds, self.start)
        self._comeback.daemon = True
        self._comeback.start()

    def stop(self) -> None:
        """Stop listening (connections are refused until `start()` again, same port)."""
        comeback, self._comeback = self._comeback, None
        if comeback is not None and comeback is not threading.current_thread():
            comeback.cancel()
            comeback.join(5)
        server, self._server = self._server, None
        self._hold.clear()
        if server is not None:
            server.shutdown()
            server.server_close()
            # A stopped receiver must be down for kept-alive clients too.
            with self._lock:
                connections, self._connections = self._connections, set()
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- script and records ----------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def respond_with(self, status: int, count: int = 1, headers: dict[str, str] | None = None,
                     body: Any = None) -> None:
        """Answer the next `count` requests with `status` (then 200 again)."""
        payload = json.dumps(body if body is not None else {"status": status}).encode()
        with self._lock:
            self._script.extend([(status, dict(headers or {}), payload)] * count)

    def stall(self, stalled: bool = True) -> None:
        """Hold every answer until `stall(False)`: an endpoint that accepts but never replies."""
        if stalled:
            self._hold.set()
        else:
            self._hold.clear()

    def _next_answer(self) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            if self._script:
                return self._script.pop(0)
        return 200, {}, b'{"ok": true}'

    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    @property
    def requests(self) -> list[Received]:
        """Every request received so far, in order."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self._requests.clear()
