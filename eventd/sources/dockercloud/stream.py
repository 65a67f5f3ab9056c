"""StreamConsumer: the Docker Cloud Stream API as a source (what is only Docker Cloud's).

The loop itself (stop, backoff, gap events, backfill thread, credentials policy) is
`eventd.sources.base.ConsumerLoop`. Here: the websocket handshake (credentials, redirects
kept on the configured host, 401/403 and the other statuses), the hot read loop with
`framing.FrameReader` (many frames per socket read), pings, the pong deadline and the idle
watchdog, `auth`/`error` messages, the recorder, and the close handshake. While a sink holds the
reader up, `readahead`'s keeper reads the connection in its place (pings answered).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import orjson
import websocket

from eventd import __version__
from eventd.backoff import Backoff, Rng
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.http import parse_retry_after
from eventd.errors import AuthRejected, MalformedEvent
from eventd.events import Batch, Received, parse_datetime, parse_event
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.outbound import FENCING_HEADER
from eventd.settings import (
    DEFAULT_AUTH_ERROR_WAIT,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_HEALTHY_AFTER,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT,
    TlsOptions,
    plaintext_warning,
)
from eventd.sources.base import ConsumerLoop, Disconnected, LoopOptions
from eventd.sources.dockercloud.dial import Dial
from eventd.sources.dockercloud.framing import ConnectionEnded, FrameReader, FramingError
from eventd.sources.dockercloud.readahead import KEEPER, ReadAhead

if TYPE_CHECKING:
    from eventd.settings import Settings
    from eventd.sources.dockercloud.recorder import Recorder

logger = logging.getLogger(__name__)

Sink = Callable[[Sequence[Received]], None]

AUTH_STATUSES = frozenset({401, 403})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: same-origin redirects followed per handshake (websocket-client's own default is 3)
MAX_REDIRECTS = 3
#: consecutive 404 handshakes after which the log says the host serves no Stream API
NOT_FOUND_HINT_AFTER = 3
_CLOSE_WAIT = 0.25  # how long a graceful stop waits for the server's close frame
#: a read that took this long waited for its data (it came in then); a faster one found it
#: waiting, come in at some time since the read before
_WAITED = 0.002
#: a socket nobody read this long (a sink held the reader up, and the read-ahead did not
#: read in its place, or stopped, full): until a read waits again, the data found waiting is
#: dated from before the hold, however many reads it takes
_HELD = 0.25
#: for this long after a hold, no read counts as having waited for its data: draining what
#: the socket kept takes a few reads, and one may take more than `_WAITED` with the data
#: there all along (other threads held the GIL: chaos seed 1, 20261206, t+126, a read of 19
#: events 34 ms long in the test; dated from its arrival, it moved the gap's start 0.9 s
#: past 20 events the server sent into no connection)
_DRAINED = 1.0
#: `type` values that need a second look: none (parse_event says why), or a message that is
#: not an event (`auth`, `error`)
_NOT_EVENT = frozenset({"", "auth", "error"})
#: longer than any `datetime` the stream sends (ISO 8601, whole seconds): not parsed
_DATETIME_MAX = 40
_TYPE = itemgetter("type")


@dataclass(frozen=True)
class StreamOptions:
    """Timings and policies of the stream consumer (defaults from the issue)."""

    ping_interval: float = DEFAULT_PING_INTERVAL
    pong_timeout: float = DEFAULT_PONG_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    healthy_after: float = DEFAULT_HEALTHY_AFTER
    on_auth_error: str = "exit"  # exit | wait
    auth_error_wait: float = DEFAULT_AUTH_ERROR_WAIT
    user_agent: str = f"eventd/{__version__}"
    handshake_timeout: float = 10.0
    #: longest blocking socket read, so that stopping and deadlines are checked this often
    read_tick: float = 0.5
    #: what the read-ahead keeps while a sink holds the reader up (messages, bytes); past
    #: that nobody reads the connection until the sink lets go (the server may drop it)
    read_ahead_events: int = 4096
    read_ahead_bytes: int = 4 * 1024 * 1024
    tls: TlsOptions = TlsOptions()

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
            user_agent=agent, tls=settings.tls,
        )

    @property
    def loop_options(self) -> LoopOptions:
        """The part the generic consumer loop needs."""
        return LoopOptions(backoff=Backoff(self.backoff_initial, self.backoff_max),
                           healthy_after=self.healthy_after, on_auth_error=self.on_auth_error,
                           auth_error_wait=self.auth_error_wait)

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


class StreamConsumer(ConsumerLoop):
    """Consumes the Docker Cloud event stream until `stopping` is set."""

    tracks_liveness = True  # every read sets `_last_heard`

    def __init__(self, url: str, credentials: Credentials, sink: Sink, metrics: Metrics,
                 stopping: threading.Event, options: StreamOptions | None = None,
                 recorder: Recorder | None = None,
                 backfill: Callable[[float], object] | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] | None = None,
                 rng: Rng | None = None,
                 fencing: Callable[[], str | None] | None = None,
                 on_refused: Callable[[], object] | None = None) -> None:
        """`fencing`: a cluster's replica: the lease's fencing header value for each handshake
        (None once the lease is not held: no handshake is made); `on_refused`: called when a
        handshake is refused (409) for its token."""
        self.options = options or StreamOptions()
        super().__init__(sink=sink, metrics=metrics, stopping=stopping,
                         loop_options=self.options.loop_options,
                         credentials_source=credentials.source, replay=backfill, sleep=sleep,
                         clock=clock, rng=rng)
        self.url = url
        self.pongs = 0  # pongs received over the consumer's life (tests wait on it)
        self._credentials = credentials
        self._recorder = recorder
        self._safe_url = _safe_url(url)
        self._not_found = 0  # consecutive handshakes answered 404
        self._ws: websocket.WebSocket | None = None
        self._dial: Dial | None = None  # the connection being made (abortable)
        self._reader: FrameReader | None = None
        self._ahead: ReadAhead | None = None  # the connection's read-ahead (kept by KEEPER)
        self._lock = threading.Lock()
        self._close_sent = False
        self._fencing = fencing
        self._on_refused = on_refused
        #: how much earlier than its arrival a read of events may be dated (by their
        #: `datetime`): a keepalive window, so a false one moves a gap's start that much at most
        self._stale_cap = self.options.ping_interval + self.options.pong_timeout
        self._sent: tuple[str, float | None] = ("", None)  # the last `datetime` parsed
        #: the last read of events: (when it is dated, when it came in; monotonic), and its
        #: newest event with the wall time it came in; judged only at a loss (`_heard_late`)
        self._late: tuple[float, float] | None = None
        self._newest: tuple[dict[str, Any], float] | None = None

    def describe(self) -> str:
        """The stream URL without credentials or query."""
        return self._safe_url

    def interrupt(self) -> None:
        """Close the socket with a close frame, or abort a handshake in progress."""
        with self._lock:
            dial = self._dial
        if dial is not None:
            dial.abort()  # a TCP connect, TLS or HTTP handshake held up by a partition
        ws = self._ws
        if ws is None:
            return
        if self.connected:
            self._send_close(ws)
            if self._sink_since is not None:
                # Held up in the sink, the reader cannot finish the close handshake, and the
                # server counts the connection open (beside the next holder's) until TCP closes.
                # Shut before closing: a read the keeper has under way (a partial TLS record)
                # would hold a bare close back until it returns.
                sock = ws.sock
                if sock is not None:
                    _quietly(lambda: sock.shutdown(socket.SHUT_RDWR))
                _quietly(ws.shutdown)
        else:
            _quietly(ws.shutdown)

    def run(self) -> None:
        """Consume until `stopping` is set; raise AuthRejected if credentials are refused for good."""
        warning = plaintext_warning(self.url, "DOCKERCLOUD_STREAM_HOST")
        if warning is not None:
            logger.warning("%s", warning)
        try:
            super().run()
        finally:
            self._ws = None

    def resume_after(self, gap_start: float) -> None:
        """Start as if a connection had been lost at `gap_start` (POSIX time): the first
        connection announces the gap and backfills it (a stream taken over from a replica)."""
        self._gap_start = gap_start

    # -- connect ----------------------------------------------------------------------------------
    def connect(self) -> None:
        """The websocket handshake; Disconnected says why it failed, AuthRejected on 401/403."""
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True,
                                 sslopt=self.options.tls.sslopt())
        with self._lock:
            self._ws = ws
            self._close_sent = False
        try:
            self._handshake(ws)
        except _RedirectRefused as exc:
            _quietly(ws.shutdown)
            self._not_found = 0
            raise Disconnected(f"handshake_{exc.status}", detail=exc.detail) from None
        except websocket.WebSocketBadStatusException as exc:
            _quietly(ws.shutdown)
            status = int(exc.status_code)
            if status in AUTH_STATUSES:
                raise AuthRejected(f"handshake answered HTTP {status}", status_code=status) from None
            if status == 409 and self._fencing is not None and self._on_refused is not None:
                self._on_refused()  # a stale lease token: the coordinator gets a newer one
            headers: dict[str, Any] = exc.resp_headers or {}
            retry_after = parse_retry_after(headers.get("retry-after"))
            self._count_not_found(status)
            raise Disconnected(f"handshake_{status}", retry_after=retry_after,
                               detail=f"HTTP {status}") from None
        except (websocket.WebSocketTimeoutException, TimeoutError):
            _quietly(ws.shutdown)
            raise self._failed("connect_timeout", "handshake timed out") from None
        except (websocket.WebSocketException, OSError) as exc:
            _quietly(ws.shutdown)
            raise self._failed("connect_error", _describe(exc)) from None
        self._not_found = 0
        if self.stopped():
            # Stopped while the handshake was under way (a partition held it up): let the
            # connection go at once rather than consume beside the stream's next holder.
            _quietly(ws.shutdown)
            raise Disconnected("stopped", detail="stopped during the handshake")
        # A failed pong write is left for the next read to notice as a dead socket.
        assert ws.sock is not None  # connect() succeeded
        self._reader = reader = FrameReader(
            ws.sock, views=True,  # decoded by _deliver before the next read
            on_ping=lambda payload: _quietly(lambda: ws.pong(payload)))
        # Watched from now: the sink may hold the reader up from the `connected` marker on.
        self._ahead = ahead = ReadAhead(
            reader, ws.sock, lambda: self._sink_since, self.stopped, self._clock,
            self.options.read_ahead_events, self.options.read_ahead_bytes, self._metrics)
        KEEPER.watch(ahead)

    def _failed(self, reason: str, detail: str) -> Disconnected:
        self._not_found = 0
        return Disconnected("stopped" if self.stopped() else reason, detail=detail)

    def _handshake(self, ws: websocket.WebSocket) -> None:
        """Connect; follow a redirect only within the configured scheme, host and port.

        websocket-client would follow up to 3 redirects anywhere, re-sending `Authorization`
        (even from wss:// to ws://), so eventd follows them itself, and never off-origin.
        """
        opts = self.options
        header = [f"Authorization: {self._credentials.header}", f"User-Agent: {opts.user_agent}"]
        if self._fencing is not None:
            token = self._fencing()
            if token is None:
                raise Disconnected("lease_lost", detail="the stream's lease is not held here")
            header.append(f"{FENCING_HEADER}: {token}")
        url = self.url
        status = 0
        for _ in range(MAX_REDIRECTS + 1):
            ws.handshake_response = None
            dial = Dial()
            with self._lock:
                self._dial = dial
            if self.stopped():
                raise Disconnected("stopped", detail="stopped before connecting")
            try:
                sock = dial.open(url, opts.tls.sslopt(), opts.handshake_timeout)
                ws.connect(url, timeout=opts.handshake_timeout,  # type: ignore[no-untyped-call]
                           header=header, redirect_limit=0, socket=sock)
                return
            except websocket.WebSocketBadStatusException:
                raise
            except websocket.WebSocketException:
                response = ws.handshake_response
                if response is None or response.status not in REDIRECT_STATUSES:
                    raise
                status = int(response.status)
            finally:
                with self._lock:
                    self._dial = None
                dial.done()
            location = (response.headers or {}).get("location")
            target = urljoin(url, location) if isinstance(location, str) and location else ""
            if not target:
                raise _RedirectRefused(status, f"HTTP {status} without a Location")
            if _origin(target) != _origin(self.url):
                raise _RedirectRefused(status, (
                    f"HTTP {status} redirect to {_safe_url(target)}, another scheme, host or port: "
                    "not followed (eventd sends the credentials only to DOCKERCLOUD_STREAM_HOST; "
                    "if the stream moved, point DOCKERCLOUD_STREAM_HOST there)"))
            self.log.info("stream handshake redirected (HTTP %d) to %s: same host, following",
                          status, _safe_url(target))
            url = target
        raise _RedirectRefused(status, f"more than {MAX_REDIRECTS} redirects")

    def _count_not_found(self, status: int) -> None:
        """After a few 404s in a row, say plainly that this host is not a Stream API host."""
        if status != 404:
            self._not_found = 0
            return
        self._not_found += 1
        if self._not_found == NOT_FOUND_HINT_AFTER:
            logger.error("%s answered 404 Not Found to %d stream handshakes in a row: this host "
                         "does not serve the Docker Cloud Stream API. Check DOCKERCLOUD_STREAM_HOST "
                         "(the stream host, e.g. wss://ws.cloud.docker.com/, not the REST host) "
                         "and DOCKERCLOUD_NAMESPACE; still retrying with backoff",
                         self._safe_url, self._not_found)

    # -- read -------------------------------------------------------------------------------------
    def consume(self) -> str:
        """The hot loop: read, deliver, keep the link checked; return why it ended.

        It reads under the read-ahead's lock and lets go of it while the sink has a batch: a
        sink that holds it up gets the connection read by the keeper meanwhile, whose reads
        come here first, in order, as if this loop had made them."""
        ws, reader, ahead = self._ws, self._reader, self._ahead
        assert ws is not None and reader is not None and ahead is not None
        opts = self.options
        ping_interval, pong_timeout, idle_timeout = (
            opts.ping_interval, opts.pong_timeout, opts.idle_timeout)
        stopping = self._stopping
        monotonic = time.monotonic
        ws.settimeout(opts.tick)
        read = reader.read
        deliver = self._deliver
        stash, take, watched = ahead.stash, ahead.take, ahead.end_hold
        acquire, release = ahead.lock.acquire, ahead.lock.release
        acquire()
        try:
            now = last_data = monotonic()
            # when the socket was last being read (or waited on) by anyone: if the keeper has
            # read it already (the sink held the `connected` marker up), nobody before it
            returned = free = (self._last_heard or now) if stash else now
            held_from: float | None = None  # nobody read the socket for a while before then
            held_until = now  # when the last such while ended
            waited = _WAITED
            self._late = self._newest = None  # nothing read on this connection yet
            next_ping = now + ping_interval
            pong_due: float | None = None
            pongs = 0
            while True:
                if stopping.is_set() or self._close_requested:
                    return "stopped"
                try:
                    if stash:  # read by the keeper while the sink held us up
                        asked, heard, filled, wall, messages = take()[:5]
                        if messages is None:  # the keeper waited on the socket until `heard`
                            free = heard
                            continue
                    else:
                        wall = None
                        asked = monotonic()
                        messages = read()
                        heard = monotonic()
                        filled = reader.filled
                except TimeoutError:
                    # The socket is drained: only now do missing pongs or data mean anything.
                    now = free = monotonic()
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
                    # What a read finds already waiting may have come in any time since the
                    # last read returned; after a while nobody read the socket (a sink that
                    # held this loop up for seconds, a stalled store, with the read-ahead
                    # full or not yet reading) anything since the read before that while,
                    # the server meanwhile perhaps giving up on us: the gap's start must not
                    # move past the events it sent into nobody's connection then.
                    # More than one read's worth may have come in during such a while (chaos
                    # seed 1, t+420: the second read after a 10 s hold dated the loss after
                    # 16 events the server sent into no connection): dated from before it
                    # until a read waits for its data again (the socket drained).
                    # A read that filled its room found its data waiting, however long it took
                    # (a busy machine's scheduler, not the socket, kept it: CI, load 10+).
                    # The keeper's reads count as reads (its waits as waits): a hold it
                    # covered is no while without a reader.
                    if asked - free >= _HELD:
                        held_until = asked
                        if held_from is None:
                            held_from = self._last_heard
                    if heard - asked >= waited and not filled and (
                            held_from is None or heard - held_until >= _DRAINED):
                        held_from = None
                        lived = heard
                    else:
                        lived = returned if held_from is None else held_from
                    self._last_heard = lived
                    returned = free = heard
                    if messages:
                        # held_for(): a sink that blocks holds us up (from its call, for a
                        # read the keeper made)
                        self._sink_since = heard if wall is None else monotonic()
                        release()
                        try:
                            deliver(messages, wall)
                        finally:
                            acquire()
                        self._sink_since = None
                        if ahead.watched is not None:
                            watched()
                        # Data that comes in after a silence may have been sent long before
                        # (TCP delivers what it held after a partition heals): the server sent
                        # the newest event at its `datetime`, and sent nothing we read after
                        # that (chaos seed 11, t+134: read 0.7 s late, then closed by the
                        # server's keepalive; the events sent between fell in no gap). The
                        # gap begins then (`_heard_late`, judged at the loss: nothing parsed
                        # per read).
                        self._late = (lived, heard)
                    else:  # a read without events (a pong) is dated from its arrival
                        self._late = None
                    now = last_data = monotonic()
                    if reader.pongs != pongs:
                        self.pongs += reader.pongs - pongs
                        pongs = reader.pongs
                        pong_due = None
                    if reader.close_frame is not None and not stash:
                        return "closed"
                if now >= next_ping:
                    next_ping = now + ping_interval
                    if pong_due is None:
                        pong_due = now + pong_timeout
                        try:
                            ws.ping()
                        except (OSError, websocket.WebSocketException):
                            return "dropped"
        finally:
            release()

    def _deliver(self, messages: list[bytes | memoryview], wall: float | None = None) -> None:
        """Parse one read's frames and hand the good ones to the sink as one batch; keep the
        newest of them, with when it came in, for `_heard_late`.

        `messages` may be views into the reader's buffer: nothing here keeps one (the
        recorder's frames are copied). `wall`: when they came in (POSIX time), for a read the
        keeper stashed; else now."""
        now = self._clock() if wall is None else wall
        auth_error: AuthRejected | None = None
        try:
            # The usual read, in C calls over the whole batch: every frame an object with a
            # string `type` that is an event's (not auth/error). Anything else: one by one.
            events = list(map(orjson.loads, messages))
            # counted here once, for the engine's count too; TypeError: not an object, or a
            # type that is not hashable; KeyError: no type
            types = Counter(map(_TYPE, events))
            usual = _NOT_EVENT.isdisjoint(types) and all(type(kind) is str for kind in types)
        except (orjson.JSONDecodeError, TypeError, KeyError):
            usual = False
        if usual:
            # Without a recorder nothing reads the frames again: the batch does not keep
            # them (the hand-off queue holds ~700 events, 0.25 MB of frames beside them).
            batch = Batch(events, now,
                          None if self._recorder is None else list(map(bytes, messages)),
                          types=types)
        else:
            batch, auth_error = self._parse_each(messages, now)
        self._metrics.stream_last_event.set(now)
        self._newest = (batch.events[-1], now) if batch else None
        if batch:
            if batch.raws is not None and self._recorder is not None:
                try:
                    self._recorder.write_batch(batch.raws)
                except OSError as exc:  # a full disk must not stop the stream
                    report_internal_error("recorder", exc, self._metrics)
            self._sink(batch)
        if auth_error is not None:
            raise auth_error

    def _heard_late(self) -> float:
        """How long before the last read's date the server sent its newest event (by its
        `datetime`, at most a keepalive window): the gap begins then. 0 when the last read
        held no event."""
        late, newest = self._late, self._newest
        if late is None or newest is None:
            return 0.0
        lived, heard = late
        stale = self._staleness(*newest)
        return max(0.0, lived - (heard - stale))

    def _staleness(self, event: dict[str, Any], now: float) -> float:
        """How long before `now` (POSIX time) the server sent `event`, by its `datetime`:
        0 when it names no time or a later one, at most a keepalive window (`_stale_cap`).

        One parse per read (the newest event's), and one per distinct value: a read's
        events mostly share their second with the read's before."""
        value = event.get("datetime")
        if type(value) is not str:
            return 0.0
        text, sent = self._sent
        if value != text:
            sent = parse_datetime(value) if len(value) <= _DATETIME_MAX else None
            self._sent = (value, sent)
        if sent is None or sent >= now:
            return 0.0
        return min(now - sent, self._stale_cap)

    def _parse_each(self, messages: list[bytes | memoryview],
                    now: float) -> tuple[Batch, AuthRejected | None]:
        """A read holding something else than events (auth, error, malformed frames): the
        events, and the AuthRejected an `error` message means."""
        events: list[dict[str, Any]] = []
        raws: list[bytes] = []
        auth_error: AuthRejected | None = None
        for message in messages:
            payload = bytes(message)  # kept past the next read (a view would not be)
            try:
                event = parse_event(payload)
            except MalformedEvent as exc:
                self.on_decode_error(exc)
                continue
            kind = event["type"]
            if kind == "auth" or kind == "error":
                if kind == "error" and self._error_message(event):
                    auth_error = AuthRejected("stream sent error UNAUTHORIZED")
                continue
            events.append(event)
            raws.append(payload)
        return Batch(events, now, raws if self._recorder is not None else None), auth_error

    def _error_message(self, event: dict[str, Any]) -> bool:
        """Log and count an `error` message; say whether it rejects the credentials."""
        data = event.get("data")
        message = data.get("errorMessage") if isinstance(data, dict) else None
        text = str(message)[:200] if message is not None else "(no errorMessage)"
        self._metrics.stream_errors.inc()
        logger.warning("stream error message from %s: %s", self._safe_url, text)
        return text == "UNAUTHORIZED"

    # -- let go -----------------------------------------------------------------------------------
    def disconnect(self, reason: str) -> None:
        """Close frame and a brief wait when stopping; echo a close; else just shut the socket."""
        ws, reader, ahead = self._ws, self._reader, self._ahead
        self._reader = self._ahead = None
        if ahead is not None:  # before reading here: the keeper reads it no more
            ahead.shut()
            KEEPER.forget(ahead)
        if ws is None:
            return
        if reason == "stopped" and reader is not None:
            self._finish(ws, reader)
            return
        if reason == "closed" and reader is not None:
            self._send_close(ws, reader.close_frame[0] if reader.close_frame else None)
        elif reason == "auth_rejected":
            self._send_close(ws)
        _quietly(ws.shutdown)

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
