"""The Engine's `/events` stream, consumed by the shared loop, with no gaps the Engine can fill.

Each connection negotiates a client, reads `/info` (the Engine's ID) and opens `GET /events`
through docker-py (`APIClient.events(decode=True, since=...)`). After the first connection,
`since` is the exact `timeNano` of the last event handed on (before any: the Engine's time at
the first connection), so the Engine first replays what this connection missed (the overlap,
that last event itself, is dropped by the de-dup window: the uuid is the same). Before that,
one bounded query (`since` = `until` = that time) asks whether the Engine still holds that
event: it does not after a restart (its buffer lives in memory) or once more than its buffer
(256 events) happened, and a different Engine ID means another Engine. Only then are the
loop's gap events (`disconnected`, then `connected` with `gap_seconds`) passed on; after a
complete replay they are dropped and the replay is logged. (Before any event was seen there
is nothing to look for: only a changed Engine ID counts as a gap then.)

The stream has no heartbeat, so a watchdog pings the Engine every `ping_interval` on its own
connection and ends the stream when the Engine stops answering (a dead TCP peer).
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import docker
import docker.errors
import orjson

from eventd.clients.docker import describe_failure, safe_address
from eventd.errors import MalformedEvent
from eventd.events import Received
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.settings import DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT
from eventd.sources.base import ConsumerLoop, Disconnected, LoopOptions, Sink
from eventd.sources.docker.mapping import engine_event, time_nano_of

logger = logging.getLogger(__name__)

ClientFactory = Callable[[], docker.APIClient]


def since_text(time_nano: int) -> str:
    """`seconds.nanoseconds`, the exact form the Engine's `since` and `until` accept."""
    seconds, nanos = divmod(time_nano, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def past_events(client: docker.APIClient, since: str, until: str,
                timeout: float = 10.0) -> list[Any]:
    """The events the Engine holds between two past times: one bounded request, parsed here.

    (`APIClient.events` streams without a timeout; an Engine that never ends the answer must
    not hang a reconnect.)
    """
    response = client.get(f"{client.base_url}/v{client.api_version}/events",
                          params={"since": since, "until": until}, timeout=timeout)
    try:
        response.raise_for_status()
        return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]
    finally:
        response.close()


def engine_time_nano(value: object) -> int | None:
    """The Engine's `SystemTime` (RFC 3339, nanoseconds) as POSIX nanoseconds."""
    if not isinstance(value, str) or "T" not in value:
        return None
    text = value.strip()
    zone = "+00:00"
    if text.endswith("Z"):
        text = text[:-1]
    elif len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
        text, zone = text[:-6], text[-6:]
    whole, _, fraction = text.partition(".")
    try:
        seconds = _dt.datetime.fromisoformat(whole + zone).timestamp()
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + nanos


class EngineEvents(ConsumerLoop):
    """Consumes one Docker Engine's events until `stopping` is set."""

    def __init__(self, address: str, client_factory: ClientFactory, sink: Sink, metrics: Metrics,
                 stopping: threading.Event, loop_options: LoopOptions | None = None,
                 ping_interval: float = DEFAULT_PING_INTERVAL,
                 ping_timeout: float = DEFAULT_PONG_TIMEOUT,
                 recorder: Any = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._downstream = sink
        super().__init__(sink=self._pass_gap_events_if_needed, metrics=metrics, stopping=stopping,
                         loop_options=loop_options or LoopOptions(), sleep=sleep, clock=clock)
        self.address = safe_address(address)
        self._factory = client_factory
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._recorder = recorder  # --record: the mapped events, one JSON per line (replayable)
        self._client: docker.APIClient | None = None
        self._stream: Any = None
        self._engine_id: str | None = None
        self._last: tuple[int, str] | None = None  # (timeNano, uuid) of the last event handed on
        self._baseline: int | None = None  # the Engine's time at the first connection (nanos)
        self._replay_complete = True
        self._resumed = False  # this connection asked for events since an earlier time
        self._held_gap: Received | None = None
        self._conn_lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._unresponsive = False
        self.replayed = 0  # events the Engine replayed through `since` (tests, logs)

    # -- ConsumerLoop ---------------------------------------------------------------------------
    def describe(self) -> str:
        """The Engine's address (DOCKER_HOST)."""
        return self.address

    def connect(self) -> None:
        """Negotiate, identify the Engine, check whether it can replay, open the stream."""
        try:
            client = self._factory()
        except Exception as exc:  # noqa: BLE001 - docker-py raises many kinds; all mean "not now"
            failure = describe_failure(exc)
            raise Disconnected(failure.reason, detail=failure.detail) from None
        try:
            info = client.info()
        except Exception as exc:  # noqa: BLE001
            client.close()
            failure = describe_failure(exc)
            raise Disconnected(failure.reason, detail=failure.detail) from None
        engine_id = str(info.get("ID") or "") if isinstance(info, dict) else ""
        since = None
        if self._last is not None:
            since = since_text(self._last[0])
            self._replay_complete = self._can_replay(client, engine_id, since)
        elif self._baseline is not None:
            # Nothing seen yet: ask from the first connection on. Without an event of ours to
            # look for, only another Engine ID tells that it cannot replay.
            since = since_text(self._baseline)
            self._replay_complete = not self._other_engine(engine_id)
        else:
            system_time = info.get("SystemTime") if isinstance(info, dict) else None
            self._baseline = engine_time_nano(system_time) or int(self._clock() * 1e9)
        self._engine_id = engine_id
        self._resumed = since is not None
        try:
            stream = client.events(decode=True, since=since)
        except Exception as exc:  # noqa: BLE001
            client.close()
            failure = describe_failure(exc)
            raise Disconnected(failure.reason, detail=failure.detail) from None
        with self._conn_lock:
            self._client, self._stream = client, stream
            self._unresponsive = False
        self._start_watchdog(stream)

    def consume(self) -> str:
        """Hand on each event as it comes; say why the stream ended."""
        stream = self._stream
        assert stream is not None
        replaying = self._resumed
        replay_until = int(self._clock() * 1e9)
        iterator: Iterator[Any] = iter(stream)
        sink = self.deliver
        set_last = self._metrics.stream_last_event.set
        debug = logger.isEnabledFor(logging.DEBUG)  # bench/docker_latency.py's breakdown
        while True:
            if self.stopped():
                return "stopped"
            try:
                raw = next(iterator)
            except StopIteration:
                break
            except docker.errors.StreamParseError as exc:
                self.on_decode_error(MalformedEvent("not_json", str(exc)[:200]))
                return "protocol_error"
            except Exception:  # noqa: BLE001 - a closed or broken socket, in one of many forms
                break
            now = self._clock()
            set_last(now)
            try:
                event = engine_event(raw)
            except MalformedEvent as exc:
                self.on_decode_error(exc)
                continue
            time_nano = time_nano_of(event)
            if replaying and time_nano is not None and time_nano <= replay_until:
                self.replayed += 1
            else:
                replaying = False
            if debug:
                logger.debug("read %s %s event %s", event["type"], event["action"],
                             event["uuid"])
            if self._recorder is not None:
                self._record(event)
            sink([Received(event, now, None)])
            if time_nano is not None:
                self._last = (time_nano, event["uuid"])
        if self.stopped():
            return "stopped"
        return "pong_timeout" if self._unresponsive else "dropped"

    def disconnect(self, reason: str) -> None:
        """Stop the watchdog and close the stream and the client."""
        self._watchdog_stop.set()
        with self._conn_lock:
            client, stream = self._client, self._stream
            self._client = self._stream = None
        _close_quietly(stream)
        if client is not None:
            _close_quietly(client)
        if reason == "stopped":
            logger.info("event stream of %s closed", self.address)

    def interrupt(self) -> None:
        """Wake a blocked read by closing its socket."""
        with self._conn_lock:
            stream = self._stream
        _close_quietly(stream)

    def _record(self, event: dict[str, Any]) -> None:
        try:
            self._recorder.write_batch([orjson.dumps(event)])
        except OSError as exc:  # a full disk must not stop the stream
            report_internal_error("recorder", exc, self._metrics)

    # -- gaps -----------------------------------------------------------------------------------
    def _other_engine(self, engine_id: str) -> bool:
        if self._engine_id and engine_id and engine_id != self._engine_id:
            logger.warning("%s is another Engine now (ID changed); events in between are lost",
                           self.address)
            return True
        return False

    def _can_replay(self, client: docker.APIClient, engine_id: str, since: str) -> bool:
        """Whether the Engine still holds the last event handed on (so `since` loses nothing)."""
        if self._other_engine(engine_id):
            return False
        assert self._last is not None
        try:
            held = past_events(client, since, since)
        except Exception as exc:  # noqa: BLE001 - the stream that follows will tell
            logger.warning("could not ask %s what it still holds (%s); assuming a gap",
                           self.address, describe_failure(exc).detail)
            return False
        for raw in held:
            try:
                if engine_event(raw)["uuid"] == self._last[1]:
                    return True
            except MalformedEvent:
                continue
        logger.warning("%s no longer holds the last event eventd saw (it restarted, or more "
                       "than its buffer happened); events in between are lost", self.address)
        return False

    def _pass_gap_events_if_needed(self, batch: Sequence[Received]) -> None:
        """Drop the loop's gap events when the Engine replays the gap; pass them on otherwise."""
        if len(batch) == 1 and batch[0].internal and batch[0].event.get("type") == "eventd":
            event = batch[0].event
            if event.get("state") == "disconnected":
                self._held_gap = batch[0]  # until we know whether the Engine can replay
                return
            if event.get("state") == "connected" and event.get("gap_seconds") is not None:
                held, self._held_gap = self._held_gap, None
                if self._replay_complete:
                    logger.info("%s replays the %.1f s gap through since=: no events lost",
                                self.address, event["gap_seconds"])
                    return
                batch = ([held] if held is not None else []) + list(batch)
        self._downstream(batch)

    # -- watchdog -------------------------------------------------------------------------------
    def _start_watchdog(self, stream: Any) -> None:
        if self._ping_interval <= 0:
            return
        self._watchdog_stop = stop = threading.Event()
        thread = threading.Thread(target=self._watch, args=(stop, stream),
                                  name="eventd-docker-ping", daemon=True)
        self._watchdog = thread
        thread.start()

    def _watch(self, stop: threading.Event, stream: Any) -> None:
        """Ping the Engine on a connection of its own; end `stream` if the Engine stops answering.

        Only that stream: a ping that fails late must not end the next connection's.
        """
        try:
            pinger = self._factory()
        except Exception:  # noqa: BLE001 - the stream will end by itself
            return
        try:
            pinger.timeout = self._ping_timeout
            while not stop.wait(self._ping_interval):
                try:
                    pinger.ping()
                except Exception as exc:  # noqa: BLE001
                    if stop.is_set():
                        return
                    with self._conn_lock:
                        if self._stream is not stream:
                            return
                        self._unresponsive = True
                    logger.warning("%s does not answer pings (%s); reconnecting", self.address,
                                   describe_failure(exc).detail)
                    _close_quietly(stream)
                    return
        finally:
            _close_quietly(pinger)


def _close_quietly(closeable: Any) -> None:
    if closeable is None:
        return
    try:
        closeable.close()
    except Exception:  # noqa: BLE001, S110 - best-effort teardown of a dead connection
        pass
