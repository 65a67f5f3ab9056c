"""The opsgenie action against a fake of the Alert API v2: create by alias, close by alias."""

from __future__ import annotations

import pytest

from eventd.actions.opsgenie import OpsgenieAction
from eventd.alerts.firing import AlertBook
from eventd.errors import PermanentActionError, RetryableActionError
from eventd.stores.memory import MemoryStore
from tests.actions import attempt, make_context, make_job
from tests.incident_services import OpsgenieFake, running

KEY = "3f1b2c4d-0000-4000-8000-00000000beef"


@pytest.fixture
def opsgenie():
    yield from running(OpsgenieFake(KEY))


@pytest.fixture
def lifecycle(metrics):
    context = make_context(metrics)
    action = OpsgenieAction(context)
    book = AlertBook(MemoryStore(), lambda job: attempt(action, job), metrics,
                     destinations={"opsgenie": action.incident_destination})

    def submit(options: dict, **extra) -> None:
        book.submit(make_job(action, options, context=extra))

    yield action, submit
    action.close()


def options(fake, **more) -> dict:
    return {"url": fake.url, "api_key": KEY, "message": "web-1 crashed",
            "labels": {"alertname": "Crash", "c": "web-1"}, **more}


def test_create_repeat_close_by_alias(opsgenie, lifecycle) -> None:
    _, submit = lifecycle
    submit(options(opsgenie, priority="P1", tags=["docker", "crash"], details={"exit": "3"},
                   entity="web-1", description="it stopped"),
           logs=["a", "password=*** here"], history={"summary": "restarted 2 times"})
    submit(options(opsgenie))
    [alert] = opsgenie.alerts
    assert (alert.status, alert.count) == ("open", 2)
    body = alert.body
    assert (body["priority"], body["tags"], body["details"], body["entity"]) == (
        "P1", ["docker", "crash"], {"exit": "3"}, "web-1")
    assert body["description"] == ("it stopped\n\nrestarted 2 times\n\nLast log lines:\n"
                                   "a\npassword=*** here")
    assert len(body["alias"]) == 32  # the incident's identity
    submit(options(opsgenie, resolve=True, note="runs again"))
    assert alert.status == "closed" and alert.closed_with == {"source": "eventd",
                                                              "note": "runs again"}
    close = opsgenie.requests[-1]
    assert close.path == f"/v2/alerts/{body['alias']}/close?identifierType=alias"
    for request in opsgenie.requests:
        assert request.header("Authorization") == f"GenieKey {KEY}"
        assert KEY.encode() not in request.body


def test_an_alias_with_odd_characters_is_one_path_segment(opsgenie, lifecycle) -> None:
    _, submit = lifecycle
    alias = "web/1?x=#y z"
    submit(options(opsgenie, alias=alias))
    submit(options(opsgenie, alias=alias, resolve=True))
    assert [(a.alias, a.status) for a in opsgenie.alerts] == [(alias, "closed")]


def test_regions_limits_and_errors(opsgenie, metrics) -> None:
    action = OpsgenieAction(make_context(metrics))
    try:
        assert action.target({"api_key": KEY}) == "opsgenie:https://api.opsgenie.com:443"
        assert action.target({"api_key": KEY, "region": "eu"}) == \
            "opsgenie:https://api.eu.opsgenie.com:443"
        assert OpsgenieAction.validate({"api_key": KEY, "message": "m", "region": "mars",
                                        "priority": "P9"}) == [
            "region must be one of us, eu", "priority must be one of P1, P2, P3, P4, P5"]
        job = make_job(action, options(opsgenie, message="m" * 500, tags=[f"t{i}" for i in range(40)]))
        attempt(action, job)
        body = opsgenie.alerts[0].body
        assert len(body["message"]) == 130 and len(body["tags"]) == 20
        opsgenie.limit(1, retry_after="4")
        with pytest.raises(RetryableActionError) as told:
            attempt(action, make_job(action, options(opsgenie)))
        assert told.value.retry_after == 4
        with pytest.raises(PermanentActionError) as bad:
            attempt(action, make_job(action, options(opsgenie, api_key="wrong-key-123")))
        assert bad.value.status_code == 401 and "wrong-key-123" not in str(bad.value)
        assert KEY not in action.describe(job) + job.target
    finally:
        action.close()
