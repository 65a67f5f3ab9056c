"""Every incident kind on one lifecycle, eventd running against the emulator.

One rule fires Opsgenie and Teams together and another resolves both; and eventd killed with
SIGKILL between firing and resolving: the next one reads the open incidents back from the
state directory and resolves them (PagerDuty and Slack, whose message it edits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import (
    emulator_env,
    eventd_process,
    free_port,
    is_ready,
    start_daemon,
    write_rules,
)
from tests.incident_services import OpsgenieFake, PagerDutyFake, SlackFake, TeamsFake, running
from tests.waiting import wait_until

CONTAINER = "/api/app/v1/user/container/c1dd4e1e-1356-411c-8613-e15146633640/"
OG_KEY = "3f1b2c4d-0000-4000-8000-00000000beef"
PD_KEY = "f00dfeedf00dfeedf00dfeedf00dfeed"
SLACK_TOKEN = "xoxb-77-77-sekr1t"
LABELS = '{alertname: ContainerDown, container: "{{ object.uuid }}"}'


def pair(actions_fire: str, actions_resolve: str) -> str:
    return f"""
rules:
  - name: down
    match: {{type: container, state: Stopped}}
    actions:{actions_fire}
  - name: up
    match: {{type: container, state: Running}}
    actions:{actions_resolve}
"""


def container(emulator, state: str) -> None:
    emulator.emit_event(type="container", action="update", state=state, resource_uri=CONTAINER)


@pytest.fixture
def opsgenie():
    yield from running(OpsgenieFake(OG_KEY))


@pytest.fixture
def teams():
    yield from running(TeamsFake())


@pytest.fixture
def pagerduty():
    yield from running(PagerDutyFake((PD_KEY,)))


@pytest.fixture
def slack():
    yield from running(SlackFake(SLACK_TOKEN))


def test_opsgenie_and_teams_fire_repeat_and_resolve(emulator, opsgenie, teams,
                                                    tmp_path: Path) -> None:
    og = f"""
      - opsgenie: {{url: "${{OG_URL}}", api_key: "${{OPSGENIE_API_KEY}}", labels: {LABELS},
                   message: "container {{{{ object.uuid }}}} stopped"{{extra}}}}
      - msteams: {{webhook_url: "${{MSTEAMS_WEBHOOK_URL}}", labels: {LABELS},
                  title: "container {{{{ object.uuid }}}} stopped"{{extra}}}}"""
    rules = write_rules(tmp_path / "rules", pair(og.replace("{extra}", ""),
                                                 og.replace("{extra}", ", resolve: true")))
    env = emulator_env(emulator, OG_URL=opsgenie.url, OPSGENIE_API_KEY=OG_KEY,
                       MSTEAMS_WEBHOOK_URL=teams.webhook)
    daemon = start_daemon(emulator, rules, tmp_path / "state", env=env)
    try:
        assert emulator.wait_for_connections(1, 10)
        container(emulator, "Stopped")
        container(emulator, "Stopped")
        wait_until(lambda: len(teams.cards) == 2 and opsgenie.alerts
                   and opsgenie.alerts[0].count == 2, 10, message="fire and repeat")
        assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 2
        container(emulator, "Running")
        wait_until(lambda: len(teams.cards) == 3 and opsgenie.alerts[0].status == "closed", 10,
                   message="resolved at both")
        assert [c["body"][0]["text"].split(":")[0] for c in teams.cards] == [
            "container c1dd4e1e-1356-411c-8613-e15146633640 stopped", "Again", "Resolved"]
        assert len(opsgenie.alerts) == 1
        assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 0
    finally:
        daemon.stop()


def test_sigkill_between_firing_and_resolving_still_resolves(
        emulator, pagerduty, slack, tmp_path: Path) -> None:
    fire = f"""
      - pagerduty: {{url: "${{PD_URL}}", routing_key: "${{PAGERDUTY_ROUTING_KEY}}",
                    labels: {LABELS}, summary: "container down"{{extra}}}}
      - slack: {{url: "${{SLACK_API}}", token: "${{SLACK_BOT_TOKEN}}", channel: "#ops",
                labels: {LABELS}, text: "container down"{{extra}}}}"""
    rules = write_rules(tmp_path / "rules", pair(fire.replace("{extra}", ""),
                                                 fire.replace("{extra}", ", resolve: true")))
    env = emulator_env(emulator, PD_URL=pagerduty.url, PAGERDUTY_ROUTING_KEY=PD_KEY,
                       SLACK_API=slack.url, SLACK_BOT_TOKEN=SLACK_TOKEN)

    ports: list[int] = []

    def slack_done() -> bool:
        """Whether the Slack action counted its success (its message's ts is kept by then)."""
        import requests

        text = requests.get(f"http://127.0.0.1:{ports[-1]}/metrics", timeout=2).text
        return 'eventd_actions_total{kind="slack",outcome="success"} 1.0' in text

    def start() -> Any:
        port = free_port()
        ports.append(port)
        proc = eventd_process("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                              "--metrics-addr", f"127.0.0.1:{port}", env=env)
        wait_until(lambda: proc.poll() is None and is_ready(port), 20, message="eventd ready")
        return proc

    proc = start()
    try:
        container(emulator, "Stopped")
        wait_until(lambda: pagerduty.incidents and len(slack.messages) == 1, 10,
                   message="fired at both")
        wait_until(slack_done, 10, message="the slack action done (ts kept)")
        proc.kill()  # SIGKILL: no chance to save anything
        out, err = proc.communicate(timeout=10)
        proc = start()
        container(emulator, "Stopped")
        wait_until(lambda: len(slack.messages[0].replies) == 1, 10, message="a reply after SIGKILL")
        container(emulator, "Running")
        wait_until(lambda: pagerduty.incidents[0].status == "resolved"
                   and slack.messages[0].edits == 1, 10, message="resolved after SIGKILL")
        assert len(pagerduty.incidents) == 1 and len(slack.messages) == 1
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    for secret in (PD_KEY, SLACK_TOKEN):
        assert secret not in out + err
