"""The console's WSGI app: `/ui/` (the page's three static files) and `/api/v1/` (eventd.console.api).

Mounted on the metrics server (eventd.ops.health), so it has that server's limits: the
request head's deadline and size, the body's size, the connection cap. Static files are a
fixed table read from the package once: a request names an entry or gets 404, so no path from
a request ever reaches the file system. Every answer carries headers that keep the page to
itself: a Content-Security-Policy allowing only its own script and style (no inline script, so
text that slipped into the page as markup still could not run), no framing, no sniffing, no
referrer, no caching.
"""

from __future__ import annotations

import functools
import json
import logging
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any

from eventd.console.api import PREFIX, Api, dump
from eventd.console.auth import token_in_query
from eventd.console.views import ConsoleContext

log = logging.getLogger(__name__)

UI = "/ui/"
API = "/api/"
_STATIC = {"": ("index.html", "text/html; charset=utf-8"),
           "index.html": ("index.html", "text/html; charset=utf-8"),
           "app.js": ("app.js", "text/javascript; charset=utf-8"),
           "app.css": ("app.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
_REASONS = {200: "OK", 201: "Created", 301: "Moved Permanently", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 415: "Unsupported Media Type",
            500: "Internal Server Error", 503: "Service Unavailable"}
StartResponse = Callable[..., Any]


def openapi() -> dict[str, Any]:
    """The API's description (eventd/console/openapi.json)."""
    return dict(json.loads(_data("openapi.json")))


def _data(name: str) -> bytes:
    """A file of this package. pkgutil reads it through the package's loader, as
    importlib.resources would, without loading importlib.resources and zipfile: 0.4 MiB of
    a daemon that streams without ever loading them otherwise (bench/smaps.py --imports)."""
    data = pkgutil.get_data(__package__ or "eventd.console", name)
    if data is None:
        raise FileNotFoundError(f"eventd.console: {name}")
    return data


class Console:
    """The WSGI app; `mounts()` is what the metrics server serves it under."""

    def __init__(self, ctx: ConsoleContext, on_close: Callable[[], None] = lambda: None) -> None:
        self.ctx = ctx
        self._on_close = on_close
        # The description is parsed when someone first asks for it (0.1 MiB of dicts).
        self.api = Api(ctx, functools.cache(openapi))
        self._files = {name: (_data(f"static/{file}"), kind) for name, (file, kind) in _STATIC.items()}

    def mounts(self) -> list[tuple[str, Callable[..., Iterable[bytes]]]]:
        """(prefix, app) pairs for eventd.ops.health.serve."""
        return [(UI, self), (API, self)]

    def close(self) -> None:
        """End the live streams (the browser reconnects to whoever serves next), stop listening."""
        self.api.closing.set()
        self._on_close()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO") or "/")
        if token_in_query(environ):
            return self._json(start_response, 400, {
                "error": "a token never goes in the URL: send Authorization: Bearer ..."})
        if path == UI.rstrip("/"):
            start_response("301 Moved Permanently", [("Location", UI), ("Content-Length", "0"),
                                                     *SECURITY_HEADERS])
            return [b""]
        if path.startswith(UI):
            return self._static(path[len(UI):], environ, start_response)
        if path == PREFIX or path.startswith(PREFIX + "/"):
            status, body = self.api.handle(environ)
            if isinstance(body, (dict, list)):
                return self._json(start_response, status, body)
            start_response("200 OK", [("Content-Type", "text/event-stream"),
                                      ("X-Accel-Buffering", "no"), *SECURITY_HEADERS])
            return body  # type: ignore[no-any-return]
        return self._json(start_response, 404, {"error": "no such API path"})

    def _static(self, name: str, environ: dict[str, Any],
                start_response: StartResponse) -> Iterable[bytes]:
        found = self._files.get(name)
        if found is None:
            return self._json(start_response, 404, {"error": "not found"})
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return self._json(start_response, 405, {"error": "use GET"})
        data, kind = found
        start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(data))),
                                  *SECURITY_HEADERS])
        return [data]

    def _json(self, start_response: StartResponse, status: int, body: Any) -> Iterable[bytes]:
        data = dump(body)
        start_response(f"{status} {_REASONS.get(status, 'Error')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        *SECURITY_HEADERS])
        return [data]
