"""The operations endpoint: /metrics, /healthz and /readyz from one small WSGI app on a thread.

`/healthz` answers 200 while the process can serve a request (a liveness probe);
`/readyz` answers 200 only when every readiness check passes, else 503 naming the check
that failed, so that an orchestrator stops routing to (or alerting on) a daemon that has
lost its stream. Shaped like prometheus_client.exposition.start_wsgi_server.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

#: The port every deployment artifact in deploy/ exposes (`--metrics-addr 0.0.0.0:9108`).
DEFAULT_PORT = 9108
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
PATHS = (METRICS_PATH, HEALTH_PATH, READY_PATH)

#: What `ready()` returns: overall readiness and one short status string per check.
ReadyCheck = Callable[[], "tuple[bool, dict[str, str]]"]
StartResponse = Callable[..., Any]


class _SilentHandler(WSGIRequestHandler):
    """A request handler that writes no access log (probes hit it every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """Log nothing."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scrape never blocks a probe."""

    daemon_threads = True


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


def serve(host: str, port: int, registry: CollectorRegistry,
          ready: ReadyCheck) -> tuple[WSGIServer, threading.Thread]:
    """Serve the app on host:port (port 0 picks one: see `server.server_port`) on a daemon thread.

    Raises OSError when the address is in use, so the caller can report the flag to fix.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]

    class Server(_ThreadingWSGIServer):
        address_family = family

    server = make_server(str(sockaddr[0]), port, make_app(registry, ready), Server,
                         handler_class=_SilentHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="eventd-health", daemon=True)
    thread.start()
    log.info("serving /metrics, /healthz and /readyz on http://%s:%d/",
             _display_host(host), server.server_port)
    return server, thread


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
