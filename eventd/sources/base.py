"""The consumer loop every source runs, and the small interface a source implements.

Shaped like kombu's `ConsumerMixin`: `run()` loops until `stopping` is set (checked between
short reads and inside every wait); each lap connects once (`connect`), reads batches until
the connection ends (`consume`), and lets it go (`disconnect`). The loop owns what is the
same for every source: gap events (`disconnected`, then `connected` with `gap_seconds`), a
replay of the gap on a thread of its own (`replay_since`), the backoff between attempts
(`eventd.backoff`, the policy delivery and backfill wait by too; Retry-After honoured,
interrupted by stop), a cap on the restart rate,
the policy for rejected credentials, and bad input logged once, counted and skipped.

Hooks, for subclasses and observers: `on_connected(gap)`, `on_disconnected(exc, retry_in)`,
`on_decode_error(exc)`. Log lines go to the logger of the subclass's module, so each source's
lines keep its own name.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

from eventd.backoff import Backoff, Rng, Streak
from eventd.errors import AuthRejected, ConfigError, MalformedEvent, StreamError
from eventd.events import Received, stream_event
from eventd.hooks import hooks
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.settings import DEFAULT_AUTH_ERROR_WAIT, DEFAULT_HEALTHY_AFTER

Sink = Callable[[Sequence[Received]], None]

#: source name -> "module:factory"; the factory takes a SourceContext (kombu's TRANSPORT_ALIASES)
SOURCES: dict[str, str] = {
    "dockercloud": "eventd.sources.dockercloud.source:build",
    "docker": "eventd.sources.docker.source:build",
}


class Disconnected(StreamError):
    """Why one connection attempt, or one connection, ended; `reason` is a bounded label."""

    def __init__(self, reason: str, *, connected: bool = False, retry_after: float | None = None,
                 detail: str = "", healthy: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.connected = connected  # whether the connection had been established
        self.retry_after = retry_after
        self.detail = detail
        self.healthy = healthy  # it lasted at least `healthy_after`


@dataclass(frozen=True)
class LoopOptions:
    """The loop's timings and policies."""

    backoff: Backoff = Backoff()
    healthy_after: float = DEFAULT_HEALTHY_AFTER
    on_auth_error: str = "exit"  # exit | wait
    auth_error_wait: float = DEFAULT_AUTH_ERROR_WAIT
    #: connection attempts allowed in a burst, then at most `restart_rate` per second
    restart_burst: int = 10
    restart_rate: float = 1.0


class RestartLimit:
    """A token bucket on connection attempts: whatever the backoff says, never a hot loop."""

    def __init__(self, burst: int, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = max(1, burst)
        self._rate = max(1e-6, rate)
        self._clock = clock
        self._tokens = float(self._burst)
        self._at = clock()

    def wait_needed(self) -> float:
        """Take a token if one is there (0.0); else how long until one is."""
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


@dataclass(frozen=True)
class SourceContext:
    """What a source factory gets to build its consumer from (see SOURCES)."""

    settings: Any
    sink: Sink
    metrics: Metrics
    stopping: threading.Event
    credentials: Any = None
    rest: Any = None
    recorder: Any = None


SourceFactory = Callable[[SourceContext], "ConsumerLoop"]


def resolve_source(name: str) -> SourceFactory:
    """The factory registered under `name`; ConfigError with a did-you-mean otherwise."""
    target = SOURCES.get(name)
    if target is None:
        close = get_close_matches(name, SOURCES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown source {name!r} (known: {', '.join(sorted(SOURCES))}){hint}")
    module, _, attr = target.partition(":")
    factory: SourceFactory = getattr(importlib.import_module(module), attr)
    return factory


class ConsumerLoop(ABC):
    """Runs one source until `stopping` is set; subclasses implement the four abstract steps."""

    #: the source sets `_last_heard` (monotonic) on every read, so a gap is dated from the
    #: connection's last sign of life rather than from when its loss was noticed
    tracks_liveness = False

    def __init__(self, *, sink: Sink, metrics: Metrics, stopping: threading.Event,
                 loop_options: LoopOptions, credentials_source: str = "",
                 replay: Callable[[float], object] | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] | None = None,
                 rng: Rng | None = None) -> None:
        self.connected = False
        self.log = logging.getLogger(type(self).__module__)
        self._loop = loop_options
        self._sink = sink
        self._metrics = metrics
        self._stopping = stopping
        self._credentials_source = credentials_source
        self._replay = replay
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._wait_or_stop
        self._clock = clock if clock is not None else time.time
        self._rng = rng
        #: consecutive failed or short-lived connections, and the wait after each
        self._streak = self._new_streak()
        self._restarts = RestartLimit(loop_options.restart_burst, loop_options.restart_rate)
        self._auth_waited = False  # `wait` mode: the one more try was used
        self._gap_start: float | None = None  # wall time of the last disconnect
        #: monotonic time the current connection last gave a sign of life (a frame, a pong):
        #: a connection that died silently was lost then, not when its loss was noticed
        self._last_heard: float | None = None
        self._connected_at: float | None = None  # monotonic time of the current connection
        #: monotonic time since when no connection is open (from the start: none yet)
        self._down_since: float | None = time.monotonic()
        #: monotonic time the reader handed its current batch to the sink (None: not in it):
        #: a sink that blocks (a stalled store) holds the reader up while it looks connected
        self._sink_since: float | None = None
        self._invalid_logged: set[str] = set()
        self._close_requested = False
        self._replays: list[threading.Thread] = []

    # -- what a source implements ---------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """Where this source reads from, safe for logs (no credentials, no query)."""

    @abstractmethod
    def connect(self) -> None:
        """Open one connection; raise Disconnected (or AuthRejected) when it cannot be opened."""

    @abstractmethod
    def consume(self) -> str:
        """Read and `deliver` batches until the connection ends; return the reason it ended."""

    @abstractmethod
    def disconnect(self, reason: str) -> None:
        """Let the connection go: politely when stopping, at once when it is already dead."""

    def interrupt(self) -> None:  # noqa: B027 - optional: a source whose reads are short needs none
        """Called by close() from another thread: wake a blocked connect or read."""

    def replay_since(self, since: float) -> object:
        """Recover what happened since `since` (POSIX time), e.g. over another API."""
        return self._replay(since) if self._replay is not None else None

    @property
    def can_replay(self) -> bool:
        """Whether a gap can be replayed at all."""
        return self._replay is not None

    # -- hooks ----------------------------------------------------------------------------------
    def on_connected(self, gap: float | None) -> None:
        """A connection is up (`gap` is None for the first one of the run)."""
        if gap is None:
            self.log.info("connected to %s", self.describe())
        else:
            self.log.info("connected to %s (gap %.1f s)", self.describe(), gap)

    def on_disconnected(self, exc: Disconnected, retry_in: float) -> None:
        """A connection (or an attempt) ended and the next try comes in `retry_in` seconds."""
        if exc.connected:
            self.log.warning("stream lost (%s); reconnecting in %.1f s", exc.reason, retry_in)
        else:
            self.log.warning("cannot connect to %s (%s%s); retrying in %.1f s", self.describe(),
                             exc.reason, f": {exc.detail}" if exc.detail else "", retry_in)

    def on_decode_error(self, exc: MalformedEvent) -> None:
        """Count input that is not an event; log the first of each kind with a sample."""
        self._metrics.events_invalid.labels(reason=exc.reason).inc()
        if exc.reason not in self._invalid_logged:
            self._invalid_logged.add(exc.reason)
            self.log.warning("skipping stream frames that are not events (%s), e.g. %r; "
                             "further ones are only counted", exc.reason, exc.sample[:120])

    # -- public ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Consume until `stopping` is set; raise AuthRejected if credentials are refused for good."""
        try:
            while not self.stopped():
                try:
                    self._connection()
                except AuthRejected as exc:
                    self._auth_rejected(exc)
                    continue
                except Disconnected as exc:
                    if exc.reason == "stopped" or self.stopped():
                        break
                    self._retry_later(exc)
        finally:
            self._set_connected(False)
        self.log.info("stream consumer stopped")

    def close(self) -> None:
        """Stop: end the current connection politely, or abort an attempt in progress."""
        self._close_requested = True
        self.interrupt()

    def stopped(self) -> bool:
        """Whether stop was asked for (by `stopping` or by close())."""
        return self._close_requested or self._stopping.is_set()

    @property
    def healthy(self) -> bool:
        """Connected for at least `healthy_after` (the backoff window starts over after it)."""
        since = self._connected_at
        return since is not None and time.monotonic() - since >= self._loop.healthy_after

    def down_for(self) -> float:
        """Seconds without an open connection (0 while connected): a cluster replica that
        holds the stream's lease but cannot reach the stream hands the lease over."""
        since = self._down_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def held_for(self) -> float:
        """Seconds the reader has been held up in the sink by one batch (0 while it reads):
        a cluster replica whose reader is stuck behind a stalled store hands the lease over,
        as the stream is read by nobody meanwhile."""
        since = self._sink_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def _heard_late(self) -> float:
        """How long before `_last_heard` the server sent the newest data read then, by its own
        word (the stream's `datetime`): what TCP held through a partition comes in late, and
        the gap begins when it was sent. Asked once, at a loss; `down_for` still counts from
        the read. None here: a source with no such word."""
        return 0.0

    @property
    def replay_threads(self) -> list[threading.Thread]:
        """Replay threads started so far (so a caller can join them at shutdown)."""
        return list(self._replays)

    def deliver(self, batch: Sequence[Received]) -> None:
        """Hand one batch to the sink (which may block: backpressure)."""
        self._sink(batch)

    # -- the loop -------------------------------------------------------------------------------
    def _wait_or_stop(self, seconds: float) -> None:
        """Sleep, but wake within 0.1 s of `stopping` being set or close() being called."""
        deadline = time.monotonic() + seconds
        while not self._close_requested:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.wait(min(left, 0.1)):
                return

    def _connection(self) -> None:
        """Connect once, announce it, read until it ends, announce the loss; raise why it ended."""
        wait = self._restarts.wait_needed()
        if wait > 0:
            self.log.warning("%s: too many connection attempts; next one in %.1f s",
                             self.describe(), wait)
            self._sleep(wait)
            if self.stopped():
                raise Disconnected("stopped")
        self.connect()
        began = time.monotonic()
        self._last_heard = began if self.tracks_liveness else None
        now = self._clock()
        gap_start = self._gap_start
        gap = None if gap_start is None else max(0.0, now - gap_start)
        self._set_connected(True)
        self.on_connected(gap)
        hooks.on_connected(self.describe(), gap)
        auth_error: AuthRejected | None = None
        try:
            self._sink_since = time.monotonic()
            self._sink([Received(stream_event("connected", now, gap), now, None, True)])
            self._sink_since = None
            if gap_start is not None and self.can_replay:
                self._start_replay(gap_start)
            reason = self.consume()
            if self.stopped():  # close() from another thread: the server's answer ended the read
                reason = "stopped"
        except AuthRejected as exc:
            reason, auth_error = "auth_rejected", exc
        except BaseException:  # the sink or recorder failed: leave no connection behind
            self.disconnect("error")
            raise
        finally:
            self._set_connected(False)
        self.disconnect(reason)
        if reason == "stopped":
            raise Disconnected("stopped", connected=True)
        # The gap began with the last sign of life, not when the loss was noticed (a ping
        # interval and a pong timeout later): the events in between are in the gap too.
        heard = self._last_heard
        silent = max(0.0, time.monotonic() - heard) + self._heard_late() if heard is not None \
            else 0.0
        lost_at = self._clock() - silent
        self._gap_start = lost_at
        self._sink([Received(stream_event("disconnected", lost_at), lost_at, None, True)])
        healthy = time.monotonic() - began >= self._loop.healthy_after
        if healthy:
            self._auth_waited = False  # a later rejection is a new episode: one more wait
        if auth_error is not None:
            raise auth_error
        raise Disconnected(reason, connected=True, healthy=healthy)

    def _retry_later(self, exc: Disconnected) -> None:
        """Count the loss, pick the backoff (Retry-After wins when longer), tell, sleep."""
        self._metrics.stream_reconnects.labels(reason=exc.reason).inc()
        if exc.healthy:
            self._streak = self._new_streak()
        delay = self._streak.failed()
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self.on_disconnected(exc, delay)
        hooks.on_disconnected(exc.reason, delay, exc.connected)
        self._sleep(delay)

    def _new_streak(self) -> Streak:
        backoff = self._loop.backoff
        return backoff.streak(self._rng) if self._rng is not None else backoff.streak()

    def _auth_rejected(self, exc: AuthRejected) -> None:
        """Never hot-loop on bad credentials: exit, or wait long and try exactly once more."""
        self._metrics.stream_reconnects.labels(reason="auth_rejected").inc()
        source, where = self._credentials_source, self.describe()
        if self._loop.on_auth_error == "exit":
            self.log.error("stream credentials from %s rejected by %s (%s); giving up",
                           source, where, exc)
            raise exc
        if self._auth_waited:
            self.log.error("stream credentials from %s rejected again by %s (%s) after waiting "
                           "%.0f s; giving up", source, where, exc, self._loop.auth_error_wait)
            raise exc
        self._auth_waited = True
        wait = self._loop.auth_error_wait
        self.log.error("stream credentials from %s rejected by %s (%s); trying again in %.0f s",
                       source, where, exc, wait)
        self._sleep(wait)

    def _set_connected(self, value: bool) -> None:
        self._connected_at = time.monotonic() if value else None
        self._sink_since = None  # a sink that raised leaves no hold behind
        if value:
            self._down_since = None
        elif self._down_since is None:
            # Down since the last sign of life (a silent loss is noticed a ping interval and a
            # pong timeout later): a replica hands a stream it cannot reach over that much sooner.
            heard = self._last_heard
            now = time.monotonic()
            self._down_since = now if heard is None else min(now, heard)
        self.connected = value
        self._metrics.stream_connected.set(1 if value else 0)

    def _start_replay(self, gap_start: float) -> None:
        thread = threading.Thread(target=self._run_replay, args=(gap_start,),
                                  name="eventd-backfill", daemon=True)
        self._replays = [t for t in self._replays if t.is_alive()] + [thread]
        thread.start()

    def _run_replay(self, gap_start: float) -> None:
        try:
            self.replay_since(gap_start)
        except Exception as exc:  # noqa: BLE001 - a failed replay must not end anything else
            report_internal_error("backfill", exc, self._metrics)
