"""The generic consumer loop and the SOURCES registry (eventd.sources.base), against the emulator."""

from __future__ import annotations

import logging
import threading

import pytest

from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.errors import ConfigError
from eventd.events import Received
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from eventd.sources.base import SOURCES, RestartLimit, SourceContext, resolve_source
from eventd.sources.dockercloud.stream import StreamConsumer
from tests.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_restart_limit_allows_a_burst_then_the_rate():
    clock = Clock()
    limit = RestartLimit(burst=3, rate=0.5, clock=clock)
    assert [limit.wait_needed() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.wait_needed() == pytest.approx(2.0)  # one token per 2 s
    clock.now += 2.0
    assert limit.wait_needed() == 0.0
    clock.now += 60
    assert [limit.wait_needed() for _ in range(3)] == [0.0, 0.0, 0.0]  # refilled to the burst only
    assert limit.wait_needed() > 0


def test_unknown_source_names_are_config_errors_with_a_suggestion():
    assert set(SOURCES) == {"dockercloud", "docker"}
    with pytest.raises(ConfigError) as info:
        resolve_source("dockercloud2")
    assert "did you mean 'dockercloud'" in str(info.value)


def test_the_registered_dockercloud_source_streams_and_backfills(emulator, metrics):
    settings = Settings.from_env({"DOCKERCLOUD_STREAM_HOST": emulator.stream_url,
                                  "DOCKERCLOUD_REST_HOST": emulator.rest_url},
                                 backoff_initial=0.05, backoff_max=0.1)
    creds = Credentials(header=emulator.auth_header, source="test")
    batches: list[list[Received]] = []
    stopping = threading.Event()
    rest = RestClient(emulator.rest_url, creds)
    consumer = resolve_source("dockercloud")(SourceContext(
        settings=settings, sink=batches.append, metrics=metrics, stopping=stopping,
        credentials=creds, rest=rest))
    assert isinstance(consumer, StreamConsumer)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.connected)
        sent = emulator.emit_event(state="Stopped")
        wait_until(lambda: any(r.event == sent for b in batches for r in b))
        emulator.faults.drop_connections()
        wait_until(lambda: metrics.registry.get_sample_value(
            "eventd_stream_reconnects_total", {"reason": "dropped"}) == 1)
        wait_until(lambda: [c for c in emulator.rest_calls() if c.path == "/api/audit/v1/action/"])
    finally:
        stopping.set()
        thread.join(5)
        rest.close()
    assert not thread.is_alive()
    states = [r.event["state"] for b in batches for r in b if r.event["type"] == "eventd"]
    assert states[:3] == ["connected", "disconnected", "connected"]


def test_a_failing_backfill_goes_through_the_internal_error_guard(emulator, metrics,
                                                                 internal_errors, caplog):
    """Triggered on purpose: the guard logs with the traceback, counts, and the stream goes on."""
    caplog.set_level(logging.ERROR, logger="eventd.ops.internal")
    creds = Credentials(header=emulator.auth_header, source="test")
    batches: list[list[Received]] = []
    stopping = threading.Event()

    def broken_backfill(gap_start: float) -> None:
        raise RuntimeError("backfill bug")

    consumer = StreamConsumer(emulator.stream_url + "api/audit/v1/events/", creds, batches.append,
                              metrics, stopping, backfill=broken_backfill,
                              sleep=lambda s: stopping.wait(0.05))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.connected)
        emulator.faults.drop_connections()
        wait_until(lambda: internal_errors, timeout=10)
        wait_until(lambda: consumer.connected)
        sent = emulator.emit_event(state="Running")
        wait_until(lambda: any(r.event == sent for b in batches for r in b))
    finally:
        stopping.set()
        thread.join(5)
    assert [(where, str(exc)) for where, exc in internal_errors] == [("backfill", "backfill bug")]
    internal_errors.clear()
    assert metrics.registry.get_sample_value("eventd_internal_errors_total",
                                             {"where": "backfill"}) == 1
    assert any("internal error in backfill" in r.getMessage() and r.exc_info
               for r in caplog.records)


def test_too_many_attempts_in_a_row_are_spaced_by_the_restart_limit(emulator, metrics, caplog):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.stream")
    emulator.faults.fail_handshake(503, count=12)
    waits: list[float] = []
    stopping = threading.Event()
    creds = Credentials(header=emulator.auth_header, source="test")
    from eventd.sources.dockercloud.stream import StreamOptions

    consumer = StreamConsumer(emulator.stream_url + "api/audit/v1/events/", creds, lambda b: None,
                              Metrics(), stopping, sleep=waits.append,
                              options=StreamOptions(backoff_initial=0.001, backoff_max=0.001))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.connected, timeout=10)
    finally:
        stopping.set()
        thread.join(5)
    capped = [r for r in caplog.records if "too many connection attempts" in r.getMessage()]
    assert len(capped) >= 2  # the 11th and 12th attempt waited for a token
    assert max(waits) > 0.5  # backoff alone would never wait more than 1 ms here
