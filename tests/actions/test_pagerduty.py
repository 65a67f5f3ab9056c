"""The pagerduty action against a fake of the Events API v2: the body, 202, 400, 429."""

from __future__ import annotations

import pytest

from eventd.actions.pagerduty import PagerDutyAction
from eventd.errors import PermanentActionError, RetryableActionError
from tests.actions import attempt, make_context, make_job
from tests.incident_services import PagerDutyFake, running

KEY = "R" * 32


@pytest.fixture
def pagerduty():
    yield from running(PagerDutyFake((KEY,)))


@pytest.fixture
def action(metrics):
    kind = PagerDutyAction(make_context(metrics))
    yield kind
    kind.close()


def options(fake, **more):
    return {"url": fake.url, "routing_key": KEY, "summary": "web-1 stopped",
            "labels": {"alertname": "ContainerDown"}, **more}


def test_trigger_carries_what_the_reference_names(pagerduty, action) -> None:
    job = make_job(action, options(pagerduty, severity="critical", component="web",
                                   group="prod", **{"class": "crash"},
                                   custom_details={"exit_code": "3"},
                                   links=[{"href": "https://runbook/web", "text": "runbook"}]),
                   context={"incident_key": "k" * 32, "logs": ["line 1", "line 2"],
                            "history": {"summary": "restarted 4 times in the last hour"}})
    assert attempt(action, job).startswith("fire rule-a")
    [request] = pagerduty.requests
    assert (request.method, request.path, request.status) == ("POST", "/v2/enqueue", 202)
    body = request.json()
    assert body["event_action"] == "trigger" and body["dedup_key"] == "k" * 32
    assert body["links"] == [{"href": "https://runbook/web", "text": "runbook"}]
    payload = body["payload"]
    assert (payload["summary"], payload["severity"], payload["component"], payload["group"],
            payload["class"]) == ("web-1 stopped", "critical", "web", "prod", "crash")
    assert payload["source"] == job.event["resource_uri"]
    assert payload["timestamp"] == "2016-06-01T10:15:02Z"
    assert payload["custom_details"] == {"exit_code": "3", "logs": "line 1\nline 2",
                                         "history": "restarted 4 times in the last hour"}
    assert [i.status for i in pagerduty.incidents] == ["triggered"]


def test_a_repeat_adds_to_the_incident_and_resolve_closes_it(pagerduty, action) -> None:
    context = {"incident_key": "same"}
    attempt(action, make_job(action, options(pagerduty), context=context))
    attempt(action, make_job(action, options(pagerduty), context={**context, "repeat": True}))
    assert len(pagerduty.incidents) == 1 and len(pagerduty.incidents[0].events) == 2
    resolving = make_job(action, options(pagerduty, resolve=True),
                         context={**context, "ends_at": 1.0})
    assert attempt(action, resolving).startswith("resolve")
    assert pagerduty.requests[-1].json() == {"routing_key": KEY, "dedup_key": "same",
                                             "event_action": "resolve"}
    assert [i.status for i in pagerduty.incidents] == ["resolved"]


def test_429_is_retried_after_what_it_says_and_400_is_permanent(pagerduty, action) -> None:
    pagerduty.limit(1, retry_after="7")
    with pytest.raises(RetryableActionError) as told:
        attempt(action, make_job(action, options(pagerduty)))
    assert told.value.status_code == 429 and told.value.retry_after == 7
    pagerduty.limit(1)  # PagerDuty's own 429 carries no Retry-After: the backoff decides
    with pytest.raises(RetryableActionError) as limited:
        attempt(action, make_job(action, options(pagerduty)))
    assert limited.value.status_code == 429 and limited.value.retry_after is None
    with pytest.raises(PermanentActionError) as invalid:
        attempt(action, make_job(action, options(pagerduty, routing_key="S" * 32)))
    assert invalid.value.status_code == 400
    assert "S" * 32 not in str(invalid.value)


def test_options_are_checked_when_rules_load_and_the_key_never_shows(action) -> None:
    assert PagerDutyAction.validate({"routing_key": KEY, "severity": "loud"}) == [
        "severity must be one of critical, error, warning, info"]
    assert PagerDutyAction.validate({"routing_key": KEY, "url": "ftp://x"}) == [
        "url must be an http:// or https:// URL"]
    assert PagerDutyAction.validate({"routing_key": KEY, "expire": "soon"}) == [
        "expire: 'soon' is not a duration (e.g. 30s, 10m, 1h)"]
    assert PagerDutyAction.validate({"routing_key": KEY}) == []
    assert action.inactive({"routing_key": ""}) is True
    job = make_job(action, {"routing_key": KEY})
    assert job.target == "pagerduty:https://events.pagerduty.com:443"
    assert KEY not in action.describe(job) and KEY not in job.target
    assert KEY not in action.incident_destination({"routing_key": KEY})
    outbound = action.prepare(job)
    assert outbound.calls[0].credentials is True  # never in clear to another machine
    assert outbound.calls[0].address.url == "https://events.pagerduty.com/v2/enqueue"


def test_a_long_summary_and_dedup_key_are_cut_to_the_limits(pagerduty, action) -> None:
    job = make_job(action, options(pagerduty, summary="s" * 5000, dedup_key="d" * 400))
    attempt(action, job)
    body = pagerduty.requests[-1].json()
    assert len(body["payload"]["summary"]) == 1024 and len(body["dedup_key"]) == 255
    assert pagerduty.requests[-1].status == 202


@pytest.mark.parametrize("kind_path", [
    "eventd.actions.pagerduty:PagerDutyAction", "eventd.actions.slack:SlackAction",
    "eventd.actions.opsgenie:OpsgenieAction", "eventd.actions.msteams:MsTeamsAction"])
def test_every_incident_kind_passes_the_gate_host_policy(kind_path, pagerduty, metrics) -> None:
    """--allow-host holds for the incident kinds: a host outside it is refused, nothing sent."""
    import importlib

    from eventd.actions.base import ActionContext
    from eventd.errors import GateRefused
    from eventd.settings import Settings

    module, _, name = kind_path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    kind = cls(ActionContext(settings=Settings(allow_hosts=("*.pagerduty.com",)), metrics=metrics))
    options = {"pagerduty": {"url": pagerduty.url, "routing_key": KEY},
               "slack": {"url": pagerduty.url, "token": "xoxb-1", "channel": "#ops", "text": "t"},
               "opsgenie": {"url": pagerduty.url, "api_key": "k", "message": "m"},
               "msteams": {"webhook_url": pagerduty.url + "/x?sig=s", "title": "t"}}[kind.name]
    try:
        with pytest.raises(GateRefused) as refused:
            attempt(kind, make_job(kind, options))
        assert refused.value.reason == "host"
        assert pagerduty.requests == []
    finally:
        kind.close()
