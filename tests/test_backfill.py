"""Backfiller against the emulator's REST API: actions since the gap come back as events."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from eventd.events import Received, iso_utc
from eventd.sources.dockercloud.auth import Credentials
from eventd.sources.dockercloud.backfill import Backfiller
from eventd.sources.dockercloud.rest import RestClient
from tests.waiting import wait_until


@pytest.fixture
def rest(emulator):
    client = RestClient(emulator.rest_url, Credentials(header=emulator.auth_header, source="test"))
    yield client
    client.close()


def redeploy(emulator, rest, index: int = 0) -> str:
    """Start a service redeploy; return its action URI once the action has settled."""
    service = emulator.world.objects("service")[index]
    answer = rest.request("POST", f"/api/app/v1/{emulator.namespace}/service/{service.uuid}/redeploy/")
    uri = answer.headers["X-DockerCloud-Action-URI"]
    wait_until(lambda: rest.get(uri)["state"] in ("Success", "Failed"), timeout=5)
    return uri


def action_calls(emulator):
    return [c for c in emulator.rest_calls() if c.path == "/api/audit/v1/action/"]


def test_actions_since_the_gap_are_emitted_as_backfilled_events(emulator, rest, metrics):
    gap_start = time.time() - 1
    first, second = redeploy(emulator, rest, 0), redeploy(emulator, rest, 1)
    batches: list[list[Received]] = []
    count = Backfiller(rest, batches.append, metrics)(gap_start)
    assert len(batches) == 1
    events = [r.event for r in batches[0]]
    assert count == len(events) == 2
    assert [e["resource_uri"] for e in events] == [first, second]
    assert all(r.internal and r.raw is None for r in batches[0])
    assert all(e["type"] == "action" and e["backfilled"] is True and e["state"] == "Success"
               for e in events)
    assert metrics.registry.get_sample_value("eventd_stream_backfilled_events_total") == 2
    call, ended = action_calls(emulator)
    assert ended.query["end_date__gte"] == iso_utc(gap_start)
    assert call.query["start_date__gte"] == iso_utc(gap_start)
    assert call.query["start_date__gte"].endswith("Z") and "T" in call.query["start_date__gte"]
    assert call.headers.get("Authorization") == emulator.auth_header


def test_actions_before_the_gap_are_not_emitted(emulator, rest, metrics):
    redeploy(emulator, rest)
    batches: list[list[Received]] = []
    assert Backfiller(rest, batches.append, metrics)(time.time() + 2) == 0
    assert batches == []
    assert metrics.registry.get_sample_value("eventd_stream_backfilled_events_total") == 0


def test_server_errors_are_retried_with_a_short_backoff(emulator, rest, metrics):
    gap_start = time.time() - 1
    uri = redeploy(emulator, rest)
    emulator.faults.fail_rest(503, count=2)
    waits: list[float] = []
    batches: list[list[Received]] = []
    count = Backfiller(rest, batches.append, metrics, retry_wait=0.5, sleep=waits.append)(gap_start)
    assert count == 1 and batches[0][0].event["resource_uri"] == uri
    assert waits == [0.5, 1.0]
    assert [c.status for c in action_calls(emulator)] == [503, 503, 200, 200]


def test_gives_up_after_the_last_attempt_and_says_so(emulator, rest, metrics, caplog):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.backfill")
    emulator.faults.fail_rest(500, count=10)
    batches: list[list[Received]] = []
    assert Backfiller(rest, batches.append, metrics, attempts=3, sleep=lambda s: None)(time.time()) == 0
    assert batches == []
    assert len(action_calls(emulator)) == 3
    assert "giving up" in caplog.records[-1].getMessage()


def test_rejected_credentials_are_not_retried(emulator, metrics, caplog):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.backfill")
    bad = RestClient(emulator.rest_url, Credentials.basic("user", "wrong-key", "test"))
    batches: list[list[Received]] = []
    assert Backfiller(bad, batches.append, metrics, sleep=lambda s: None)(time.time()) == 0
    assert [c.status for c in action_calls(emulator)] == [401]
    assert batches == []
    assert "wrong-key" not in caplog.text


def test_stopping_cuts_the_retries_short(emulator, rest, metrics):
    stopping = threading.Event()
    emulator.faults.fail_rest(503, count=10)

    def sleep(seconds: float) -> None:
        stopping.set()

    assert Backfiller(rest, lambda b: None, metrics, stopping=stopping, sleep=sleep)(time.time()) == 0
    assert len(action_calls(emulator)) == 1
