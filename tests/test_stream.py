"""StreamConsumer against the emulator over real sockets: delivery, gaps, faults, auth, stop."""

from __future__ import annotations

import email.utils
import json
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.emulator import Emulator
from eventd.errors import AuthRejected
from eventd.events import Batch, Received, events_of, parse_datetime
from eventd.ops.metrics import Metrics
from eventd.settings import Settings, TlsOptions
from eventd.sources.dockercloud.backfill import Backfiller
from eventd.sources.dockercloud.recorder import Recorder
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions
from tests.listener import Listener
from tests.waiting import wait_until

FAST = dict(ping_interval=0.2, pong_timeout=0.3, idle_timeout=5.0, backoff_initial=0.05,
            backoff_max=0.2, healthy_after=0.5, handshake_timeout=2.0)


class Run:
    """One consumer on its own thread, with a sink that records every batch."""

    def __init__(self, url: str, credentials: Credentials, metrics: Metrics,
                 recorder: Recorder | None = None,
                 backfill: Callable[[float], None] | None = None,
                 sleep: Callable[[float], object] | None = None, **options: Any) -> None:
        self.batches: list[list[Received]] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.consumer = StreamConsumer(
            url=url, credentials=credentials, sink=self.sink, metrics=metrics,
            stopping=self.stopping, options=StreamOptions(**{**FAST, **options}),
            recorder=recorder, backfill=backfill, sleep=sleep)
        self.thread = threading.Thread(target=self._main, daemon=True)

    def sink(self, batch: list[Received]) -> None:
        with self._lock:
            self.batches.append(batch)

    def _main(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def start(self) -> Run:
        self.thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> float:
        """Set stopping, join; return how long run() took to return."""
        began = time.monotonic()
        self.stopping.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return after stopping was set"
        return time.monotonic() - began

    def received(self) -> list[Received]:
        with self._lock:
            return [r for batch in self.batches for r in batch]

    def events(self) -> list[dict[str, Any]]:
        """Stream events (not eventd's own)."""
        return [r.event for r in self.received() if not r.internal]

    def gaps(self) -> list[dict[str, Any]]:
        """eventd's own gap events, in order."""
        return [r.event for r in self.received() if r.internal and r.event["type"] == "eventd"]

    def backfilled(self) -> list[dict[str, Any]]:
        return [r.event for r in self.received() if r.internal and r.event.get("backfilled")]


def _starter(emulator: Emulator, metrics: Metrics) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(credentials: Credentials | None = None, url: str | None = None, **kwargs: Any) -> Run:
        creds = credentials or Credentials(header=emulator.auth_header, source="test")
        run = Run(url or stream_url(emulator), creds, metrics, **kwargs).start()
        runs.append(run)
        return run

    yield make
    emulator.faults.clear()
    for run in runs:
        run.stop(timeout=5)


@pytest.fixture
def start(emulator: Emulator, metrics: Metrics) -> Iterator[Callable[..., Run]]:
    yield from _starter(emulator, metrics)


#: the chaos test's stream keepalive: a ping every 0.5 s, the connection ended without a pong
#: within 1 s
CHAOS_KEEPALIVE = (0.5, 1.0)


@pytest.fixture
def keepalive_emulator(request: pytest.FixtureRequest, tmp_path) -> Iterator[Emulator]:
    """The emulator with its keepalive on, as in the chaos test (`wss` as a param: over TLS)."""
    tls = getattr(request, "param", "ws") == "wss"
    with Emulator(tick=0.02, keepalive=CHAOS_KEEPALIVE, tls=tls,
                  tls_dir=tmp_path / "tls" if tls else None) as emu:
        yield emu


@pytest.fixture
def kept_start(keepalive_emulator: Emulator, metrics: Metrics) -> Iterator[Callable[..., Run]]:
    """`start` against the keepalive emulator."""
    yield from _starter(keepalive_emulator, metrics)


def stream_url(emu: Emulator, host: str | None = None, namespace: str | None = None) -> str:
    env = {"DOCKERCLOUD_STREAM_HOST": host or emu.stream_url}
    if namespace:
        env["DOCKERCLOUD_NAMESPACE"] = namespace
    return Settings.from_env(env).stream_url


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A metric's value; a series that does not exist fails the test (it is not 0)."""
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no series {name}{labels or ''} in /metrics"
    return value


def at_least(metrics: Metrics, n: float, name: str, **labels: str) -> bool:
    """For waits: the series exists and has reached `n` (a series created later is fine)."""
    value = metrics.registry.get_sample_value(name, labels)
    return value is not None and value >= n


def reconnects(metrics: Metrics, reason: str) -> float:
    return sample(metrics, "eventd_stream_reconnects_total", reason=reason)


def reconnected(metrics: Metrics, reason: str, n: int = 1) -> Callable[[], bool]:
    return lambda: at_least(metrics, n, "eventd_stream_reconnects_total", reason=reason)


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


def connected(run: Run, n: int = 1) -> Callable[[], bool]:
    return lambda: run.consumer.connected and \
        sum(1 for e in run.gaps() if e["state"] == "connected") >= n


# -- delivery -----------------------------------------------------------------------------------

def test_events_arrive_as_sent_with_headers_and_no_frame_kept(emulator, metrics, start):
    run = start()
    wait_until(connected(run))
    sent = [emulator.emit_event(type="container", state=s) for s in ("Stopped", "Starting", "Running")]
    wait_until(lambda: len(run.events()) == 3)
    assert run.events() == sent
    got = [r for r in run.received() if not r.internal]
    assert [r.raw for r in got] == [None] * 3  # nothing reads a frame again: none is kept
    assert all(abs(r.received_at - time.time()) < 5 for r in got)
    assert [e["state"] for e in run.gaps()] == ["connected"]
    assert run.gaps()[0]["gap_seconds"] is None
    hs = emulator.handshakes()
    assert len(hs) == 1 and hs[0].status == 101
    assert hs[0].headers.get("Authorization") == emulator.auth_header
    assert hs[0].headers.get("User-Agent").startswith("eventd/")
    assert sample(metrics, "eventd_stream_connected") == 1
    assert sample(metrics, "eventd_stream_last_event_timestamp_seconds") > time.time() - 5


@pytest.mark.parametrize("host_suffix", ["", "/"])
def test_namespace_in_path_with_both_host_forms(emulator, start, host_suffix):
    host = emulator.stream_url.rstrip("/") + host_suffix
    run = start(url=stream_url(emulator, host=host, namespace=emulator.namespace))
    wait_until(connected(run))
    sent = emulator.emit_event(type="service", state="Running")
    wait_until(lambda: run.events() == [sent])
    assert [h.path for h in emulator.handshakes()] == [f"/api/audit/v1/{emulator.namespace}/events/"]


def test_malformed_frames_are_counted_by_reason_and_good_ones_delivered(emulator, metrics, start,
                                                                        caplog):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.stream")
    run = start()
    wait_until(connected(run))
    good = []
    good.append(emulator.emit_event(state="Running"))
    for frame in ("not json", "{broken", "[1, 2]", '"text"', '{"no": "type"}', '{"type": ""}',
                  '{"type": 5}', b"\xff\xfe binary junk"):
        emulator.emit(frame)
    good.append(emulator.emit_event(state="Stopped"))
    emulator.emit('{"type": "image", "new_field": 1}')  # unknown type, extra field: passes
    wait_until(lambda: len(run.events()) == 3)
    assert run.events()[:2] == good
    assert run.events()[2] == {"type": "image", "new_field": 1}
    assert sample(metrics, "eventd_events_invalid_total", reason="not_json") == 3
    assert sample(metrics, "eventd_events_invalid_total", reason="not_object") == 2
    assert sample(metrics, "eventd_events_invalid_total", reason="missing_type") == 3
    logged = [r for r in caplog.records if "not events" in r.getMessage()]
    assert sorted(r.getMessage().split("(")[1].split(")")[0] for r in logged) == \
        ["missing_type", "not_json", "not_object"]
    assert run.consumer.connected  # never dies on input


def test_auth_and_error_messages_are_not_events(emulator, metrics, start, caplog):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.stream")
    run = start()
    wait_until(connected(run))
    emulator.emit({"type": "auth"})
    emulator.emit({"type": "error", "data": {"errorMessage": "Something broke"}})
    sent = emulator.emit_event(state="Running")
    wait_until(lambda: len(run.events()) == 1)
    assert run.events() == [sent]
    assert sample(metrics, "eventd_stream_error_messages_total") == 1
    assert any("Something broke" in r.getMessage() for r in caplog.records)
    assert run.consumer.connected


def test_recorder_writes_exactly_the_good_frames(emulator, start, tmp_path):
    recorder = Recorder(tmp_path / "rec" / "stream.jsonl")
    run = start(recorder=recorder)
    wait_until(connected(run))
    first = emulator.emit_event(state="Stopped")
    emulator.emit("junk")
    emulator.emit({"type": "error", "data": {"errorMessage": "x"}})
    emulator.emit('{"type":"container",\n "state":"Running"}')  # a frame with a line break
    second = emulator.emit_event(state="Starting")
    wait_until(lambda: len(run.events()) == 3)
    got = [r for r in run.received() if not r.internal]
    assert [json.loads(r.raw) for r in got] == run.events()  # the frames, for the recorder
    run.stop()
    recorder.close()
    lines = (tmp_path / "rec" / "stream.jsonl").read_bytes().splitlines()
    assert lines == [json.dumps(first, separators=(",", ":")).encode(),
                     b'{"type":"container","state":"Running"}',
                     json.dumps(second, separators=(",", ":")).encode()]


# -- losing and finding the connection ----------------------------------------------------------

def test_server_restart_mid_stream_gives_gap_events_and_resumes(emulator, metrics, start):
    run = start()
    wait_until(connected(run))
    before = emulator.emit_event(state="Stopped")
    wait_until(lambda: len(run.events()) == 1)
    emulator.restart_stream()
    wait_until(connected(run, 2))
    after = emulator.emit_event(state="Running")
    wait_until(lambda: len(run.events()) == 2)
    assert run.events() == [before, after]
    gaps = run.gaps()
    assert [e["state"] for e in gaps] == ["connected", "disconnected", "connected"]
    assert gaps[0]["gap_seconds"] is None
    assert 0 <= gaps[2]["gap_seconds"] < 5
    assert reconnects(metrics, "dropped") == 1
    assert [h.status for h in emulator.handshakes()].count(101) == 2


def test_dropped_connection_backfills_actions_done_during_the_gap(emulator, metrics, start):
    creds = Credentials(header=emulator.auth_header, source="test")
    backfill_sink: list[list[Received]] = []
    rest = RestClient(emulator.rest_url, creds)
    holder: dict[str, Run] = {}

    def backfill(gap_start: float) -> None:
        Backfiller(rest, holder["run"].sink, metrics)(gap_start)
        backfill_sink.append([])

    run = holder["run"] = start(backfill=backfill)
    wait_until(connected(run))
    emulator.faults.fail_handshake(503, count=10**6)  # keep eventd out while the action runs
    emulator.faults.drop_connections()
    wait_until(lambda: not run.consumer.connected)
    service = emulator.world.objects("service")[0]
    answer = rest.request("POST", f"/api/app/v1/{emulator.namespace}/service/{service.uuid}/redeploy/")
    action_uri = answer.headers["X-DockerCloud-Action-URI"]
    wait_until(lambda: rest.get(action_uri)["state"] == "Success", timeout=5)
    emulator.faults.clear()
    wait_until(connected(run, 2))
    wait_until(lambda: backfill_sink, timeout=5)
    gaps = run.gaps()
    assert [e["state"] for e in gaps] == ["connected", "disconnected", "connected"]
    assert gaps[2]["gap_seconds"] > 0
    recovered = run.backfilled()
    assert action_uri in [e["resource_uri"] for e in recovered]
    mine = [e for e in recovered if e["resource_uri"] == action_uri][0]
    assert mine["type"] == "action" and mine["state"] == "Success"
    assert mine["parents"] == [emulator.world.resource_uri("service", service.uuid)]
    assert sample(metrics, "eventd_stream_backfilled_events_total") == len(recovered)
    calls = [c for c in emulator.rest_calls() if c.path == "/api/audit/v1/action/"]
    disconnected_at = gaps[1]["datetime"]
    # started during the gap, then ended during it (an action begun before the drop)
    assert [c.query.get("start_date__gte") or c.query.get("end_date__gte") for c in calls] == \
        [disconnected_at, disconnected_at]
    assert "start_date__gte" in calls[0].query and "end_date__gte" in calls[1].query
    assert reconnects(metrics, "dropped") == 1


def test_first_connection_does_not_backfill(emulator, start):
    calls: list[float] = []
    run = start(backfill=calls.append)
    wait_until(connected(run))
    emulator.emit_event()
    wait_until(lambda: len(run.events()) == 1)
    assert calls == []


def test_silent_server_is_detected_by_the_missing_pong(emulator, metrics, start):
    # How fast (ping interval + pong timeout) is a bench figure; here: by the pong, not idleness.
    run = start(ping_interval=0.2, pong_timeout=0.3, idle_timeout=60)
    wait_until(connected(run))
    emulator.faults.set_silent(True)
    wait_until(lambda: reconnects(metrics, "pong_timeout") >= 1, timeout=5)
    assert reconnects(metrics, "idle") == 0
    assert [e["state"] for e in run.gaps()][:2] == ["connected", "disconnected"]
    emulator.faults.clear()
    wait_until(lambda: run.consumer.connected)


def test_a_silent_loss_is_dated_from_the_last_frame_heard_not_from_when_it_was_noticed(
        emulator, metrics, start):
    # Issue 25: a stream that goes silent (a partition: no RST, no FIN) is noticed a ping
    # interval and a pong timeout later; the events sent in between are lost with it, so the
    # gap (its event, the backfill) must begin at the last frame received.
    since: list[float] = []
    run = start(ping_interval=0.2, pong_timeout=2.0, idle_timeout=60,
                backfill=lambda gap_start: since.append(gap_start))
    wait_until(connected(run))
    wait_until(lambda: run.consumer.pongs >= 2)
    emulator.faults.set_silent(True)
    silent_at = time.time()
    wait_until(lambda: reconnects(metrics, "pong_timeout") >= 1, timeout=10)
    noticed_at = time.time()
    emulator.faults.clear()
    wait_until(connected(run, 2), timeout=10)
    wait_until(lambda: since, timeout=5)
    gaps = run.gaps()
    assert noticed_at - silent_at >= 2.0  # the pong timeout passed before the loss was noticed
    assert silent_at - 1.0 <= since[0] <= silent_at + 0.3, (since[0] - silent_at)
    reconnected_at = [r.received_at for r in run.received()
                      if r.internal and r.event["state"] == "connected"][1]
    assert gaps[2]["gap_seconds"] >= reconnected_at - silent_at - 0.1


def _hold_after(run, state: str) -> threading.Event:
    """Make the run's sink (the engine, for the reader) block after a batch holding an event
    in `state`, as a stalled store does, until the returned gate is set (10 s at most)."""
    gate = threading.Event()
    inner = run.consumer._sink

    def holding_sink(batch):
        inner(batch)
        if any(e.get("state") == state for e in events_of(batch)):
            gate.wait(10)

    run.consumer._sink = holding_sink
    return gate


@pytest.mark.parametrize("buffered", [1, 600])
def test_a_loss_while_the_sink_held_the_reader_up_is_dated_from_before_the_hold(
        emulator, metrics, start, buffered):
    # Issue 25 (chaos, a stalled store): the reader sat in a sink that blocked for seconds,
    # the server dropped the connection meanwhile, and what it had sent before was still in
    # the socket. Reading that at once after the hold dated the loss from *then*: the gap
    # event and the backfill began after the events the server sent into no connection.
    # 600: several 64 KiB reads' worth (chaos seed 1, t+420: the first read after a 10 s hold
    # was dated from before it, the second from after it, past 16 events sent into nothing).
    run = start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60)
    gate = _hold_after(run, "Hold")
    try:
        wait_until(connected(run))
        emulator.emit_event(state="Hold")
        wait_until(lambda: [e["state"] for e in run.events()] == ["Hold"])
        for _ in range(buffered):  # in the socket, unread while the sink holds
            emulator.emit_event(state="Buffered")
        wait_until(lambda: sum(c.frames for c in emulator.stream_connections())
                   >= buffered + 2)
        dropped_at = time.time()
        emulator.faults.drop_connections()
        wait_until(lambda: emulator.connection_count == 0)
        lost = emulator.emit_event(state="Lost")  # sent while nobody is connected
        # The hold goes on a while (what the test is about: the loss must not be dated from
        # its end), then lets go.
        wait_until(lambda: time.time() - dropped_at >= 1.5, timeout=5)
        gate.set()
        wait_until(connected(run, 2), timeout=10)
    finally:
        gate.set()
    gaps = run.gaps()
    assert [e["state"] for e in gaps] == ["connected", "disconnected", "connected"]
    assert len([e for e in run.events() if e["state"] == "Buffered"]) == buffered
    lost_at = [r.received_at for r in run.received()
               if r.internal and r.event["state"] == "disconnected"][0]
    assert lost_at <= dropped_at + 0.05, (lost_at - dropped_at)
    assert lost not in run.events()
    reconnected_at = [r.received_at for r in run.received()
                      if r.internal and r.event["state"] == "connected"][1]
    assert gaps[2]["gap_seconds"] >= reconnected_at - dropped_at - 0.05


def test_a_loss_after_a_hold_is_dated_from_before_it_while_other_threads_keep_the_gil(
        emulator, metrics, start):
    # Chaos seed 1 (20261206, t+126, umbrella on r3): the reader sat seconds in a stalled
    # store's sink, the server's keepalive closed the connection meanwhile; a read after the
    # hold that did not fill its room found the rest waiting but took over 2 ms (here: the
    # GIL, taken by busy threads while it was in recv), so it was judged to have waited for
    # its data and dated from its arrival; the keepalive window (1.5 s) capped the
    # `datetime` correction: the gap was announced from 0.9 s after the last event read,
    # past 20 events sent into nobody's connection. A short keepalive, as there. Without the
    # fix this fails in about half the runs (whether a spinner wins the GIL during recv).
    run = start(ping_interval=0.5, pong_timeout=1.0, idle_timeout=60)
    gate = _hold_after(run, "Hold")
    spinning = threading.Event()

    def spin() -> None:  # a busy thread: a read waits for the GIL, not for data
        while not spinning.is_set():
            pass

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(4)]
    switching = sys.getswitchinterval()
    try:
        wait_until(connected(run))
        emulator.emit_event(state="Hold")
        wait_until(lambda: [e["state"] for e in run.events()] == ["Hold"])
        for _ in range(150):  # in the socket, unread while the sink holds
            emulator.emit_event(state="Buffered")
        wait_until(lambda: sum(c.frames for c in emulator.stream_connections()) >= 152)
        dropped_at = time.time()
        emulator.faults.drop_connections()
        wait_until(lambda: emulator.connection_count == 0)
        lost = emulator.emit_event(state="Lost")  # sent while nobody is connected
        wait_until(lambda: time.time() - dropped_at >= 3.0, timeout=6)  # past the 1.5 s cap
        sys.setswitchinterval(0.02)  # a thread that loses the GIL waits this long for it
        for spinner in spinners:
            spinner.start()
        gate.set()
        # The read-ahead stashed the 150 events a read each, delivered one batch a read: with
        # four spinners and 20 ms turns each batch waits for the GIL several times (about
        # 10 s in all on a loaded CI machine)
        wait_until(connected(run, 2), timeout=30)
    finally:
        spinning.set()
        sys.setswitchinterval(switching)
        gate.set()
    for spinner in spinners:
        spinner.join(5)
    lost_at = [r.received_at for r in run.received()
               if r.internal and r.event["state"] == "disconnected"][0]
    assert [e["state"] for e in run.events()][:2] == ["Hold", "Buffered"]
    assert lost_at <= dropped_at + 0.05, (lost_at - dropped_at)
    assert lost not in run.events()
    gaps = run.gaps()
    reconnected_at = [r.received_at for r in run.received()
                      if r.internal and r.event["state"] == "connected"][1]
    assert gaps[2]["gap_seconds"] >= reconnected_at - dropped_at - 0.05


def test_a_silent_loss_counts_as_down_from_the_last_frame_heard(emulator, metrics, start):
    # A cluster replica hands over a stream it has not been connected to for 2/3 TTL
    # (`down_for`): a silent loss, noticed a pong timeout later, counts from the last frame.
    run = start(ping_interval=0.2, pong_timeout=2.0, idle_timeout=60, backoff_initial=5.0,
                backoff_max=5.0)
    wait_until(connected(run))
    wait_until(lambda: run.consumer.pongs >= 2)
    emulator.faults.set_silent(True)
    silent_at = time.monotonic()
    wait_until(lambda: reconnects(metrics, "pong_timeout") >= 1, timeout=10)
    noticed_at = time.monotonic()
    down_for = run.consumer.down_for()
    assert noticed_at - silent_at >= 2.0
    assert down_for >= time.monotonic() - silent_at - 0.5, (down_for, noticed_at - silent_at)
    emulator.faults.clear()


def _held_event(state: str, stamp: object = None, *, with_datetime: bool = True) -> str:
    """A container event as a raw frame, with `datetime` set to `stamp` (any JSON value)."""
    event: dict[str, Any] = {
        "type": "container", "action": "update", "parents": [],
        "resource_uri": "/api/app/v1/user/container/6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01/",
        "state": state, "uuid": f"uuid-{time.monotonic_ns()}"}
    if with_datetime:
        event["datetime"] = stamp
    return json.dumps(event)


def _losses(run: Run) -> list[float]:
    """When each `disconnected` marker says its connection was lost (POSIX time)."""
    return [r.received_at for r in run.received()
            if r.internal and r.event["type"] == "eventd" and r.event["state"] == "disconnected"]


def test_events_read_late_date_the_loss_from_their_datetime_not_their_arrival(
        emulator, metrics, start):
    # Chaos seed 11, t+134: a replica cut off for 1.1 s read, after the heal, what TCP had held
    # (events sent 0.7 s before), then found the connection closed by the server's keepalive.
    # The loss was dated from that late read, so the events the server sent between the held
    # ones and its close fell in no gap. The newest event's `datetime` says when the server
    # sent it: the gap (its marker and the replay) begins no later than that.
    since: list[float] = []
    run = start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60, backfill=since.append)
    wait_until(connected(run))
    stamp = datetime.fromtimestamp(int(time.time()) - 2, timezone.utc)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")  # ~2 s before it arrives, as held data is
    for _ in range(3):
        emulator.emit(_held_event("Held", text))
    wait_until(lambda: len(run.events()) == 3)
    arrived = max(r.received_at for r in run.received() if not r.internal)
    emulator.faults.drop_connections()  # then the server's close
    wait_until(connected(run, 2), timeout=10)
    wait_until(lambda: since, timeout=5)
    lost_at = _losses(run)[0]
    assert arrived - stamp.timestamp() >= 2.0
    assert lost_at <= stamp.timestamp() + 0.01, (lost_at - stamp.timestamp())
    assert since == [lost_at]


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
_ZONES = st.sampled_from(["Z", "", "+00:00", "+23:59", "-23:59", "+05:30", "-01:00"])
_DATETIMES = st.builds(
    lambda moment, zone, sep: moment.isoformat(sep=sep) + zone,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    _ZONES, st.sampled_from(["T", " "]))
_NEAR = st.builds(  # within a minute of now, either side: past, future, the keepalive window
    lambda offset: datetime.fromtimestamp(int(time.time() + offset), timezone.utc)
    .strftime("%Y-%m-%dT%H:%M:%SZ"), st.floats(-60.0, 60.0))
_MISSING = object()
#: what a hostile or broken server may put in `datetime`, or leave out
HOSTILE_DATETIMES = st.one_of(st.just(_MISSING), _ANY_JSON, _DATETIMES, _NEAR)


@given(value=HOSTILE_DATETIMES, now=st.floats(0.0, 4e9))
@settings(max_examples=2000, deadline=None)
def test_any_datetime_moves_a_reads_date_back_by_a_keepalive_window_at_most(value, now):
    # Hostile input: whatever `datetime` says, a read is dated no later than its arrival and
    # at most ping interval + pong timeout before it; nothing raises.
    consumer = StreamConsumer(
        url="ws://127.0.0.1:9/", credentials=Credentials(header="Basic eDp5", source="test"),
        sink=lambda batch: None, metrics=Metrics(), stopping=threading.Event(),
        options=StreamOptions(ping_interval=3.0, pong_timeout=4.0))
    event = {} if value is _MISSING else {"datetime": value}
    stale = consumer._staleness(event, now)
    assert 0.0 <= stale <= 7.0
    # longer than any datetime the stream sends: not parsed
    sent = parse_datetime(value) if isinstance(value, str) and len(value) <= 40 else None
    if sent is not None and sent < now:  # a real one is believed, up to the window
        assert stale == min(now - sent, 7.0)
    else:
        assert stale == 0.0


def test_any_datetime_on_the_wire_keeps_the_gap_start_within_a_keepalive_window(
        emulator, metrics, start):
    # The same through a real connection: an event carrying any `datetime` is read, then the
    # server drops the connection; the gap begins no later than the event's arrival, no more
    # than the keepalive window (10 s) before it, and the consumer reconnects each time.
    run = start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60)
    wait_until(connected(run))

    @given(value=HOSTILE_DATETIMES)
    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    def one_loss(value: object) -> None:
        seen, lost = len(run.events()), len(_losses(run))
        emulator.emit(_held_event("Odd", value, with_datetime=value is not _MISSING))
        wait_until(lambda: len(run.events()) == seen + 1)
        arrived = [r.received_at for r in run.received() if not r.internal][-1]
        emulator.faults.drop_connections()
        wait_until(lambda: len(_losses(run)) == lost + 1 and run.consumer.connected, timeout=10)
        lost_at = _losses(run)[-1]
        assert arrived - 10.0 - run.consumer.options.tick - 0.05 <= lost_at <= arrived + 0.01

    one_loss()
    assert run.error is None and run.thread.is_alive()


def test_idle_watchdog_reconnects_when_no_frame_arrives(emulator, metrics, start):
    run = start(ping_interval=30, pong_timeout=30, idle_timeout=0.4)
    wait_until(connected(run))
    emulator.faults.set_silent(True)
    wait_until(lambda: reconnects(metrics, "idle") >= 1, timeout=3)
    assert reconnects(metrics, "pong_timeout") == 0


def test_stream_keeps_running_with_pings_answered(emulator, metrics, start):
    run = start(ping_interval=0.05, pong_timeout=0.2)
    wait_until(connected(run))
    wait_until(lambda: run.consumer.pongs >= 8, timeout=5)  # many ping rounds pass
    sent = emulator.emit_event()
    wait_until(lambda: run.events() == [sent])
    assert len(emulator.handshakes()) == 1
    assert reconnects(metrics, "pong_timeout") == 0


# -- refused handshakes -------------------------------------------------------------------------

def test_handshake_401_raises_auth_rejected_after_exactly_one_attempt(emulator, metrics, start,
                                                                     caplog):
    caplog.set_level(logging.ERROR, logger="eventd.sources.dockercloud.stream")
    run = start(credentials=Credentials.basic("user", "wrong-key", "test"))
    run.thread.join(5)
    assert isinstance(run.error, AuthRejected) and run.error.status_code == 401
    assert [h.status for h in emulator.handshakes()] == [401]
    assert reconnects(metrics, "auth_rejected") == 1
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert run.gaps() == []


def test_handshake_403_raises_auth_rejected_after_exactly_one_attempt(emulator, metrics, start):
    emulator.faults.fail_handshake(403, count=5)
    run = start()
    run.thread.join(5)
    assert isinstance(run.error, AuthRejected) and run.error.status_code == 403
    assert [h.status for h in emulator.handshakes()] == [403]


def test_unauthorized_error_message_raises_auth_rejected(emulator, metrics, start):
    run = start()
    wait_until(connected(run))
    before = emulator.emit_event()
    emulator.emit({"type": "error", "data": {"errorMessage": "UNAUTHORIZED"}})
    run.thread.join(5)
    assert isinstance(run.error, AuthRejected)
    assert run.events() == [before]
    assert [e["state"] for e in run.gaps()] == ["connected", "disconnected"]
    assert sample(metrics, "eventd_stream_error_messages_total") == 1
    assert len(emulator.handshakes()) == 1
    assert not run.consumer.connected
    assert sample(metrics, "eventd_stream_connected") == 0


def test_on_auth_error_wait_waits_then_tries_exactly_once_more(emulator, metrics, start):
    emulator.faults.reject_auth(True)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            assert [h.status for h in emulator.handshakes()] == [401]
            emulator.faults.reject_auth(False)  # the key was fixed during the long wait

    run = start(sleep=sleep, on_auth_error="wait", auth_error_wait=3600)
    wait_until(connected(run))
    assert waits == [3600]
    assert [h.status for h in emulator.handshakes()] == [401, 101]
    assert run.error is None


def test_on_auth_error_wait_gives_up_at_the_second_rejection(emulator, metrics, start, caplog):
    # One more try, not one per wait for ever: a bad login every hour is the lockout itself.
    caplog.set_level(logging.ERROR, logger="eventd.sources.dockercloud.stream")
    emulator.faults.reject_auth(True)
    waits: list[float] = []
    run = start(sleep=waits.append, on_auth_error="wait", auth_error_wait=3600)
    run.thread.join(5)
    assert isinstance(run.error, AuthRejected)
    assert waits == [3600]
    assert [h.status for h in emulator.handshakes()] == [401, 401]
    assert reconnects(metrics, "auth_rejected") == 2
    assert "rejected again" in caplog.records[-1].getMessage()


def test_on_auth_error_wait_starts_over_after_a_healthy_connection(emulator, metrics, start):
    emulator.faults.reject_auth(True)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if seconds == 3600:  # the key was fixed during the long wait (not during a backoff)
            emulator.faults.reject_auth(False)

    run = start(sleep=sleep, on_auth_error="wait", auth_error_wait=3600, healthy_after=0.2)
    wait_until(connected(run))
    wait_until(lambda: run.consumer.healthy)
    emulator.faults.reject_auth(True)
    emulator.faults.drop_connections()
    wait_until(connected(run, 2))
    assert waits[:1] == [3600] and waits.count(3600) == 2  # a new episode gets its one wait
    assert run.error is None


def test_429_retry_after_seconds_is_honoured(emulator, metrics, start):
    emulator.faults.fail_handshake(429, count=1, retry_after=7)
    waits: list[float] = []
    run = start(sleep=waits.append)
    wait_until(connected(run))
    assert waits == [7.0]
    assert [h.status for h in emulator.handshakes()] == [429, 101]
    assert reconnects(metrics, "handshake_429") == 1


def test_429_retry_after_http_date_is_honoured(emulator, start):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    emulator.faults.fail_handshake(429, count=1, retry_after=when)
    waits: list[float] = []
    run = start(sleep=waits.append)
    wait_until(connected(run))
    assert len(waits) == 1 and 27 <= waits[0] <= 30


def test_503_twice_then_recovery_backs_off_within_bounds(emulator, metrics, start):
    emulator.faults.fail_handshake(503, count=2)
    waits: list[float] = []
    run = start(sleep=waits.append, backoff_initial=0.05, backoff_max=0.2)
    wait_until(connected(run))
    assert [h.status for h in emulator.handshakes()] == [503, 503, 101]
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.05 and 0 <= waits[1] <= 0.1  # full jitter, doubling window
    assert reconnects(metrics, "handshake_503") == 2
    assert run.gaps()[0]["gap_seconds"] is None  # still the first connection of the run
    sent = emulator.emit_event()
    wait_until(lambda: run.events() == [sent])


def test_backoff_window_resets_after_a_healthy_connection(emulator, metrics, start):
    emulator.faults.fail_handshake(503, count=8)
    waits: list[float] = []
    run = start(sleep=waits.append, backoff_initial=0.05, backoff_max=10, healthy_after=0.2)
    wait_until(connected(run))
    assert len(waits) == 8 and all(0 <= w <= 10 for w in waits)
    wait_until(lambda: run.consumer.healthy)
    emulator.faults.drop_connections()
    wait_until(connected(run, 2))
    assert len(waits) == 9
    assert waits[8] <= 0.05  # the window starts over (it would be up to 10 s otherwise)


def test_slow_handshake_within_the_timeout_connects(emulator, metrics, start):
    emulator.faults.set_delay(handshake=0.5)
    began = time.monotonic()
    run = start(handshake_timeout=3)
    wait_until(connected(run), timeout=5)
    assert time.monotonic() - began >= 0.5
    assert [h.status for h in emulator.handshakes()] == [101]


def test_handshake_slower_than_the_timeout_is_retried(emulator, metrics, start):
    emulator.faults.set_delay(handshake=1.0)
    run = start(handshake_timeout=0.3)
    wait_until(lambda: reconnects(metrics, "connect_timeout") >= 1, timeout=3)
    emulator.faults.set_delay(handshake=0)
    wait_until(connected(run), timeout=5)


def test_unreachable_server_is_retried_as_connect_error(emulator, metrics, start):
    emulator.stop_stream()
    run = start()
    wait_until(lambda: reconnects(metrics, "connect_error") >= 2)
    emulator.start_stream()
    wait_until(connected(run))


# -- stopping -----------------------------------------------------------------------------------

def test_stopping_during_a_long_backoff_returns_within_a_second(emulator, start):
    emulator.faults.fail_handshake(503, count=1, retry_after=60)
    run = start()
    wait_until(lambda: emulator.handshakes())
    wait_until(lambda: run.thread.is_alive() and not run.consumer.connected)
    run.stop(timeout=5)  # fails unless run() returns long before the 60 s Retry-After
    assert run.error is None
    assert len(emulator.handshakes()) == 1


class Stuck:
    """A server that holds a connect up: `jammed`, its accept queue full (SYNs dropped, the
    client's TCP connect hangs, as in a partition); else it accepts and never answers (a TLS
    or HTTP handshake hangs)."""

    def __init__(self, jammed: bool) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = threading.Event()
        if jammed:
            for _ in range(3):  # the queue holds backlog + 1; more connect in SYN_SENT
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", self.port))
                self.held.append(client)
        else:
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        self.held.append(conn)
        self.accepted.set()

    def heard_from_client(self) -> bool:
        """The accepted client has sent something (and now waits for an answer)."""
        readable, _, _ = select.select(self.held, [], [], 0)
        return bool(readable)

    def close(self) -> None:
        for sock in [*self.held, self.server]:
            sock.close()


@pytest.mark.parametrize("scheme,jammed", [("ws", True), ("wss", True), ("wss", False),
                                           ("ws", False)],
                         ids=["tcp-connect", "tcp-connect-tls", "tls-handshake", "http-upgrade"])
def test_a_consumer_stopped_while_its_connection_hangs_returns_at_once(emulator, start, scheme,
                                                                       jammed):
    # A consumer cut off from the stream server whose lease is handed over: close() must end
    # a TCP connect, TLS handshake or HTTP upgrade under way, not leave it to the handshake
    # timeout (10 s here): the lease of a consumer that does not stop is left to expire.
    stuck = Stuck(jammed)
    try:
        run = start(url=stream_url(emulator, host=f"{scheme}://127.0.0.1:{stuck.port}/"),
                    handshake_timeout=10.0)
        if jammed:  # its socket made and connecting (the connect's SYN unanswered)
            wait_until(lambda: run.consumer._dial is not None
                       and run.consumer._dial._handle is not None)
        else:  # its ClientHello or upgrade request sent: it waits for the answer
            assert stuck.accepted.wait(5)
            wait_until(stuck.heard_from_client)
        assert run.thread.is_alive() and not run.consumer.connected
        began = time.monotonic()
        run.consumer.close()
        run.thread.join(5)
        assert not run.thread.is_alive()
        assert time.monotonic() - began < 1.0
        assert run.error is None
    finally:
        stuck.close()


class ConnectProxy:
    """An HTTP proxy that only tunnels (CONNECT), recording each request line."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests: list[str] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        host, _, port = line.split()[1].rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        self.sockets.append(upstream)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        for sock in [self.server, *self.sockets]:
            sock.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_the_stream_goes_through_the_proxy_of_the_environment(emulator, start, monkeypatch):
    # websocket-client's proxy handling (http_proxy, no_proxy) is kept though eventd opens
    # the socket itself (to abort a hung connect).
    proxy = ConnectProxy()
    try:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("no_proxy", "example.invalid")  # else loopback is never proxied
        run = start()
        wait_until(connected(run))
        sent = emulator.emit_event(type="container", state="Running")
        wait_until(lambda: run.events() == [sent])
        port = urlsplit(emulator.stream_url).port
        assert proxy.requests == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
        run.stop()
    finally:
        proxy.close()


def test_stopping_while_connected_closes_with_a_close_frame(emulator, start):
    run = start()
    wait_until(connected(run))
    run.stop()
    assert emulator.wait_for_connections(0, timeout=2)
    assert [e["state"] for e in run.gaps()] == ["connected"]
    assert not run.consumer.connected


def test_close_from_another_thread_ends_run(emulator, start):
    run = start()
    wait_until(connected(run))
    run.consumer.close()
    run.thread.join(2)
    assert not run.thread.is_alive() and run.error is None
    assert emulator.wait_for_connections(0, timeout=2)


def test_close_while_the_sink_holds_the_reader_up_ends_the_connection_at_once(emulator, start):
    # Issue 25 (chaos, a 362 ms overlap after `oneway-redis-out`): a lease ran out while its
    # reader sat in a stalled sink; the close frame went out, but the server counts a
    # connection open until TCP closes, which only the held reader would have done, after the
    # next holder had connected. A close while the reader is held shuts the socket too.
    run = start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60)
    gate = _hold_after(run, "Hold")
    try:
        wait_until(connected(run))
        emulator.emit_event(state="Hold")
        wait_until(lambda: [e["state"] for e in run.events()] == ["Hold"])  # now held
        run.consumer.close()
        assert emulator.wait_for_connections(0, timeout=1.0)
        assert run.thread.is_alive()  # still held: the connection ended without it
    finally:
        gate.set()
    run.thread.join(2)
    assert not run.thread.is_alive() and run.error is None


# -- a sink that holds the reader up: the read-ahead --------------------------------------------

def _send_over(emu: Emulator, states: list[str], seconds: float) -> list[tuple[dict[str, Any], float]]:
    """Emit one event per state, spread over `seconds` (the server keeps sending), each with
    the time (POSIX) just before it was sent."""
    sent = []
    began = time.monotonic()
    for i, state in enumerate(states):
        due = began + seconds * i / len(states)
        wait_until(lambda: time.monotonic() >= due, timeout=seconds + 5)  # noqa: B023
        at = time.time()
        sent.append((emu.emit_event(state=state), at))
    return sent


def _is_held(run: Run) -> Callable[[], bool]:
    return lambda: [e["state"] for e in run.events()] == ["Hold"] and run.consumer.held_for() > 0


@pytest.mark.parametrize("keepalive_emulator", ["ws", "wss"], indirect=True)
def test_a_sink_held_past_the_servers_pong_timeout_keeps_the_connection_and_every_event(
        keepalive_emulator, metrics, kept_start):
    # Chaos seed 11, t+22.8: a failover's stalled `spool_add` held a reader 10 s in its sink;
    # it answered no ping, the server's keepalive (a ping every 0.5 s, a pong within 1 s)
    # dropped the connection 1.5 s in, and what the server sent meanwhile fell into a 10.4 s
    # gap (announced and backfilled, but a gap). While the sink holds the reader, the
    # read-ahead reads the connection (the pings answered) and the events wait for the sink.
    emu = keepalive_emulator
    tls = TlsOptions(ca_file=emu.ca_file) if emu.certificate is not None else TlsOptions()
    run = kept_start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60, tls=tls)
    gate = _hold_after(run, "Hold")
    try:
        wait_until(connected(run))
        hold = emu.emit_event(state="Hold")
        wait_until(_is_held(run))
        held_at = time.monotonic()
        sent = [event for event, _ in _send_over(emu, [f"E{i}" for i in range(50)], 5.0)]
        wait_until(lambda: time.monotonic() - held_at >= 5.0, timeout=10)
        # held_for() still says the engine takes none of this stream's events (the cluster
        # hands over a stream held a TTL), though the connection is kept
        assert run.consumer.held_for() >= 4.9
        assert run.events() == [hold]
        gate.set()
        wait_until(lambda: len(run.events()) == 51, timeout=5)
    finally:
        gate.set()
    assert run.events() == [hold, *sent]
    (conn,) = emu.stream_connections()  # one connection: not dropped, not made again
    assert conn.closed is None and conn.ended is None
    assert conn.last_pong is not None and conn.last_pong >= held_at + 4.0  # answered meanwhile
    assert [e["state"] for e in run.gaps()] == ["connected"]


def test_a_sink_held_past_what_the_read_ahead_keeps_is_dropped_and_the_gap_dated_right(
        keepalive_emulator, metrics, kept_start):
    # The read-ahead is bounded: full, it reads no more, the pings go unanswered and the
    # server drops the connection, as before the read-ahead. What it stashed is delivered
    # and dated when it was read (not from before the hold: it was read then), what the
    # socket kept after it is dated from the last stashed read, and the gap begins there,
    # before every event the server sent into no connection.
    emu = keepalive_emulator
    since: list[float] = []
    run = kept_start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60, read_ahead_events=10,
                     backfill=since.append)
    gate = _hold_after(run, "Hold")
    try:
        wait_until(connected(run))
        emu.emit_event(state="Hold")
        wait_until(_is_held(run))
        sent = _send_over(emu, [f"E{i}" for i in range(40)], 4.0)  # the stash is full in 1 s
        wait_until(lambda: emu.connection_count == 0, timeout=5)
        gate.set()
        wait_until(connected(run, 2), timeout=10)
        wait_until(lambda: since, timeout=5)
    finally:
        gate.set()
    first = emu.stream_connections()[0]
    assert first.ended == "keepalive"
    assert [e["state"] for e in run.gaps()] == ["connected", "disconnected", "connected"]
    got = [e for e in run.events() if e["state"] != "Hold"]
    assert got == [event for event, _ in sent[:len(got)]]  # in order, none twice, none skipped
    assert len(got) >= 10  # what the read-ahead kept, at least
    lost_at = _losses(run)[0]
    assert since == [lost_at]
    if len(got) < len(sent):
        assert lost_at <= sent[len(got)][1], (lost_at - sent[len(got)][1])
    # dated from the read-ahead's reads, well after the hold began (E7 was sent 0.7 s in)
    assert lost_at >= sent[7][1], (lost_at - sent[7][1])


def test_a_close_while_the_read_ahead_keeps_a_held_reader_ends_the_connection_at_once(
        keepalive_emulator, kept_start):
    # The cluster hands a stream over while its reader is held (a TTL in the sink): the
    # socket is shut at once, though the read-ahead is reading it; the held thread ends when
    # its sink lets go, delivering nothing more.
    emu = keepalive_emulator
    run = kept_start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60)
    gate = _hold_after(run, "Hold")
    try:
        wait_until(connected(run))
        emu.emit_event(state="Hold")
        wait_until(_is_held(run))
        held_at = time.monotonic()
        (conn,) = emu.stream_connections()
        # the read-ahead answers the server's pings past its pong timeout
        wait_until(lambda: (conn.last_pong or 0.0) > held_at + 1.2, timeout=5)
        emu.emit_event(state="Stashed")
        run.consumer.close()
        assert emu.wait_for_connections(0, timeout=1.0)
        assert conn.ended == "client"
        assert run.thread.is_alive()  # still held: the connection ended without it
    finally:
        gate.set()
    run.thread.join(2)
    assert not run.thread.is_alive() and run.error is None
    assert [e["state"] for e in run.events()] == ["Hold"]


def _keepers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "eventd-keeper" and t.is_alive()]


def test_one_keeper_thread_runs_while_streams_are_connected_and_none_after(emulator, start):
    # One thread for every consumer of the process (a wake-up a tick for all of them), and
    # nothing left behind once no stream is connected.
    runs = [start(), start()]
    for run in runs:
        wait_until(connected(run))
    assert len(_keepers()) == 1
    for run in runs:
        run.stop()
    wait_until(lambda: not _keepers(), timeout=2)


_STEPS = st.lists(st.tuples(st.integers(1, 30),  # events sent at once
                            st.sampled_from([0.0, 0.0, 0.05, 0.15, 1.6]),  # a sink call holds
                            st.sampled_from([0.0, 0.05, 0.3])),  # then the server pauses
                  min_size=1, max_size=4)


def test_any_interleaving_of_reads_and_holds_delivers_every_event_once_in_order(
        keepalive_emulator, metrics, kept_start):
    # Sink calls that hold the reader up or not (1.6 s: past the server's keepalive window),
    # the server sending in bursts and pauses: every event arrives once, in order, on the one
    # connection, and no gap is announced.
    emu = keepalive_emulator
    run = kept_start(ping_interval=5.0, pong_timeout=5.0, idle_timeout=60)
    holds: list[float] = []  # what the next sink calls of stream events hold, in turn
    inner = run.consumer._sink

    def holding_sink(batch):
        inner(batch)
        if holds and events_of(batch):
            threading.Event().wait(holds.pop(0))  # a stalled store, that long

    run.consumer._sink = holding_sink
    wait_until(connected(run))

    @given(steps=_STEPS)
    @settings(max_examples=8, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    def interleaving(steps: list[tuple[int, float, float]]) -> None:
        seen = len(run.events())
        sent = []
        for count, hold, pause in steps:
            holds.append(hold)
            sent += [emu.emit_event(state="Step") for _ in range(count)]
            resume = time.monotonic() + pause
            wait_until(lambda: time.monotonic() >= resume)  # noqa: B023
        wait_until(lambda: len(run.events()) >= seen + len(sent),
                   timeout=sum(hold for _, hold, _ in steps) + 5)
        holds.clear()
        assert run.events()[seen:] == sent

    interleaving()
    assert [e["state"] for e in run.gaps()] == ["connected"]
    (conn,) = emu.stream_connections()
    assert conn.closed is None


# -- secrets ------------------------------------------------------------------------------------

def test_no_secret_in_logs_over_reconnects_and_auth_failure(metrics, caplog):
    caplog.set_level(logging.DEBUG)
    apikey = "zq9-very-secret-apikey-7x"
    with Emulator(user="someone", apikey=apikey, tick=0.02) as emu:
        creds = Credentials.basic("someone", apikey, "DOCKERCLOUD_USER+DOCKERCLOUD_APIKEY")
        run = Run(stream_url(emu), creds, metrics).start()
        try:
            wait_until(connected(run))
            emu.faults.drop_connections()
            wait_until(connected(run, 2))
            emu.faults.fail_handshake(503, count=1)
            emu.restart_stream()
            wait_until(connected(run, 3))
            emu.faults.reject_auth(True)
            emu.faults.drop_connections()
            run.thread.join(5)
            assert isinstance(run.error, AuthRejected)
        finally:
            emu.faults.clear()
            run.stop()
    # The emulator is the server side: its websockets protocol logger prints request headers
    # at DEBUG, which is not eventd's output. Everything else (eventd.*, websocket-client) counts.
    ours = [r for r in caplog.records if not r.name.startswith("eventd.emulator")]
    text = "\n".join(f"{r.getMessage()} {r.args} {r.exc_text or ''}" for r in ours)
    assert "stream lost" in text and "rejected" in text  # the logs did cover the cycle
    for secret in creds.secrets():
        assert secret not in text
    assert apikey in creds.secrets()


# -- where the credentials may go ---------------------------------------------------------------

@pytest.mark.parametrize("target", ["other_port", "other_host", "other_scheme"])
def test_redirect_off_the_stream_host_is_refused_and_nothing_reaches_the_target(
        emulator, metrics, start, listener, caplog, target):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.stream")
    location = {"other_port": f"ws://127.0.0.1:{listener.port}/stolen",
                "other_host": f"ws://localhost:{emulator.stream_port}/stolen",
                "other_scheme": f"wss://127.0.0.1:{emulator.stream_port}/stolen"}[target]
    emulator.faults.redirect_handshake(location, count=2)
    waits: list[float] = []
    run = start(sleep=waits.append)
    wait_until(connected(run))  # retried with backoff, then the host stops redirecting
    assert [h.status for h in emulator.handshakes()] == [302, 302, 101]
    assert reconnects(metrics, "handshake_302") == 2 and len(waits) == 2
    assert run.error is None and reconnects(metrics, "auth_rejected") == 0  # nobody blamed
    assert listener.connections == 0 and listener.received == b""
    assert all(h.path == "/api/audit/v1/events/" for h in emulator.handshakes())
    refused = [r.getMessage() for r in caplog.records if "not followed" in r.getMessage()]
    assert len(refused) == 2 and "DOCKERCLOUD_STREAM_HOST" in refused[0]
    assert "/stolen" in refused[0]


def test_redirect_within_the_stream_host_is_followed_with_the_credentials(emulator, start):
    emulator.faults.redirect_handshake(f"/api/audit/v1/{emulator.namespace}/events/")
    run = start()
    wait_until(connected(run))
    hs = emulator.handshakes()
    assert [(h.status, h.path) for h in hs] == [
        (302, "/api/audit/v1/events/"), (101, f"/api/audit/v1/{emulator.namespace}/events/")]
    assert all(h.headers.get("Authorization") == emulator.auth_header for h in hs)


def test_a_redirect_loop_on_the_same_host_ends_after_a_few_hops(emulator, metrics, start):
    emulator.faults.redirect_handshake("/api/audit/v1/events/", count=4)
    run = start(sleep=lambda s: None)
    wait_until(connected(run))
    assert [h.status for h in emulator.handshakes()] == [302, 302, 302, 302, 101]
    assert reconnects(metrics, "handshake_302") == 1


def test_a_host_that_answers_404_gets_one_clear_hint_and_is_still_retried(emulator, metrics, start,
                                                                          caplog):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.stream")
    emulator.faults.fail_handshake(404, count=5)
    run = start(sleep=lambda s: None)
    wait_until(connected(run))
    assert reconnects(metrics, "handshake_404") == 5
    hints = [r for r in caplog.records if "does not serve the Docker Cloud Stream API" in r.getMessage()]
    assert len(hints) == 1 and hints[0].levelno == logging.ERROR
    assert "DOCKERCLOUD_STREAM_HOST" in hints[0].getMessage()


# -- a cluster's replica: the lease's fencing token on the handshake (issue 25) ------------------
@pytest.fixture
def fenced_emulator() -> Iterator[Emulator]:
    emulator = Emulator(tick=0.01, fencing=True)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def fenced_consumer(emulator: Emulator, metrics: Metrics, token: Callable[[], str | None],
                    sink: Callable[[list[Received]], None],
                    on_refused: Callable[[], object] | None = None) -> StreamConsumer:
    return StreamConsumer(url=stream_url(emulator),
                          credentials=Credentials(header=emulator.auth_header, source="test"),
                          sink=sink, metrics=metrics, stopping=threading.Event(),
                          options=StreamOptions(**FAST), fencing=token, on_refused=on_refused)


def test_a_consumer_stopped_while_its_handshake_is_under_way_never_consumes(fenced_emulator,
                                                                           metrics):
    # The zombie of issue 25: stopped (its lease lost) while the handshake was held up by a
    # partition, it must not go on consuming once the handshake completes.
    received: list[Received] = []
    holder: dict[str, StreamConsumer] = {}

    def token() -> str:
        holder["consumer"].close()  # stopped while connecting: nothing to interrupt yet
        return "eventd/acme:1"

    consumer = holder["consumer"] = fenced_consumer(fenced_emulator, metrics, token,
                                                    received.extend)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert received == []  # no `connected` event: it never consumed
    # Stopped before its connect began: no connection is made at all (one under way is
    # aborted: test_a_consumer_stopped_while_its_connection_hangs_returns_at_once).
    assert fenced_emulator.handshakes() == []
    wait_until(lambda: fenced_emulator.namespace_counts().get(fenced_emulator.namespace, 0) == 0)


def test_a_handshake_with_a_stale_lease_token_is_refused_and_none_without_a_lease(
        fenced_emulator, metrics):
    tokens = {"old": "eventd/acme:1"}
    refused: list[str] = []  # the coordinator is told: it gives the stale lease up
    old = fenced_consumer(fenced_emulator, metrics, lambda: tokens["old"], lambda batch: None,
                          on_refused=lambda: refused.append("acme"))
    new = fenced_consumer(fenced_emulator, metrics, lambda: "eventd/acme:2", lambda batch: None)
    threads = []
    try:
        threads.append(threading.Thread(target=new.run, daemon=True))
        threads[-1].start()
        wait_until(lambda: new.connected)
        threads.append(threading.Thread(target=old.run, daemon=True))
        threads[-1].start()
        wait_until(reconnected(metrics, "handshake_409"), timeout=5)
        assert not old.connected and refused
        tokens["old"] = None  # its lease is gone: it makes no handshake at all
        handshakes = len(fenced_emulator.handshakes())
        wait_until(reconnected(metrics, "lease_lost", 2), timeout=5)
        assert len(fenced_emulator.handshakes()) == handshakes
    finally:
        old.close()
        new.close()
        for thread in threads:
            thread.join(5)
    assert fenced_emulator.fences is not None
    assert fenced_emulator.fences.snapshot()["stale"] >= 1


def test_a_batch_reads_as_the_received_it_stands_for() -> None:
    """A read's Batch (events as one list) indexes, slices and iterates as Received."""
    events: list[dict[str, Any]] = [{"type": "container", "uuid": str(n)} for n in range(3)]
    raws = [b"a", b"b", b"c"]
    plain, recorded = Batch(events, 5.0), Batch(events, 5.0, raws, internal=True)
    assert list(plain) == [Received(e, 5.0) for e in events] and len(plain) == 3
    assert plain[-1] == Received(events[2], 5.0) and plain[1:] == list(plain)[1:]
    assert list(recorded) == [Received(e, 5.0, r, True) for e, r in zip(events, raws, strict=True)]
    assert recorded[0].raw == b"a" and recorded[0].event is events[0]
    assert events_of(plain) is events and events_of(list(plain)) == events
    assert not Batch([], 1.0)


def test_an_error_in_the_read_ahead_keeper_is_logged_counted_and_it_keeps_keeping(
        internal_errors):
    from eventd.sources.dockercloud.framing import FrameReader
    from eventd.sources.dockercloud.readahead import KEEPER, ReadAhead

    metrics = Metrics()
    broken = threading.Event()
    broken.set()

    def held_since() -> float | None:  # a bug in what the keeper asks of a consumer
        if broken.is_set():
            raise RuntimeError("a bug")
        return None

    ours, theirs = socket.socketpair()
    ahead = ReadAhead(FrameReader(ours), ours, held_since, lambda: False, time.time, 10,
                      1 << 20, metrics)
    KEEPER.watch(ahead)
    try:
        wait_until(lambda: (metrics.registry.get_sample_value(
            "eventd_internal_errors_total", {"where": "readahead"}) or 0) >= 1, 5)
        wait_until(lambda: (metrics.registry.get_sample_value(  # it went on after the first
            "eventd_internal_errors_total", {"where": "readahead"}) or 0) >= 2, 5)
        assert any(t.name == "eventd-keeper" and t.is_alive() for t in threading.enumerate())
        broken.clear()
    finally:
        KEEPER.forget(ahead)
        ours.close()
        theirs.close()
    assert {where for where, _ in internal_errors} == {"readahead"}
    internal_errors.clear()
