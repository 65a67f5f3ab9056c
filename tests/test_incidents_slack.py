"""Slack incidents with the alert lifecycle, eventd running against the emulator.

A crash loop is one message whose thread collects the repeats; the event that shows the
container running again edits the message to say it is resolved. The message's ts is kept
in the store, so a daemon restarted in between still threads and edits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.incident_services import SlackFake, running
from tests.waiting import wait_until

TOKEN = "xoxb-4242-4242-sekr1t"
RULES = """
rules:
  - name: container-crashed
    match: {type: container, state: Stopped}
    actions:
      - slack:
          url: "${SLACK_API}"
          token: "${SLACK_BOT_TOKEN}"
          channel: "#ops"
          title: "Container crashed"
          text: "container {{ object.uuid }} stopped"
          labels: {alertname: Crash, container: "{{ object.uuid }}"}
  - name: container-running
    match: {type: container, state: Running}
    actions:
      - slack:
          url: "${SLACK_API}"
          token: "${SLACK_BOT_TOKEN}"
          channel: "#ops"
          text: "container {{ object.uuid }} runs again"
          labels: {alertname: Crash, container: "{{ object.uuid }}"}
          resolve: true
"""
CONTAINER = "/api/app/v1/user/container/c1dd4e1e-1356-411c-8613-e15146633640/"


@pytest.fixture
def slack():
    yield from running(SlackFake(TOKEN))


@pytest.fixture
def start(emulator, slack, tmp_path: Path):
    rules = write_rules(tmp_path / "rules", RULES)
    env = emulator_env(emulator, SLACK_API=slack.url, SLACK_BOT_TOKEN=TOKEN)
    started: list[Any] = []

    def run() -> Any:
        daemon = start_daemon(emulator, rules, tmp_path / "state", env=env)
        started.append(daemon)
        assert emulator.wait_for_connections(1, 10)
        return daemon

    yield run
    for daemon in started:
        daemon.stop()


def container(emulator, state: str) -> None:
    emulator.emit_event(type="container", action="update", state=state, resource_uri=CONTAINER)


def replies(slack) -> int:
    return len(slack.messages[0].replies) if slack.messages else -1


def test_a_crash_loop_is_one_thread_resolved_by_an_edit(start, emulator, slack, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = start()
    container(emulator, "Stopped")
    wait_until(lambda: len(slack.messages) == 1, 10, message="the incident's message")
    for crashes in range(1, 4):
        container(emulator, "Stopped")
        wait_until(lambda n=crashes: replies(slack) == n, 10, message=f"reply {crashes}")
    assert len(slack.messages) == 1
    container(emulator, "Running")
    wait_until(lambda: slack.messages[0].edits == 1, 10, message="the message edited")
    assert "Resolved" in slack.messages[0].text
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 0
    assert TOKEN not in caplog.text


def test_a_restart_keeps_the_thread_and_still_resolves(start, emulator, slack) -> None:
    daemon = start()
    container(emulator, "Stopped")
    wait_until(lambda: len(slack.messages) == 1, 10, message="the incident's message")
    daemon.stop()
    start()
    container(emulator, "Stopped")
    wait_until(lambda: replies(slack) == 1, 10, message="a reply after the restart")
    container(emulator, "Running")
    wait_until(lambda: slack.messages[0].edits == 1, 10, message="the message edited")
    assert len(slack.messages) == 1


def test_retry_after_is_honoured(start, emulator, slack) -> None:
    slack.limit(1, retry_after="2")
    start()
    container(emulator, "Stopped")
    wait_until(lambda: len(slack.messages) == 1, 20, message="the message after the 429")
    limited, posted = slack.requests[0], slack.requests[1]
    assert limited.status == 429 and posted.status == 200
    assert posted.at - limited.at >= 1.9  # waited as told, not the first backoff step
