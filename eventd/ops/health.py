"""The operations endpoint: /metrics, /healthz and /readyz from one small WSGI app on a thread.

`/healthz` answers 200 while the process can serve a request (a liveness probe);
`/readyz` answers 200 only when every readiness check passes, else 503 naming the check
that failed, so that an orchestrator stops routing to (or alerting on) a daemon that has
lost its stream. Shaped like prometheus_client.exposition.start_wsgi_server.

The deploy files bind it to 0.0.0.0 for scrapers and probes, so it is bounded against slow or
hostile clients: a request head must arrive whole within READ_TIMEOUT and fit in MAX_HEAD bytes,
and at most MAX_CONNECTIONS requests are served at once (more are answered 503 and closed on
the accepting thread, which never waits on a client): 2,000 half-sent requests cost no thread.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from eventd.errors import ConfigError

log = logging.getLogger(__name__)

#: The port every deployment artifact in deploy/ exposes (`--metrics-addr 0.0.0.0:9108`).
DEFAULT_PORT = 9108
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
PATHS = (METRICS_PATH, HEALTH_PATH, READY_PATH)

#: Seconds a client has to send its whole request head (and to read each part of the answer).
READ_TIMEOUT = 5.0
#: Largest request head (request line and headers) in bytes; a probe sends about 200.
MAX_HEAD = 8192
#: Requests served at once; Prometheus and two probes need three.
MAX_CONNECTIONS = 16

#: What `ready()` returns: overall readiness and one short status string per check.
ReadyCheck = Callable[[], "tuple[bool, dict[str, str]]"]
StartResponse = Callable[..., Any]


class _BoundedHandler(WSGIRequestHandler):
    """Reads the request head within a deadline and a size cap, then serves it; no access log."""

    read_timeout = READ_TIMEOUT
    timeout = READ_TIMEOUT  # socketserver's: every later read and write on this connection
    max_head = MAX_HEAD

    def handle(self) -> None:
        head = self._read_head()
        if head is None:
            self.close_connection = True
            return
        self.rfile = io.BufferedReader(io.BytesIO(head))
        super().handle()

    def _read_head(self) -> bytes | None:
        """The request line and headers, or None (after a 408/431) when too slow or too big."""
        deadline = time.monotonic() + self.read_timeout
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0:
                self._refuse(408, "Request Timeout")
                return None
            self.connection.settimeout(left)
            try:
                chunk = self.connection.recv(4096)
            except (TimeoutError, socket.timeout):
                self._refuse(408, "Request Timeout")
                return None
            except OSError:
                return None
            if not chunk:
                return None
            head += chunk
            if len(head) > self.max_head:
                self._refuse(431, "Request Header Fields Too Large")
                return None
        self.connection.settimeout(self.read_timeout)
        return head

    def _refuse(self, status: int, reason: str) -> None:
        try:
            self.connection.sendall(f"HTTP/1.0 {status} {reason}\r\nContent-Length: 0\r\n"
                                    "Connection: close\r\n\r\n".encode("ascii"))
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """Log nothing (probes hit it every few seconds)."""


_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
         b"Connection: close\r\n\r\n")


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """A thread per request, at most `max_connections` at once, so a slow scrape never blocks a probe."""

    daemon_threads = True
    request_queue_size = 1024  # pending connections wait in the kernel, not in a thread
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:  # answered on the accepting thread: never wait on this client
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-answer is not news; anything else is logged once."""
        log.debug("metrics/health request from %s failed", client_address[0], exc_info=True)


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> Iterable[bytes]:
    data = json.dumps(body, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store")])
    return [data]


def make_app(registry: CollectorRegistry, ready: ReadyCheck) -> Callable[..., Iterable[bytes]]:
    """Build the WSGI app serving /metrics (from `registry`), /healthz and /readyz."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path not in PATHS:
            return _json(start_response, "404 Not Found",
                         {"error": "not found", "paths": list(PATHS)})
        if method not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"error": "use GET"})
        if path == METRICS_PATH:
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == HEALTH_PATH:
            return _json(start_response, "200 OK", {"status": "ok"})
        try:
            is_ready, checks = ready()
        except Exception as exc:  # a broken check must read as "not ready", not as a 500
            log.warning("readiness check raised %s: %s", type(exc).__name__, exc)
            is_ready, checks = False, {"readiness": f"error: {type(exc).__name__}"}
        body = {"ready": bool(is_ready), "checks": dict(checks)}
        return _json(start_response, "200 OK" if is_ready else "503 Service Unavailable", body)

    return app


def serve(host: str, port: int, registry: CollectorRegistry, ready: ReadyCheck, *,
          read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
          max_head: int = MAX_HEAD) -> tuple[WSGIServer, threading.Thread]:
    """Serve the app on host:port (port 0 picks one: see `server.server_port`) on a daemon thread.

    Raises ConfigError("cannot listen on HOST:PORT: address in use") when it cannot bind, so
    that `eventd run` says which flag to fix in one line. The caller logs where it listens.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {_display_host(host)}:{port}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]

    class Server(_ThreadingWSGIServer):
        address_family = family

    Server.max_connections = max(1, max_connections)
    handler = type("Handler", (_BoundedHandler,), {"read_timeout": read_timeout,
                                                    "timeout": read_timeout, "max_head": max_head})
    try:
        server = make_server(str(sockaddr[0]), port, make_app(registry, ready), Server,
                             handler_class=handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {_display_host(host)}:{port}: "
                          f"{bind_error_reason(exc)}") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="eventd-health", daemon=True)
    thread.start()
    return server, thread


def bind_error_reason(exc: OSError) -> str:
    """Why a bind failed, in the words of a one-line message (`address in use`)."""
    if exc.errno == errno.EADDRINUSE:
        return "address in use"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    return (exc.strerror or str(exc)).lower()


def shutdown(server: WSGIServer, thread: threading.Thread, timeout: float = 2.0) -> bool:
    """Stop serving and close the socket; return False if the thread outlived `timeout`."""
    server.shutdown()
    server.server_close()
    thread.join(timeout)
    return not thread.is_alive()


def _display_host(host: str) -> str:
    if not host or host in ("0.0.0.0", "::"):
        return host or "0.0.0.0"
    return f"[{host}]" if ":" in host else host
