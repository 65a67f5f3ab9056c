"""The msteams action against a fake Workflows webhook: an Adaptive Card per phase."""

from __future__ import annotations

import logging

import pytest

from eventd.actions.msteams import MsTeamsAction
from eventd.alerts.firing import AlertBook
from eventd.errors import PermanentActionError, RetryableActionError
from eventd.ops.logconfig import redact
from eventd.stores.memory import MemoryStore
from tests.actions import attempt, make_context, make_job
from tests.incident_services import TeamsFake, running


@pytest.fixture
def teams():
    yield from running(TeamsFake())


@pytest.fixture
def lifecycle(metrics):
    action = MsTeamsAction(make_context(metrics))
    book = AlertBook(MemoryStore(), lambda job: attempt(action, job), metrics,
                     destinations={"msteams": action.incident_destination})

    def submit(options: dict, **extra) -> None:
        book.submit(make_job(action, options, context=extra))

    yield action, submit
    action.close()


def options(fake, **more) -> dict:
    return {"webhook_url": fake.webhook, "title": "web-1 crashed", "text": "exit code 3",
            "facts": {"Service": "web"}, "labels": {"alertname": "Crash"}, **more}


def test_a_card_for_fire_repeat_and_resolve(teams, lifecycle) -> None:
    _, submit = lifecycle
    submit(options(teams), logs=["boot", "token=*** refused"],
           history={"summary": "restarted 3 times in the last hour"})
    submit(options(teams))
    submit(options(teams, resolve=True))
    submit(options(teams, resolve=True))  # nothing open any more: no card
    headings = [card["body"][0]["text"] for card in teams.cards]
    assert headings == ["web-1 crashed", "Again: web-1 crashed", "Resolved: web-1 crashed"]
    assert [card["body"][0]["color"] for card in teams.cards] == ["Attention", "Attention", "Good"]
    first = teams.cards[0]["body"]
    assert {"type": "FactSet", "facts": [{"title": "Service", "value": "web"}]} in first
    assert first[-1]["fontType"] == "Monospace" and first[-1]["text"] == "boot\ntoken=*** refused"
    assert first[-2]["text"] == "restarted 3 times in the last hour"
    assert all(r.status == 202 for r in teams.requests)


def test_the_signature_never_shows_and_errors_are_judged(teams, metrics, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    action = MsTeamsAction(make_context(metrics))
    try:
        job = make_job(action, options(teams))
        assert teams.sig not in action.describe(job) + job.target
        assert action.prepare(job).calls[0].credentials is True
        teams.limit(1, retry_after="5")
        with pytest.raises(RetryableActionError) as told:
            attempt(action, job)
        assert told.value.retry_after == 5
        with pytest.raises(PermanentActionError) as bad:
            attempt(action, make_job(action, options(teams, webhook_url=teams.webhook + "x")))
        assert bad.value.status_code == 401 and teams.sig not in str(bad.value)
        # eventd's own lines never hold it; urllib3's DEBUG line does, and the handler's
        # redactor (installed by cli.py) masks it there
        assert not [r for r in caplog.records
                    if r.name.startswith("eventd") and teams.sig in r.getMessage()]
        assert teams.sig not in redact(caplog.text)
        assert MsTeamsAction.validate({"webhook_url": "", "title": "t"}) == []
        assert action.inactive({"webhook_url": ""}) is True
    finally:
        action.close()
