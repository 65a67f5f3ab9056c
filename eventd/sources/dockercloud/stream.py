"""StreamConsumer: connect, read, detect dead links, reconnect with backoff, and mark gaps.

One thread runs `run()`. It reads frames with `framing.FrameReader` (many per socket read),
turns them into `Received` batches and hands each batch to the sink, which may block
(backpressure). Between reads it sends pings, checks the pong deadline and the idle watchdog,
and watches `stopping`. Every lost connection becomes a `disconnected` gap event, every
connection a `connected` one; after a re-connect the missed actions are backfilled on a
separate thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import websocket
from tenacity import RetryCallState, wait_random_exponential

from eventd import __version__
from eventd.delivery.http import parse_retry_after
from eventd.errors import AuthRejected, MalformedEvent
from eventd.events import Received, parse_event, stream_event
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.sources.dockercloud.auth import Credentials
from eventd.sources.dockercloud.framing import ConnectionEnded, FrameReader, FramingError

if TYPE_CHECKING:
    from eventd.settings import Settings
    from eventd.sources.dockercloud.recorder import Recorder

logger = logging.getLogger(__name__)

Sink = Callable[[list[Received]], None]

AUTH_STATUSES = frozenset({401, 403})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: same-origin redirects followed per handshake (websocket-client's own default is 3)
MAX_REDIRECTS = 3
#: consecutive 404 handshakes after which the log says the host serves no Stream API
NOT_FOUND_HINT_AFTER = 3
_CLOSE_WAIT = 0.25  # how long a graceful stop waits for the server's close frame


@dataclass(frozen=True)
class StreamOptions:
    """Timings and policies of the stream consumer (defaults from the issue)."""

    ping_interval: float = 10.0
    pong_timeout: float = 10.0
    idle_timeout: float = 300.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    healthy_after: float = 30.0
    on_auth_error: str = "exit"  # exit | wait
    auth_error_wait: float = 3600.0
    user_agent: str = f"eventd/{__version__}"
    handshake_timeout: float = 10.0
    #: longest blocking socket read, so that stopping and deadlines are checked this often
    read_tick: float = 0.5

    def __post_init__(self) -> None:
        if self.on_auth_error not in ("exit", "wait"):
            raise ValueError(f"on_auth_error must be 'exit' or 'wait', got {self.on_auth_error!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamOptions:
        """Take the stream timings from the daemon's settings."""
        agent = settings.user_agent.strip() or "eventd"
        if agent == "eventd":
            agent = f"eventd/{__version__}"
        elif "eventd/" not in agent:
            agent = f"{agent} eventd/{__version__}"
        return cls(
            ping_interval=settings.ping_interval, pong_timeout=settings.pong_timeout,
            idle_timeout=settings.idle_timeout, backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max, healthy_after=settings.healthy_after,
            on_auth_error=settings.on_auth_error, auth_error_wait=settings.auth_error_wait,
            user_agent=agent,
        )

    @property
    def tick(self) -> float:
        """The socket read timeout: short enough to meet every deadline on time."""
        return max(0.01, min(self.read_tick, self.ping_interval / 2, self.pong_timeout / 2,
                             self.idle_timeout / 2))


class _RedirectRefused(Exception):
    """A handshake redirected somewhere eventd will not send the credentials."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class _Outcome:
    """Why one connection attempt or connection ended."""

    reason: str  # a bounded metric label, or "stopped"
    connected: bool = False  # whether the handshake had succeeded
    retry_after: float | None = None
    detail: str = ""
    healthy: bool = False  # connected for at least healthy_after


class StreamConsumer:
    """Consumes the Docker Cloud event stream until `stopping` is set."""

    def __init__(self, url: str, credentials: Credentials, sink: Sink, metrics: Metrics,
                 stopping: threading.Event, options: StreamOptions | None = None,
                 recorder: Recorder | None = None,
                 backfill: Callable[[float], object] | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.url = url
        self.options = options or StreamOptions()
        self.connected = False
        self.pongs = 0  # pongs received over the consumer's life (tests wait on it)
        self._connected_at: float | None = None  # monotonic time of the current connection
        self._credentials = credentials
        self._sink = sink
        self._metrics = metrics
        self._stopping = stopping
        self._recorder = recorder
        self._backfill = backfill
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._wait_or_stop
        self._clock = clock if clock is not None else time.time
        self._safe_url = _safe_url(url)
        self._wait = wait_random_exponential(multiplier=self.options.backoff_initial,
                                             max=self.options.backoff_max)
        self._retry_state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        self._failures = 0  # consecutive failed or short-lived connections
        self._not_found = 0  # consecutive handshakes answered 404
        self._auth_waited = False  # `wait` mode: the one more try was used
        self._gap_start: float | None = None  # wall time of the last disconnect
        self._invalid_logged: set[str] = set()
        self._ws: websocket.WebSocket | None = None
        self._lock = threading.Lock()
        self._close_requested = False
        self._close_sent = False
        self._backfills: list[threading.Thread] = []

    # -- public -------------------------------------------------------------------------------
    def run(self) -> None:
        """Consume until `stopping` is set; raise AuthRejected if credentials are refused in exit mode."""
        try:
            while not self._stopped():
                try:
                    outcome = self._connection()
                except AuthRejected as exc:
                    self._auth_rejected(exc)
                    continue
                if outcome.reason == "stopped" or self._stopped():
                    break
                self._retry_later(outcome)
        finally:
            self._set_connected(False)
            self._ws = None
        logger.info("stream consumer stopped")

    def close(self) -> None:
        """Close the socket with a close frame (or abort a handshake in progress) and stop."""
        self._close_requested = True
        ws = self._ws
        if ws is None:
            return
        if self.connected:
            self._send_close(ws)
        else:
            _quietly(ws.shutdown)

    @property
    def healthy(self) -> bool:
        """Connected for at least `healthy_after` (the backoff window starts over after it)."""
        since = self._connected_at
        return since is not None and time.monotonic() - since >= self.options.healthy_after

    @property
    def backfill_threads(self) -> list[threading.Thread]:
        """Backfill threads started so far (so a caller can join them at shutdown)."""
        return list(self._backfills)

    # -- the reconnect loop -------------------------------------------------------------------
    def _stopped(self) -> bool:
        return self._close_requested or self._stopping.is_set()

    def _wait_or_stop(self, seconds: float) -> None:
        """Sleep, but wake within 0.1 s of `stopping` being set or `close()` being called."""
        deadline = time.monotonic() + seconds
        while not self._close_requested:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.wait(min(left, 0.1)):
                return

    def _retry_later(self, outcome: _Outcome) -> None:
        """Count the loss, pick the backoff (Retry-After wins when longer), log it, sleep."""
        self._metrics.stream_reconnects.labels(reason=outcome.reason).inc()
        self._count_not_found(outcome)
        if outcome.healthy:
            self._failures = 0
        self._failures += 1
        self._retry_state.attempt_number = self._failures
        delay = float(self._wait(self._retry_state))
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        if outcome.connected:
            logger.warning("stream lost (%s); reconnecting in %.1f s", outcome.reason, delay)
        else:
            logger.warning("cannot connect to %s (%s%s); retrying in %.1f s", self._safe_url,
                           outcome.reason, f": {outcome.detail}" if outcome.detail else "", delay)
        self._sleep(delay)

    def _count_not_found(self, outcome: _Outcome) -> None:
        """After a few 404s in a row, say plainly that this host is not a Stream API host."""
        if outcome.reason != "handshake_404":
            self._not_found = 0
            return
        self._not_found += 1
        if self._not_found == NOT_FOUND_HINT_AFTER:
            logger.error("%s answered 404 Not Found to %d stream handshakes in a row: this host "
                         "does not serve the Docker Cloud Stream API. Check DOCKERCLOUD_STREAM_HOST "
                         "(the stream host, e.g. wss://ws.cloud.docker.com/, not the REST host) "
                         "and DOCKERCLOUD_NAMESPACE; still retrying with backoff",
                         self._safe_url, self._not_found)

    def _auth_rejected(self, exc: AuthRejected) -> None:
        """Never hot-loop on bad credentials: exit, or wait long and try exactly once more."""
        self._metrics.stream_reconnects.labels(reason="auth_rejected").inc()
        source = self._credentials.source
        if self.options.on_auth_error == "exit":
            logger.error("stream credentials from %s rejected by %s (%s); giving up",
                         source, self._safe_url, exc)
            raise exc
        if self._auth_waited:
            logger.error("stream credentials from %s rejected again by %s (%s) after waiting "
                         "%.0f s; giving up", source, self._safe_url, exc,
                         self.options.auth_error_wait)
            raise exc
        self._auth_waited = True
        wait = self.options.auth_error_wait
        logger.error("stream credentials from %s rejected by %s (%s); trying again in %.0f s",
                     source, self._safe_url, exc, wait)
        self._sleep(wait)

    # -- one connection -----------------------------------------------------------------------
    def _connection(self) -> _Outcome:
        """Connect once and read until the connection ends; say why it ended."""
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
        with self._lock:
            self._ws = ws
            self._close_sent = False
        try:
            self._handshake(ws)
        except _RedirectRefused as exc:
            _quietly(ws.shutdown)
            return _Outcome(f"handshake_{exc.status}", detail=exc.detail)
        except websocket.WebSocketBadStatusException as exc:
            _quietly(ws.shutdown)
            status = int(exc.status_code)
            if status in AUTH_STATUSES:
                raise AuthRejected(f"handshake answered HTTP {status}", status_code=status) from None
            headers: dict[str, Any] = exc.resp_headers or {}
            retry_after = parse_retry_after(headers.get("retry-after"))
            return _Outcome(f"handshake_{status}", retry_after=retry_after,
                            detail=f"HTTP {status}")
        except (websocket.WebSocketTimeoutException, TimeoutError):
            _quietly(ws.shutdown)
            return self._outcome_or_stop("connect_timeout", "handshake timed out")
        except (websocket.WebSocketException, OSError) as exc:
            _quietly(ws.shutdown)
            return self._outcome_or_stop("connect_error", _describe(exc))
        return self._connected(ws)

    def _handshake(self, ws: websocket.WebSocket) -> None:
        """Connect; follow a redirect only within the configured scheme, host and port.

        websocket-client would follow up to 3 redirects anywhere, re-sending `Authorization`
        (even from wss:// to ws://), so eventd follows them itself, and never off-origin.
        """
        opts = self.options
        header = [f"Authorization: {self._credentials.header}", f"User-Agent: {opts.user_agent}"]
        url = self.url
        status = 0
        for _ in range(MAX_REDIRECTS + 1):
            ws.handshake_response = None
            try:
                ws.connect(url, timeout=opts.handshake_timeout,  # type: ignore[no-untyped-call]
                           header=header, redirect_limit=0)
                return
            except websocket.WebSocketBadStatusException:
                raise
            except websocket.WebSocketException:
                response = ws.handshake_response
                if response is None or response.status not in REDIRECT_STATUSES:
                    raise
                status = int(response.status)
            location = (response.headers or {}).get("location")
            target = urljoin(url, location) if isinstance(location, str) and location else ""
            if not target:
                raise _RedirectRefused(status, f"HTTP {status} without a Location")
            if _origin(target) != _origin(self.url):
                raise _RedirectRefused(status, (
                    f"HTTP {status} redirect to {_safe_url(target)}, another scheme, host or port: "
                    "not followed (eventd sends the credentials only to DOCKERCLOUD_STREAM_HOST; "
                    "if the stream moved, point DOCKERCLOUD_STREAM_HOST there)"))
            logger.info("stream handshake redirected (HTTP %d) to %s: same host, following",
                        status, _safe_url(target))
            url = target
        raise _RedirectRefused(status, f"more than {MAX_REDIRECTS} redirects")

    def _outcome_or_stop(self, reason: str, detail: str) -> _Outcome:
        return _Outcome("stopped" if self._stopped() else reason, detail=detail)

    def _connected(self, ws: websocket.WebSocket) -> _Outcome:
        """Announce the connection (gap event, backfill), read, then announce the loss."""
        began = time.monotonic()
        now = self._clock()
        gap_start = self._gap_start
        gap = None if gap_start is None else max(0.0, now - gap_start)
        self._set_connected(True)
        if gap is None:
            logger.info("connected to %s", self._safe_url)
        else:
            logger.info("connected to %s (gap %.1f s)", self._safe_url, gap)
        # A failed pong write is left for the next read to notice as a dead socket.
        assert ws.sock is not None  # connect() succeeded
        reader = FrameReader(ws.sock, on_ping=lambda payload: _quietly(lambda: ws.pong(payload)))
        auth_error: AuthRejected | None = None
        try:
            self._sink([Received(stream_event("connected", now, gap), now, None, True)])
            if gap_start is not None and self._backfill is not None:
                self._start_backfill(gap_start)
            reason = self._read(ws, reader)
            if self._stopped():  # close() from another thread: the server's answer ended the read
                reason = "stopped"
        except AuthRejected as exc:
            reason, auth_error = "auth_rejected", exc
        except BaseException:  # the sink or recorder failed: leave no socket behind
            _quietly(ws.shutdown)
            raise
        finally:
            self._set_connected(False)
        if reason == "stopped":
            self._finish(ws, reader)
            return _Outcome("stopped", connected=True)
        if reason == "closed":
            self._send_close(ws, reader.close_frame[0] if reader.close_frame else None)
        elif auth_error is not None:
            self._send_close(ws)
        _quietly(ws.shutdown)
        lost_at = self._clock()
        self._gap_start = lost_at
        self._sink([Received(stream_event("disconnected", lost_at), lost_at, None, True)])
        healthy = time.monotonic() - began >= self.options.healthy_after
        if healthy:
            self._auth_waited = False  # a later rejection is a new episode: one more wait
        if auth_error is not None:
            raise auth_error
        return _Outcome(reason, connected=True, healthy=healthy)

    def _read(self, ws: websocket.WebSocket, reader: FrameReader) -> str:
        """The hot loop: read, deliver, keep the link checked; return why it ended."""
        opts = self.options
        ping_interval, pong_timeout, idle_timeout = (
            opts.ping_interval, opts.pong_timeout, opts.idle_timeout)
        stopping = self._stopping
        monotonic = time.monotonic
        ws.settimeout(opts.tick)
        read = reader.read
        deliver = self._deliver
        now = monotonic()
        last_data = now
        next_ping = now + ping_interval
        pong_due: float | None = None
        pongs = 0
        while True:
            if stopping.is_set() or self._close_requested:
                return "stopped"
            try:
                messages = read()
            except TimeoutError:
                # The socket is drained: only now do missing pongs or data mean anything.
                now = monotonic()
                if pong_due is not None and now >= pong_due:
                    return "pong_timeout"
                if now - last_data >= idle_timeout:
                    return "idle"
            except ConnectionEnded:
                return "dropped" if reader.close_frame is None else "closed"
            except FramingError as exc:
                logger.warning("stream protocol error from %s: %s", self._safe_url, exc)
                return "protocol_error"
            except (OSError, websocket.WebSocketException):
                return "dropped"
            else:
                if messages:
                    deliver(messages)
                now = last_data = monotonic()
                if reader.pongs != pongs:
                    self.pongs += reader.pongs - pongs
                    pongs = reader.pongs
                    pong_due = None
                if reader.close_frame is not None:
                    return "closed"
            if now >= next_ping:
                next_ping = now + ping_interval
                if pong_due is None:
                    pong_due = now + pong_timeout
                    try:
                        ws.ping()
                    except (OSError, websocket.WebSocketException):
                        return "dropped"

    def _deliver(self, messages: list[bytes]) -> None:
        """Parse one read's frames and hand the good ones to the sink as one batch."""
        now = self._clock()
        batch: list[Received] = []
        append = batch.append
        auth_error: AuthRejected | None = None
        for payload in messages:
            try:
                event = parse_event(payload)
            except MalformedEvent as exc:
                self._invalid(exc)
                continue
            kind = event["type"]
            if kind == "auth" or kind == "error":
                if kind == "error" and self._error_message(event):
                    auth_error = AuthRejected("stream sent error UNAUTHORIZED")
                continue
            append(Received(event, now, payload))
        self._metrics.stream_last_event.set(now)
        if batch:
            if self._recorder is not None:
                try:
                    self._recorder.write_batch([r.raw for r in batch if r.raw is not None])
                except OSError as exc:  # a full disk must not stop the stream
                    report_internal_error("recorder", exc, self._metrics)
            self._sink(batch)
        if auth_error is not None:
            raise auth_error

    def _error_message(self, event: dict[str, Any]) -> bool:
        """Log and count an `error` message; say whether it rejects the credentials."""
        data = event.get("data")
        message = data.get("errorMessage") if isinstance(data, dict) else None
        text = str(message)[:200] if message is not None else "(no errorMessage)"
        self._metrics.stream_errors.inc()
        logger.warning("stream error message from %s: %s", self._safe_url, text)
        return text == "UNAUTHORIZED"

    def _invalid(self, exc: MalformedEvent) -> None:
        """Count a frame that is not an event; log the first of each kind with a sample."""
        self._metrics.events_invalid.labels(reason=exc.reason).inc()
        if exc.reason not in self._invalid_logged:
            self._invalid_logged.add(exc.reason)
            logger.warning("skipping stream frames that are not events (%s), e.g. %r; "
                           "further ones are only counted", exc.reason, exc.sample[:120])

    # -- helpers ------------------------------------------------------------------------------
    def _set_connected(self, value: bool) -> None:
        self._connected_at = time.monotonic() if value else None
        self.connected = value
        self._metrics.stream_connected.set(1 if value else 0)

    def _send_close(self, ws: websocket.WebSocket, code: int | None = None) -> None:
        """Send one close frame per connection, from whichever thread gets here first."""
        with self._lock:
            if self._close_sent:
                return
            self._close_sent = True
        status = code if code is not None and 1000 <= code < 5000 and code not in (1005, 1006) \
            else websocket.STATUS_NORMAL
        _quietly(lambda: ws.send_close(status))

    def _finish(self, ws: websocket.WebSocket, reader: FrameReader) -> None:
        """Graceful stop: close frame, a brief wait for the server's, then shut the socket."""
        self._send_close(ws)
        deadline = time.monotonic() + _CLOSE_WAIT
        try:
            ws.settimeout(_CLOSE_WAIT / 5)
            while reader.close_frame is None and time.monotonic() < deadline:
                try:
                    reader.read()  # what arrives now is dropped: we are stopping
                except TimeoutError:
                    continue
        except (OSError, ConnectionEnded, FramingError, websocket.WebSocketException):
            pass
        _quietly(ws.shutdown)
        logger.info("stream to %s closed", self._safe_url)

    def _start_backfill(self, gap_start: float) -> None:
        thread = threading.Thread(target=self._run_backfill, args=(gap_start,),
                                  name="eventd-backfill", daemon=True)
        self._backfills = [t for t in self._backfills if t.is_alive()] + [thread]
        thread.start()

    def _run_backfill(self, gap_start: float) -> None:
        assert self._backfill is not None
        try:
            self._backfill(gap_start)
        except Exception:  # noqa: BLE001 - a failed backfill must not end anything else
            logger.warning("backfill after the stream gap failed", exc_info=True)


def _quietly(fn: Callable[[], object]) -> None:
    """Run a best-effort socket teardown step, ignoring the errors a dead socket gives."""
    try:
        fn()
    except (OSError, websocket.WebSocketException, AttributeError):
        pass


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a connection error."""
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default port made explicit), to compare redirect targets."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = {"ws": 80, "wss": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _safe_url(url: str) -> str:
    """The URL without user info or query, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
