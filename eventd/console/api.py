"""The console's HTTP API (`/api/v1/...`): JSON in and out, as `openapi.json` describes it.

GETs read; the POSTs (retry, discard, create and expire silences) pass `auth.check_write`
first. Every answer is JSON (`{"error": "..."}` when refused), except the event stream,
which is Server-Sent Events: each new Live entry as one `data:` line, a comment every 5 s (a
browser that left is noticed at a write),
and the stream closed after STREAM_SECONDS (the browser's EventSource reconnects, resuming
from `Last-Event-ID`), so that a forgotten tab never holds one of the metrics port's
connections for good. At most MAX_STREAMS stream at once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs

from eventd import __version__
from eventd.console import views
from eventd.console.auth import Refusal, check_write
from eventd.console.views import ConsoleContext
from eventd.errors import ConfigError, StoreError
from eventd.ops.internal import report_internal_error
from eventd.settings import parse_duration
from eventd.silences.model import BadSilence, new_silence

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_STREAMS = 4
STREAM_SECONDS = 55.0
_POLL = 0.1
_KEEPALIVE = 5.0
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: the newest dead letters listed (the total is given too)
MAX_LISTED = 500

Answer = tuple[int, Any]  # status, JSON body (or an iterator of bytes for the stream)


class Api:
    """Routes one request to its handler; see the module docstring."""

    def __init__(self, ctx: ConsoleContext, spec: Callable[[], dict[str, Any]]) -> None:
        self.ctx = ctx
        self._spec = spec
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.closing = threading.Event()
        self.open_streams = 0  # streams being served (changed under _count_lock)
        self._count_lock = threading.Lock()
        self._get: dict[str, Callable[[Mapping[str, Any]], Answer]] = {
            "/info": self._info, "/events": self._events, "/rules": self._rules,
            "/deadletters": self._dead_letters, "/silences": self._silences,
            "/cluster": self._cluster, "/openapi.json": lambda environ: (200, self._spec()),
        }

    def handle(self, environ: Mapping[str, Any]) -> Answer:
        """The status and JSON body (or byte stream) answering this request."""
        path = str(environ.get("PATH_INFO") or "")[len(PREFIX):]
        method = str(environ.get("REQUEST_METHOD") or "GET")
        try:
            if method in ("GET", "HEAD"):
                return self._read(path, environ)
            if method == "POST":
                return self._write(path, environ)
            return 405, {"error": "use GET or POST"}
        except Refusal as refusal:
            return refusal.status, {"error": refusal.message}
        except StoreError as exc:
            log.warning("console: the store did not answer (%s)", exc.op or exc)
            return 503, {"error": "the store is unreachable; try again"}
        except Exception as exc:  # noqa: BLE001 - logged and counted; the server keeps serving
            report_internal_error("console", exc, self.ctx.metrics)
            return 500, {"error": "internal error (logged)"}

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, path: str, environ: Mapping[str, Any]) -> Answer:
        if path == "/events/stream":
            return self._stream(environ)
        handler = self._get.get(path)
        if handler is not None:
            return handler(environ)
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "deadletters":
            return self._dead_letter(_ident(parts[1]))
        return 404, {"error": "no such API path"}

    def _info(self, environ: Mapping[str, Any]) -> Answer:
        settings = self.ctx.settings
        from eventd.stores import store_name

        return 200, {"version": __version__, "writable": self.ctx.token is not None,
                     "source": settings.source, "store": store_name(settings.store),
                     "ring": self.ctx.live.size}

    def _events(self, environ: Mapping[str, Any]) -> Answer:
        query = _query(environ)
        after = _int(query.get("after"), 0)
        limit = max(1, min(_int(query.get("limit"), 100), self.ctx.live.size))
        chosen = [item for item in self.ctx.live.entries(after) if _wanted(item, query)]
        shown = [views.entry(self.ctx, item) for item in reversed(chosen[-limit:])]
        return 200, {"events": shown, "last": self.ctx.live.last}

    def _stream(self, environ: Mapping[str, Any]) -> Answer:
        if not self._streams.acquire(blocking=False):
            return 503, {"error": f"at most {MAX_STREAMS} live streams at once; poll "
                                  f"{PREFIX}/events instead"}
        with self._count_lock:
            self.open_streams += 1
        query = _query(environ)
        after = _int(environ.get("HTTP_LAST_EVENT_ID") or query.get("after"), -1)
        if after < 0:  # a new stream starts from what is kept
            after = 0
        return 200, self._stream_body(after, query)

    def _stream_body(self, after: int, query: Mapping[str, str]) -> Iterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            ends = time.monotonic() + STREAM_SECONDS
            quiet_since = time.monotonic()
            while time.monotonic() < ends and not self.closing.is_set():
                try:
                    items = self.ctx.live.entries(after)
                    chunk = b"".join(
                        b"id: %d\ndata: %s\n\n" % (item[0], json.dumps(
                            views.entry(self.ctx, item), default=str).encode())
                        for item in items if _wanted(item, query))
                except Exception as exc:  # noqa: BLE001 - logged and counted; the stream ends
                    report_internal_error("console", exc, self.ctx.metrics)
                    return
                if items:
                    after = items[-1][0]
                    if chunk:
                        yield chunk
                        quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > _KEEPALIVE:
                    yield b": keepalive\n\n"
                    quiet_since = time.monotonic()
                self.closing.wait(_POLL)
        finally:
            with self._count_lock:
                self.open_streams -= 1
            self._streams.release()

    def _rules(self, environ: Mapping[str, Any]) -> Answer:
        return 200, views.rules(self.ctx)

    def _dead_letters(self, environ: Mapping[str, Any]) -> Answer:
        letters = self.ctx.store.deadletter_list()
        shown = [views.dead_letter(self.ctx, letter) for letter in reversed(letters[-MAX_LISTED:])]
        return 200, {"deadletters": shown, "total": len(letters)}

    def _dead_letter(self, ident: str) -> Answer:
        for letter in self.ctx.store.deadletter_list():
            if letter.job.id == ident:
                return 200, views.dead_letter(self.ctx, letter, full=True)
        return 404, {"error": "no such dead letter"}

    def _silences(self, environ: Mapping[str, Any]) -> Answer:
        book = self._book()
        book.refresh()
        return 200, {"silences": [views.silence(s) for s in book.silences()]}

    def _cluster(self, environ: Mapping[str, Any]) -> Answer:
        try:
            return 200, views.cluster(self.ctx)
        except Exception as exc:  # noqa: BLE001 - Redis errors and the like: say so, keep serving
            log.warning("console: cluster state not readable (%s)", type(exc).__name__)
            return 503, {"error": "the cluster's state cannot be read now; try again"}

    # -- acting ----------------------------------------------------------------------------------
    def _write(self, path: str, environ: Mapping[str, Any]) -> Answer:
        parts = path.strip("/").split("/")
        routes = {("deadletters", "retry"): self._retry, ("deadletters", "discard"): self._discard,
                  ("silences", "expire"): self._expire}
        if parts == ["silences"]:
            check_write(environ, self.ctx.token)
            return self._create(_body(environ))
        if len(parts) == 3 and (parts[0], parts[2]) in routes:
            check_write(environ, self.ctx.token)
            return routes[(parts[0], parts[2])](_ident(parts[1]))
        return 404, {"error": "no such API path"}

    def _retry(self, ident: str) -> Answer:
        moved = self.ctx.store.deadletter_take([ident])
        if not moved:
            return 404, {"error": "no such dead letter"}
        self.ctx.resume()
        log.info("console: dead letter %s (%s for rule %s) moved back to the spool", ident,
                 moved[0].kind, moved[0].rule)
        return 200, {"retried": [job.id for job in moved]}

    def _discard(self, ident: str) -> Answer:
        count = self.ctx.store.deadletter_purge([ident])
        if not count:
            return 404, {"error": "no such dead letter"}
        log.info("console: dead letter %s discarded", ident)
        return 200, {"discarded": count}

    def _create(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            raise Refusal(400, "send a JSON object")
        now = time.time()
        try:
            starts = body.get("starts_at")
            start = now if starts is None else _number(starts, "starts_at")
            if body.get("ends_at") is not None:
                end = _number(body["ends_at"], "ends_at")
            else:
                duration = body.get("duration", "1h")
                if isinstance(duration, bool) or not isinstance(duration, (str, int, float)):
                    raise BadSilence("duration must be text (2h, 30m) or seconds")
                end = start + parse_duration(duration, "duration")
            silence = new_silence(body.get("matchers"), starts_at=start, ends_at=end,
                                  created_by=body.get("created_by"),
                                  comment=body.get("comment"), now=now)
        except (BadSilence, ConfigError) as exc:
            raise Refusal(400, str(exc)) from None
        self._book().add(silence)
        return 201, views.silence(silence)

    def _expire(self, ident: str) -> Answer:
        ended = self._book().expire(ident)
        if ended is None:
            return 404, {"error": "no such silence"}
        return 200, views.silence(ended)

    def _book(self) -> Any:
        if self.ctx.silences is None:
            raise Refusal(503, "silences are not available in this process")
        return self.ctx.silences


def _ident(text: str) -> str:
    if not _ID.match(text):
        raise Refusal(400, "an id is 1-128 letters, digits, '-' or '_'")
    return text


def _query(environ: Mapping[str, Any]) -> dict[str, str]:
    parsed = parse_qs(str(environ.get("QUERY_STRING") or "")[:2048])
    return {key: values[0][:200] for key, values in parsed.items() if values}


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value)) if value not in (None, "") else default
    except ValueError:
        return default


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadSilence(f"{what} must be a POSIX time in seconds")
    return float(value)


def _wanted(item: tuple[Any, ...], query: Mapping[str, str]) -> bool:
    """Whether a Live entry passes the filters (type, state, rule, namespace)."""
    _, _, event, matched, _ = item
    if "type" in query and event.get("type") != query["type"]:
        return False
    if "state" in query and str(event.get("state") or "").lower() != query["state"].lower():
        return False
    if "rule" in query and query["rule"] not in matched:
        return False
    if "namespace" in query and (event.get("namespace") or "(own)") != query["namespace"]:
        return False
    return True


def _body(environ: Mapping[str, Any]) -> Any:
    """The JSON request body (its size was bounded by the server: eventd.ops.health)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Refusal(400, "bad Content-Length") from None
    stream = environ.get("wsgi.input")
    data = stream.read(length) if stream is not None and length > 0 else b""
    try:
        return json.loads(data or b"null")
    except (ValueError, RecursionError):
        raise Refusal(400, "the body is not JSON") from None


def dump(body: Any) -> bytes:
    """A JSON answer's bytes."""
    return json.dumps(body, default=str, separators=(",", ":")).encode("utf-8")


