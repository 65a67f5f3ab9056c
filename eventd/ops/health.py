"""The operations endpoint: /metrics, /healthz and /readyz from one small WSGI app on a thread.

`/healthz` answers 200 while the process can serve a request (a liveness probe);
`/readyz` answers 200 only when every readiness check passes, else 503 naming the check
that failed, so that an orchestrator stops routing to (or alerting on) a daemon that has
lost its stream. Shaped like prometheus_client.exposition.start_wsgi_server.

The deploy files bind it to 0.0.0.0 for scrapers and probes, so it is bounded against slow or
hostile clients: a request head must arrive whole within READ_TIMEOUT and fit in MAX_HEAD bytes.
Heads are read by one thread for every connection (non-blocking, `_HeadReader`), so an idle or
half-sent connection costs a socket, never a thread or a serving slot: at most MAX_PENDING wait
there, the oldest answered 503 and closed when more come. Only a whole head takes a slot: at most
MAX_CONNECTIONS requests are served at once, and probes (/healthz, /readyz) have PROBE_SLOTS of
their own, so neither idle connections nor slow requests hold a liveness probe at 503.
A request body (the console's POSTs: `mounts`) must say its Content-Length, at most MAX_BODY
bytes, and arrive within the same READ_TIMEOUT (else 411, 413 or 408).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import selectors
import socket
import threading
import time
from collections import deque
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
#: Largest request body in bytes (a silence the console creates is about 500).
MAX_BODY = 16 * 1024
#: Connections whose head is still arriving; past this the oldest is answered 503 and closed.
MAX_PENDING = 256
#: /healthz and /readyz requests served at once beside MAX_CONNECTIONS (kept for the probes).
PROBE_SLOTS = 4
PROBE_PATHS = (HEALTH_PATH, READY_PATH)

#: What `ready()` returns: overall readiness and one short status string per check.
ReadyCheck = Callable[[], "tuple[bool, dict[str, str]]"]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _BoundedHandler(WSGIRequestHandler):
    """Reads the request head within a deadline and a size cap, then serves it; no access log."""

    read_timeout = READ_TIMEOUT
    timeout = READ_TIMEOUT  # socketserver's: every later read and write on this connection
    max_head = MAX_HEAD
    max_body = MAX_BODY

    def handle(self) -> None:
        head = self.server.heads.pop(self.request, None) if hasattr(self.server, "heads") \
            else None
        head = head if head is not None else self._read_head()
        if head is None or (head := self._with_body(head)) is None:
            self.close_connection = True
            return
        self.rfile = io.BufferedReader(io.BytesIO(head))
        super().handle()

    def _with_body(self, head: bytes) -> bytes | None:
        """The head and the whole body its Content-Length announces, or None (after a 408,
        411 or 413) when it is too slow, too big or of unknown length."""
        ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
        end = min(ends) + (4 if head[min(ends):min(ends) + 2] == b"\r\n" else 2)
        fields = {name.strip().lower(): value.strip() for name, _, value in (
            line.partition(b":") for line in head[:end].splitlines()[1:])}
        if b"transfer-encoding" in fields:
            self._refuse(411, "Length Required")
            return None
        length = fields.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            self._refuse(413 if length.isdigit() else 400,
                         "Content Too Large" if length.isdigit() else "Bad Request")
            return None
        data, deadline = head, time.monotonic() + self.read_timeout
        while len(data) < end + int(length):
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
            except (TimeoutError, socket.timeout):
                self._refuse(408, "Request Timeout")
                return None
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        self.connection.settimeout(self.read_timeout)
        return data[:end + int(length)]

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


def _is_probe(head: bytes) -> bool:
    """Whether a request head asks for /healthz or /readyz (GET or HEAD)."""
    method, _, rest = head.split(b"\n", 1)[0].partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("latin-1")
    return method in (b"GET", b"HEAD") and path in PROBE_PATHS


class _Pending:
    """A connection whose request head is still arriving."""

    __slots__ = ("address", "deadline", "head")

    def __init__(self, address: Any, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.head = b""


class _HeadReader:
    """Reads every accepted connection's request head on one thread, without blocking on any
    client; a whole head is handed to the server (`dispatch`), a late, oversized or surplus
    one is answered (408, 431, 503) and closed here."""

    def __init__(self, server: _ThreadingWSGIServer) -> None:
        self._server = server
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, _Pending] = {}  # oldest first
        self._incoming: deque[tuple[socket.socket, Any]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="eventd-health-heads",
                                       daemon=True)

    def add(self, sock: socket.socket, address: Any) -> None:
        """Read this connection's head (called on the accepting thread)."""
        self._incoming.append((sock, address))
        self._wake()

    def close(self) -> None:
        """Stop reading; close every connection still waiting."""
        self._closed = True
        self._wake()
        self.thread.join(2)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # its buffer is full: the reader is awake anyway

    def _run(self) -> None:
        try:
            while not self._closed:
                self._admit()
                timeout = 0.2
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                self._expire()
        finally:
            for sock in list(self._pending):
                self._drop(sock)
            while self._incoming:
                self._server.shutdown_request(self._incoming.popleft()[0])
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _admit(self) -> None:
        while self._incoming:
            sock, address = self._incoming.popleft()
            sock.setblocking(False)
            self._pending[sock] = _Pending(address,
                                           time.monotonic() + self._server.read_timeout)
            self._selector.register(sock, selectors.EVENT_READ)
            while len(self._pending) > self._server.max_pending:
                self._drop(next(iter(self._pending)), _BUSY)  # the oldest gives way

    def _read(self, sock: socket.socket) -> None:
        pending = self._pending.get(sock)
        if pending is None:
            return
        try:
            chunk = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(sock)
            return
        pending.head += chunk
        head = pending.head
        if len(head) > self._server.max_head:
            self._drop(sock, _answer(431, "Request Header Fields Too Large"))
        elif b"\r\n\r\n" in head or b"\n\n" in head:
            self._selector.unregister(sock)
            del self._pending[sock]
            self._server.dispatch(sock, pending.address, head)

    def _expire(self) -> None:
        now = time.monotonic()
        for sock, pending in list(self._pending.items()):
            if pending.deadline > now:
                break  # oldest first: the rest came later
            self._drop(sock, _answer(408, "Request Timeout"))

    def _drop(self, sock: socket.socket, answer: bytes = b"") -> None:
        self._pending.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        if answer:
            try:
                sock.send(answer)  # non-blocking: a client that reads nothing gets nothing
            except OSError:
                pass
        self._server.shutdown_request(sock)


def _answer(status: int, reason: str) -> bytes:
    return (f"HTTP/1.0 {status} {reason}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n").encode("ascii")


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """A thread per request whose head has arrived, at most `max_connections` at once plus
    PROBE_SLOTS for probes, so neither a slow scrape nor idle clients block a probe."""

    daemon_threads = True
    request_queue_size = 1024  # pending connections wait in the kernel, not in a thread
    max_connections = MAX_CONNECTIONS
    max_pending = MAX_PENDING
    read_timeout = READ_TIMEOUT
    max_head = MAX_HEAD

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._probe_slots = threading.BoundedSemaphore(PROBE_SLOTS)
        self.heads: dict[Any, bytes] = {}
        self._reader = _HeadReader(self)
        self._reader.thread.start()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        self._reader.add(request, client_address)  # its head is read without a thread

    def dispatch(self, request: socket.socket, client_address: Any, head: bytes) -> None:
        """Serve a request whose head has arrived, on a thread of its own if a slot is free
        (a probe's own slots first), else 503 at once (called on the head reader's thread)."""
        slots = self._slots
        if _is_probe(head) and self._probe_slots.acquire(blocking=False):
            slots = self._probe_slots
        elif not slots.acquire(blocking=False):
            try:
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        request.setblocking(True)
        request.settimeout(self.read_timeout)
        self.heads[request] = head
        try:
            threading.Thread(target=self._serve, args=(request, client_address, slots),
                             daemon=True).start()
        except BaseException:
            self.heads.pop(request, None)
            slots.release()
            self.shutdown_request(request)
            raise

    def _serve(self, request: Any, client_address: Any, slots: threading.BoundedSemaphore) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.heads.pop(request, None)
            slots.release()

    def server_close(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-answer is not news; anything else is logged once."""
        log.debug("metrics/health request from %s failed", client_address[0], exc_info=True)


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> Iterable[bytes]:
    data = json.dumps(body, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store")])
    return [data]


def make_app(registry: CollectorRegistry, ready: ReadyCheck,
             mounts: Iterable[tuple[str, WsgiApp]] = ()) -> Callable[..., Iterable[bytes]]:
    """Build the WSGI app serving /metrics (from `registry`), /healthz and /readyz, and each
    mount's app for the paths under its prefix (`/ui/`: also `/ui`)."""
    metrics_app = make_wsgi_app(registry)
    mounted = tuple(mounts)
    known = list(PATHS) + [prefix for prefix, _ in mounted]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        for prefix, mount in mounted:
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return mount(environ, start_response)
        if path not in PATHS:
            return _json(start_response, "404 Not Found", {"error": "not found", "paths": known})
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
          max_head: int = MAX_HEAD, mounts: Iterable[tuple[str, WsgiApp]] = (),
          ) -> tuple[WSGIServer, threading.Thread]:
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
    Server.read_timeout, Server.max_head = read_timeout, max_head
    handler = type("Handler", (_BoundedHandler,), {"read_timeout": read_timeout,
                                                    "timeout": read_timeout, "max_head": max_head})
    try:
        server = make_server(str(sockaddr[0]), port, make_app(registry, ready, mounts), Server,
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
