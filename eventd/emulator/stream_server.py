"""The Stream API websocket server: handshake checks, filters, per-connection queues, faults.

It runs on its own thread with its own event loop; other threads hand it events through
`loop.call_soon_threadsafe`, so a slow client never blocks the emitter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from eventd.emulator.faults import Faults
from eventd.emulator.fencing import HEADER as FENCING_HEADER
from eventd.emulator.fencing import Fences
from eventd.emulator.records import Handshake, Headers, StreamConnection, redact_target
from eventd.emulator.world import uri_key

logger = logging.getLogger(__name__)
# websockets logs whole handshakes (Authorization included) at DEBUG on this logger: keep
# credentials out of every log, whatever level a user runs at.
_protocol_logger = logging.getLogger(__name__ + ".protocol")
_protocol_logger.setLevel(logging.INFO)

AUTH_MESSAGE = json.dumps({"type": "auth"}, separators=(",", ":"))
QUEUE_SIZE = 10_000
_PATH = re.compile(r"^/(?:api/audit/v1/(?:(?P<ns>[^/]+)/)?events|v1/events)/?$")
#: a container's logs (Stream API; the docker/docs "Container logs" page: `tail`, `follow`)
_LOGS = re.compile(r"^/api/app/v1/(?:(?P<ns>[^/]+)/)?container/"
                   r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/logs/?$")
#: the most lines one logs connection sends (the reference's default `tail` is 300)
LOGS_TAIL_DEFAULT = 300
_REASONS = {301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect",
            308: "Permanent Redirect", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_NAMESPACED = re.compile(r"^/api/(?:app|infra)/v1/(?P<ns>[^/]+)/[a-z]+/[^/]+/?$")


def event_namespace(event: dict[str, Any], default: str) -> str:
    """The namespace an event belongs to: the one in its resource URI (actions: `default`)."""
    match = _NAMESPACED.match(str(event.get("resource_uri", "")))
    return match.group("ns") if match else default


@dataclass(frozen=True)
class Filters:
    """A connection's query filters (`type`, `object`, `parent`/`parents`), each a set or None."""

    types: frozenset[str] | None = None
    objects: frozenset[str] | None = None
    parents: frozenset[str] | None = None

    @classmethod
    def from_query(cls, pairs: list[tuple[str, str]]) -> Filters:
        """Parse repeated and comma-separated values; URIs are compared by `<type>/<uuid>`."""
        values: dict[str, set[str]] = {}
        for key, value in pairs:
            key = "parents" if key == "parent" else key
            items = {item.strip() for item in value.split(",") if item.strip()}
            values.setdefault(key, set()).update(items)

        def pick(key: str, convert: Callable[[str], str]) -> frozenset[str] | None:
            return frozenset(convert(v) for v in values[key]) if key in values else None

        return cls(types=pick("type", str.lower), objects=pick("object", uri_key),
                   parents=pick("parents", uri_key))

    def match(self, event: dict[str, Any]) -> bool:
        """Whether the event passes every filter present."""
        if self.types is not None and str(event.get("type", "")).lower() not in self.types:
            return False
        if self.objects is not None and uri_key(str(event.get("resource_uri", ""))) \
                not in self.objects:
            return False
        if self.parents is not None:
            parents = event.get("parents") or []
            if not any(uri_key(str(p)) in self.parents for p in parents):
                return False
        return True


@dataclass(eq=False)
class _Connection:
    ws: ServerConnection
    filters: Filters
    record: StreamConnection
    queue: asyncio.Queue[str | bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))


class StreamServer:
    """A websocket server for `/api/audit/v1/[ns/]events[/]` (and legacy `/v1/events`)."""

    def __init__(self, *, host: str, port: int, namespace: str,
                 authorized: Callable[[str | None], bool], faults: Faults,
                 record: Callable[[Handshake], None],
                 tls: ssl.SSLContext | None = None,
                 namespaces: Collection[str] = (),
                 record_connection: Callable[[StreamConnection], None] | None = None,
                 keepalive: tuple[float, float] | None = None,
                 fences: Fences | None = None,
                 container_logs: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        """`container_logs(uuid)`: a container's log messages, oldest first (the logs
        endpoint). `keepalive` (interval, timeout): ping every client and end a connection whose pong
        does not come in time, as a load balancer ends a dead one (the reference documents
        client pings only: off by default). `fences`: refuse a handshake whose fencing token
        is stale (409)."""
        self.host = host
        self._container_logs = container_logs
        self._keepalive = keepalive
        self._fences = fences
        self._tls = tls
        self.port = port
        self.namespace = namespace
        #: every namespace served (the first is the user's own, where un-namespaced paths go)
        self.namespaces = frozenset({namespace, *namespaces})
        self._record_connection = record_connection
        self._authorized = authorized
        self._faults = faults
        self._record = record
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._talking: asyncio.Event | None = None
        self._connections: set[_Connection] = set()
        self._changed = threading.Condition()
        self._count = 0

    # -- lifecycle (any thread) ---------------------------------------------------------------
    def start(self) -> None:
        """Listen on host:port (port 0 picks one, kept for restarts) and serve on a thread."""
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._thread_main, args=(ready, errors),
                                        name="emulator-stream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            self._thread.join(5)
            self._thread = None
            raise errors[0]
        logger.info("stream server listening on %s://%s:%d/", "wss" if self._tls else "ws",
                    self.host, self.port)

    def stop(self) -> None:
        """Drop every connection, stop listening and join the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed in between
                pass
        self._loop = None
        if self._thread is None:  # never started (or stopped already): nothing to say
            return
        self._thread.join(10)
        self._thread = None
        logger.info("stream server on port %d stopped", self.port)

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._thread is not None

    @property
    def connection_count(self) -> int:
        """Open stream connections now."""
        return self._count

    def namespace_counts(self) -> dict[str, int]:
        """Open stream connections now, per namespace."""
        counts: dict[str, int] = {}
        for conn in list(self._connections):
            counts[conn.record.namespace] = counts.get(conn.record.namespace, 0) + 1
        return counts

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> bool:
        """Block until exactly `n` connections are open (or the timeout passes)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count == n, timeout)

    def broadcast(self, text: str | bytes, event: dict[str, Any] | None) -> None:
        """Queue a text frame for every matching connection (raw text goes to all)."""
        self._call(self._broadcast, text, event)

    def drop_all(self) -> None:
        """Abort every connection's TCP socket without a close frame."""
        self._call(self._drop_all)

    def set_silent(self, silent: bool) -> None:
        """Stop or resume reading and writing on every connection."""
        self._call(self._apply_silence, silent)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closing: nobody is connected any more
            pass

    # -- the loop thread ----------------------------------------------------------------------
    def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            errors.append(exc)
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._talking = asyncio.Event()
        if not self._faults.silent:
            self._talking.set()
        async with serve(self._handler, self.host, self.port,
                         process_request=self._process_request, ping_interval=None,
                         close_timeout=1, max_queue=64, ssl=self._tls,
                         logger=_protocol_logger) as server:
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stop.wait()
            self._drop_all()
        self._connections.clear()
        self._set_count(0)

    async def _process_request(self, connection: ServerConnection,
                               request: Request) -> Response | None:
        delay = self._faults.handshake_delay
        if delay > 0:
            await asyncio.sleep(delay)
        split = urlsplit(request.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        status = 101
        retry_after: str | None = None
        location: str | None = None
        failure = self._faults.take_handshake_failure()
        match = _PATH.match(split.path) or _LOGS.match(split.path)
        if failure is not None:
            status, retry_after, location = failure.status, failure.retry_after, failure.location
        elif match is None or (match.group("ns") not in (None, *self.namespaces)):
            status = 404
        elif (self._faults.rejecting_auth
              or not self._authorized(request.headers.get("Authorization"))):
            status = 401
        elif self._fences is not None and self._fences.refuses(
                request.headers.get(FENCING_HEADER)):
            status = 409
        headers = Headers(request.headers.raw_items())
        peer = connection.remote_address
        self._record(Handshake(path=split.path, query=query, headers=headers, status=status,
                               peer=_peer(peer), at=time.monotonic()))
        if status == 101:
            return None
        logger.info("stream handshake %s from %s refused with %d", split.path,
                    _peer(peer), status)
        reason = _REASONS.get(status, "Error")
        response = connection.respond(status, reason + "\n")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        if location is not None:
            response.headers["Location"] = location
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="Docker Cloud"'
        return response

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        logs = _LOGS.match(split.path)
        if logs is not None:
            await self._serve_logs(ws, logs.group("uuid"), dict(parse_qsl(split.query)))
            return
        match = _PATH.match(split.path)
        namespace = (match.group("ns") if match else None) or self.namespace
        record = StreamConnection(namespace, _peer(ws.remote_address), time.monotonic(),
                                  token=ws.request.headers.get(FENCING_HEADER))
        conn = _Connection(ws, Filters.from_query(parse_qsl(split.query)), record)
        if self._record_connection is not None:
            self._record_connection(record)
        self._connections.add(conn)
        self._set_count(len(self._connections))
        logger.info("stream connection opened from %s on %s; %d open",
                    _peer(ws.remote_address), redact_target(ws.request.path),
                    len(self._connections))
        if self._faults.silent:
            ws.transport.pause_reading()
        conn.queue.put_nowait(AUTH_MESSAGE)
        pump = asyncio.create_task(self._pump(conn))
        tasks = [pump]
        if self._keepalive is not None:
            tasks.append(asyncio.create_task(self._keep_alive(conn, *self._keepalive)))
        try:
            async for _ in ws:  # what clients send is read (so control frames flow) and ignored
                pass
        except ConnectionClosed:
            pass
        finally:
            record.closed = time.monotonic()
            record.ended = record.ended or "client"
            for task in tasks:
                task.cancel()
            self._connections.discard(conn)
            self._set_count(len(self._connections))
            for task in tasks:
                try:
                    await task
                except (asyncio.CancelledError, ConnectionClosed):
                    pass
            logger.info("stream connection from %s closed (code %s); %d open",
                        _peer(ws.remote_address), ws.close_code, len(self._connections))

    async def _serve_logs(self, ws: ServerConnection, uuid: str, query: dict[str, str]) -> None:
        """Send a container's last `tail` log messages, one JSON text frame each, then close
        (`follow=false`; with follow, the emulator has no live output: it closes too)."""
        try:
            tail = max(0, int(query.get("tail", LOGS_TAIL_DEFAULT)))
        except ValueError:
            tail = LOGS_TAIL_DEFAULT
        messages = self._container_logs(uuid) if self._container_logs is not None else []
        try:
            for message in messages[-tail:] if tail else []:
                await ws.send(json.dumps(message))
            await ws.close(1000, "end of logs")
        except ConnectionClosed:
            pass

    async def _pump(self, conn: _Connection) -> None:
        assert self._talking is not None
        while True:
            text = await conn.queue.get()
            await self._talking.wait()
            await conn.ws.send(text, text=True)  # bytes too: malformed-frame tests
            conn.record.frames += 1

    async def _keep_alive(self, conn: _Connection, interval: float, timeout: float) -> None:
        """Ping every `interval`; no pong within `timeout` (the client is stopped, or the
        network between is gone): end the connection without a close handshake."""
        while True:
            await asyncio.sleep(interval)
            if self._faults.silent:
                continue  # a silent server pings nobody
            try:
                # The ping itself may wait behind a send that a dead peer never drains.
                await asyncio.wait_for(self._ping(conn.ws), timeout)
            except TimeoutError:
                conn.record.ended = "keepalive"
                logger.info("stream client %s answered no ping within %.1f s: connection ended",
                            _peer(conn.ws.remote_address), timeout)
                conn.ws.transport.abort()
                return
            conn.record.last_pong = time.monotonic()

    @staticmethod
    async def _ping(ws: ServerConnection) -> None:
        pong = await ws.ping()
        await pong

    def _broadcast(self, text: str | bytes, event: dict[str, Any] | None) -> None:
        if self._faults.silent:
            return  # a silent server loses what happens meanwhile
        namespace = None if event is None or len(self.namespaces) == 1 \
            else event_namespace(event, self.namespace)
        for conn in list(self._connections):
            if event is not None and not conn.filters.match(event):
                continue
            if namespace is not None and conn.record.namespace != namespace:
                continue
            try:
                conn.queue.put_nowait(text)
            except asyncio.QueueFull:
                logger.warning("stream client %s is too slow: event dropped",
                               _peer(conn.ws.remote_address))

    def _drop_all(self) -> None:
        for conn in list(self._connections):
            conn.record.ended = conn.record.ended or "server"
            conn.ws.transport.abort()

    def _apply_silence(self, silent: bool) -> None:
        assert self._talking is not None
        for conn in list(self._connections):
            transport = conn.ws.transport
            if transport.is_closing():
                continue
            if silent:
                transport.pause_reading()
            else:
                transport.resume_reading()
        if silent:
            self._talking.clear()
        else:
            self._talking.set()

    def _set_count(self, count: int) -> None:
        with self._changed:
            self._count = count
            self._changed.notify_all()


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


__all__ = ["StreamServer", "Filters", "AUTH_MESSAGE"]
