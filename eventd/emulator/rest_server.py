"""The REST API's HTTP plumbing: a real threaded HTTP/1.1 server with faults and recording.

It knows nothing of the Emulator: it is handed the few callables it needs (`Backend`).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from eventd.emulator.api import Reply, error
from eventd.emulator.faults import Faults
from eventd.emulator.fencing import HEADER as FENCING_HEADER
from eventd.emulator.fencing import Fences
from eventd.emulator.records import Headers, RecordedCall, redact_target

logger = logging.getLogger(__name__)

CONTROL_PREFIX = "/_emulator"


@dataclass(frozen=True)
class Backend:
    """What the REST server calls: the API, the credential check, recording, control, faults."""

    #: (method, path, query, body, user agent) -> reply
    api: Callable[[str, str, dict[str, str], Any, str], Reply]
    authorized: Callable[[str | None], bool]
    record: Callable[[RecordedCall], None]
    #: (method, path, raw body, query, content type, client address) -> reply
    control: Callable[[str, str, bytes, dict[str, str], str, str], Reply]
    faults: Faults
    #: refuse a write (any method but GET) whose fencing token is stale, with 409
    fences: Fences | None = None


class _Server(ThreadingHTTPServer):
    """Tracks open sockets so that stop() can end keep-alive connections and join threads."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        self.backend = backend
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that failed the TLS handshake (or hung up) is one line, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError)):
            logger.info("REST connection from %s ended: %s", client_address[0], exc)
            return
        super().handle_error(request, client_address)

    def end_connections(self) -> None:
        """Wake every handler blocked on a kept-alive connection."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one write per answer: avoids the Nagle / delayed-ACK stall of 40 ms
    server: _Server
    timeout = 120

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Access lines are replaced by one line per call from _handle."""

    def _handle(self, method: str) -> None:
        backend = self.server.backend
        split = urlsplit(self.path)
        path, query = split.path, dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            self._send(backend.control(method, path, raw, query,
                                       _media_type(self.headers.get("Content-Type")),
                                       str(self.client_address[0])))
            return
        headers = Headers(self.headers.items())
        faults = backend.faults
        if faults.rest_delay > 0:
            time.sleep(faults.rest_delay)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        failure = faults.take_rest_failure()
        reply: Reply
        if failure is not None:
            reply = error(failure.status, f"emulated failure: HTTP {failure.status}")
            if failure.retry_after is not None:
                reply.headers["Retry-After"] = failure.retry_after
        elif not backend.authorized(headers.get("Authorization")):
            reply = error(401, "Unauthorized")
        elif raw and _media_type(headers.get("Content-Type")) != "application/json":
            reply = error(415, "Unsupported Media Type: send Content-Type: application/json")
        elif raw and body is None and raw.strip() != b"null":
            reply = error(400, "the request body is not valid JSON")
        elif backend.fences is not None and method != "GET" \
                and backend.fences.refuses(headers.get(FENCING_HEADER)):
            reply = error(409, "stale or malformed fencing token: a newer lease holder exists")
        else:
            reply = backend.api(method, path, query, body, headers.get("User-Agent") or "")
        backend.record(RecordedCall(method=method, path=path, query=query,
                                    headers=headers, json=body, status=reply.status,
                                    peer=f"{self.client_address[0]}:{self.client_address[1]}",
                                    at=time.monotonic()))
        logger.info("REST %s %s -> %d", method, redact_target(self.path), reply.status)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body).encode() if reply.body is not None else b""
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


class RestServer:
    """Serves the REST API (and the control endpoint) on a background thread."""

    def __init__(self, backend: Backend, host: str, port: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self._server = _Server((host, port), backend)
        if tls is not None:  # the TLS handshake happens on the handler's first read, on its thread
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self.scheme = "https" if tls is not None else "http"
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve on a thread."""
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="emulator-rest", daemon=True)
        self._thread.start()
        logger.info("REST server listening on %s://%s:%d/", self.scheme, self.host, self.port)

    def stop(self) -> None:
        """Stop serving, end kept-alive connections and join every thread."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.end_connections()
        self._server.server_close()
