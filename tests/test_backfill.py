"""Backfiller against the emulator's REST API: actions since the gap come back as events."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from eventd.backoff import Backoff
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.events import Received, iso_utc
from eventd.sources.dockercloud.backfill import Backfiller
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
    count = Backfiller(rest, batches.append, metrics, backoff=Backoff(0.5, jitter=False),
                       sleep=waits.append)(gap_start)
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


def age_action(emulator, uri: str, days: float) -> None:
    """Move an action's dates `days` into the past, as old history on a real server."""
    from datetime import timedelta

    uuid = uri.rstrip("/").rsplit("/", 1)[1]
    world = emulator.world
    with world.lock:
        action = world.lookup("action", uuid)
        action.created -= timedelta(days=days)
        action.end -= timedelta(days=days)


def test_a_server_ignoring_the_date_filter_cannot_backfill_old_actions(emulator, rest, metrics,
                                                                      caplog):
    caplog.set_level(logging.DEBUG, logger="eventd.sources.dockercloud.backfill")
    old = [redeploy(emulator, rest, 0), redeploy(emulator, rest, 1)]
    for uri in old:
        age_action(emulator, uri, days=90)
    gap_start = time.time() - 1
    fresh = redeploy(emulator, rest, 0)
    emulator.faults.ignore_date_filters(True)
    batches: list[list[Received]] = []
    backfill = Backfiller(rest, batches.append, metrics)
    assert backfill(gap_start) == 1
    assert [r.event["resource_uri"] for r in batches[0]] == [fresh]
    assert len(action_calls(emulator)) == 2 and all(  # the server did answer with everything
        c.status == 200 for c in action_calls(emulator))
    value = metrics.registry.get_sample_value
    assert value("eventd_stream_backfill_outside_gap_total") == 2  # both listings, de-duplicated
    assert value("eventd_stream_backfilled_events_total") == 1
    assert backfill(gap_start) == 1  # a second gap: counted again, logged at WARNING once
    assert value("eventd_stream_backfill_outside_gap_total") == 4
    warned = [r for r in caplog.records if "ignore the date filter" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING, logging.DEBUG]


def test_an_action_that_ended_in_the_gap_is_kept_with_one_second_of_slack(emulator, rest, metrics):
    emulator.faults.ignore_date_filters(True)
    uri = redeploy(emulator, rest)
    action = rest.get(uri)
    from eventd.events import parse_datetime

    ended = parse_datetime(action["end_date"])
    batches: list[list[Received]] = []
    # the gap began just after the action ended (whole seconds on the wire): within the slack
    assert Backfiller(rest, batches.append, metrics)(ended + 0.9) == 1
    assert Backfiller(rest, batches.append, metrics)(ended + 1.5) == 0
