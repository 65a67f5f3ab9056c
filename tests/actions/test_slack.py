"""The slack action against a fake of the Web API and incoming webhooks.

Jobs go through a real alert book (memory store) as the daemon's do, and each job the book
hands on is attempted at once: fire posts a message, repeats reply in its thread, resolve
edits it.
"""

from __future__ import annotations

import pytest

from eventd.actions.slack import SlackAction
from eventd.alerts.firing import AlertBook
from eventd.errors import PermanentActionError, RetryableActionError
from eventd.records import ActionJob
from eventd.stores.memory import MemoryStore
from tests.actions import attempt, make_context, make_job
from tests.incident_services import SlackFake, running

TOKEN = "xoxb-1-2-fake"


@pytest.fixture
def slack():
    yield from running(SlackFake(TOKEN))


@pytest.fixture
def lifecycle(metrics):
    """(action, submit): `submit(options, **context)` runs a job through the book and sends it."""
    store = MemoryStore()
    outcomes: list[object] = []
    context = make_context(metrics)
    action = SlackAction(context)
    book = AlertBook(store, lambda job: outcomes.append(attempt(action, job)), metrics,
                     destinations={"slack": action.incident_destination})
    context.incidents = book

    def submit(options: dict, **extra) -> object:
        job = make_job(action, options, context=extra)
        book.submit(job)
        return outcomes[-1] if outcomes else None

    yield action, submit, book
    action.close()


def bot(fake, **more) -> dict:
    return {"url": fake.url, "token": TOKEN, "channel": "#ops", "text": "web-1 crashed",
            "title": "Container crashed", "labels": {"alertname": "Crash", "c": "web-1"}, **more}


def test_fire_repeat_resolve_is_one_message_a_thread_and_an_edit(slack, lifecycle) -> None:
    action, submit, book = lifecycle
    assert "message" in str(submit(bot(slack, fields={"Exit": "3"})))
    assert "reply in thread" in str(submit(bot(slack, text="web-1 crashed again")))
    assert "reply in thread" in str(submit(bot(slack, text="and again")))
    [message] = slack.messages
    assert message.channel == "C0OPS0001" and message.text == "web-1 crashed"
    assert [r.text for r in message.replies] == ["web-1 crashed again", "and again"]
    assert message.blocks[0] == {"type": "header",
                                 "text": {"type": "plain_text", "text": "Container crashed"}}
    assert {"type": "mrkdwn", "text": "*Exit*\n3"} in message.blocks[2]["fields"]
    assert "message edited" in str(submit(bot(slack, resolve=True)))
    assert message.edits == 1 and message.text.startswith(":white_check_mark: Resolved:")
    assert book.active == 0
    for request in slack.requests:
        assert request.header("Authorization") == f"Bearer {TOKEN}"
        assert TOKEN.encode() not in request.body


def test_logs_and_history_are_a_code_block_and_a_context_line(slack, lifecycle) -> None:
    _, submit, _ = lifecycle
    submit(bot(slack), logs=["starting", "password=*** rejected", "```inject```"],
           history={"summary": "restarted 4 times in the last hour"})
    [message] = slack.messages
    assert message.blocks[-1]["text"]["text"] == \
        "```starting\npassword=*** rejected\n'''inject'''```"
    assert message.blocks[-2]["elements"][0]["text"] == "restarted 4 times in the last hour"


def test_retry_after_is_read_and_web_api_errors_are_judged(slack, lifecycle, metrics) -> None:
    action, _, _ = lifecycle
    slack.limit(1, retry_after="3")
    with pytest.raises(RetryableActionError) as told:
        attempt(action, make_job(action, bot(slack)))
    assert told.value.status_code == 429 and told.value.retry_after == 3
    slack.limit(1, status=200, body={"ok": False, "error": "ratelimited"})
    with pytest.raises(RetryableActionError):
        attempt(action, make_job(action, bot(slack)))
    with pytest.raises(PermanentActionError, match="invalid_auth") as bad:
        attempt(action, make_job(action, bot(slack, token="xoxb-wrong-token")))
    assert "xoxb-wrong-token" not in str(bad.value)
    with pytest.raises(PermanentActionError, match="channel_not_found"):
        attempt(action, make_job(action, bot(slack, channel="#nowhere")))


def test_webhook_mode_posts_each_phase_as_a_message(slack, lifecycle) -> None:
    action, submit, _ = lifecycle
    hook = {"webhook_url": slack.url + slack.webhook_path, "text": "web-1 crashed",
            "labels": {"alertname": "Crash"}}
    submit(hook)
    submit(hook)
    submit({**hook, "resolve": True})
    assert [p["text"] for p in slack.webhook_posts] == [
        "web-1 crashed", "web-1 crashed", ":white_check_mark: Resolved: web-1 crashed"]
    job = make_job(action, hook)
    assert slack.webhook_path.rsplit("/", 1)[1] not in action.describe(job) + job.target


def test_options_are_checked_when_rules_load() -> None:
    assert SlackAction.validate({"text": "x", "token": "t"}) == [
        "bot mode needs both token and channel"]
    assert SlackAction.validate({"text": "x"}) == [
        "give token and channel (bot mode) or webhook_url"]
    assert SlackAction.validate({"text": "x", "token": "t", "channel": "c",
                                 "webhook_url": "https://h/x"}) == [
        "give token and channel, or webhook_url, not both"]
    assert SlackAction.validate({"text": "x", "webhook_url": "ftp://h"}) == [
        "webhook_url must be an http:// or https:// URL"]
    assert SlackAction.validate({"text": "x", "token": "t", "channel": "#ops"}) == []


def test_a_resolve_without_the_first_message_posts_a_new_one(slack, metrics) -> None:
    """The fire was never sent (its ts unknown): the resolve cannot edit, so it says so anew."""
    action = SlackAction(make_context(metrics))
    job: ActionJob = make_job(action, bot(slack, resolve=True),
                              context={"incident_key": "k", "ends_at": 1.0})
    assert "message" in attempt(action, job)
    assert slack.messages[0].text.startswith(":white_check_mark: Resolved:")
    action.close()
