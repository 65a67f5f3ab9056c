"""The alertmanager action: one alert per event to /api/v2/alerts."""

from __future__ import annotations

from eventd.actions.alertmanager import AlertmanagerAction
from tests.actions import attempt, make_context, make_job


def test_posts_one_alert_list(metrics, webhook_receiver):
    action = AlertmanagerAction(make_context(metrics))
    job = make_job(action, {"url": webhook_receiver.url + "/", "labels": {"severity": "page"},
                            "annotations": {"summary": "web-1 stopped"},
                            "generator_url": "http://eventd/rules/web"}, rule="container-died")
    try:
        attempt(action, job)
    finally:
        action.close()
    [request] = webhook_receiver.requests
    assert (request.method, request.path) == ("POST", "/api/v2/alerts")
    assert request.header("Idempotency-Key") == job.id
    assert request.header("Content-Type") == "application/json"
    assert request.json() == [{
        "labels": {"alertname": "container-died", "severity": "page"},
        "annotations": {"summary": "web-1 stopped"},
        "startsAt": "2016-06-01T10:15:02Z",
        "generatorURL": "http://eventd/rules/web",
    }]


def test_alertname_can_be_overridden_and_target_is_per_host(metrics):
    action = AlertmanagerAction(make_context(metrics))
    job = make_job(action, {"url": "http://am:9093/prefix", "labels": {"alertname": "X"}},
                   event={"type": "service"})
    alert = action.alert(job)
    assert alert["labels"] == {"alertname": "X"}
    assert alert["startsAt"].endswith("Z") and "generatorURL" not in alert
    assert job.target == "alertmanager:http://am:9093"
    assert AlertmanagerAction.validate({"url": "am:9093"}) != []


def test_logs_and_history_become_annotations(metrics):
    action = AlertmanagerAction(make_context(metrics))
    job = make_job(action, {"url": "http://am:9093", "annotations": {"summary": "s"}},
                   context={"logs": ["a", "token=***"],
                            "history": {"summary": "2 events in the last 1h (die x2)"}})
    assert action.alert(job)["annotations"] == {
        "summary": "s", "logs": "a\ntoken=***", "history": "2 events in the last 1h (die x2)"}
    given = make_job(action, {"url": "http://am:9093", "annotations": {"logs": "mine"}},
                     context={"logs": ["a"]})
    assert action.alert(given)["annotations"] == {"logs": "mine"}  # the rule's own wins
