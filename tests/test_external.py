"""tests/external.py: the real Prometheus and Alertmanager fixtures, and what a missing binary does."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.external import query, require_binary
from tests.waiting import wait_until


def test_a_missing_binary_skips_with_the_install_line(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install with: apt-get install eventd-nothing"):
        require_binary("eventd-no-such-binary", package="eventd-nothing")


def test_a_missing_binary_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run these tests"):
        require_binary("eventd-no-such-binary", package="eventd-nothing")


def test_prometheus_fixture_answers_queries(prometheus):
    answer = query(prometheus, "vector(42)")
    assert answer["status"] == "success"
    assert answer["data"]["result"][0]["value"][1] == "42"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_alertmanager_fixture_notifies_the_webhook_of_firing_then_resolved(alertmanager, webhook_receiver):
    now = datetime.now(timezone.utc)
    alert = {"labels": {"alertname": "FixtureCheck", "severity": "info"},
             "annotations": {"summary": "the alertmanager fixture works"},
             "startsAt": iso(now), "endsAt": iso(now + timedelta(seconds=2))}
    answer = requests.post(f"{alertmanager}/api/v2/alerts", json=[alert], timeout=5)
    assert answer.status_code == 200, answer.text

    def notifications() -> list[tuple[str, str]]:
        return [(a["status"], a["labels"]["alertname"]) for r in webhook_receiver.requests
                if r.path == "/alertmanager" for a in r.json()["alerts"]]

    wait_until(lambda: ("firing", "FixtureCheck") in notifications(), 10, interval=0.1,
               message="firing notification (group_wait 1s)")
    wait_until(lambda: ("resolved", "FixtureCheck") in notifications(), 10, interval=0.1,
               message="resolved notification (endsAt + group_interval 1s)")
