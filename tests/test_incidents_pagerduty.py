"""PagerDuty incidents with the alert lifecycle, eventd running against the emulator.

One incident per identity (the rendered labels): a repeat adds to it, the resolving rule
resolves it, and a restart between the two (the identity read back from the store) still
resolves it. The routing key comes from PAGERDUTY_ROUTING_KEY_FILE and never shows in a log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.incident_services import PagerDutyFake, running
from tests.waiting import wait_until

KEY = "f00dfeedf00dfeedf00dfeedf00dfeed"
RULES = """
rules:
  - name: container-stopped
    match: {type: container, state: Stopped}
    actions:
      - pagerduty:
          url: "${PD_URL}"
          routing_key: "${PAGERDUTY_ROUTING_KEY}"
          labels: {alertname: ContainerDown, container: "{{ object.uuid }}"}
          summary: "container {{ object.uuid }} stopped"
          severity: critical
          component: "{{ object.uuid }}"
  - name: container-running
    match: {type: container, state: Running}
    actions:
      - pagerduty:
          url: "${PD_URL}"
          routing_key: "${PAGERDUTY_ROUTING_KEY}"
          labels: {alertname: ContainerDown, container: "{{ object.uuid }}"}
          resolve: true
"""
CONTAINER = "/api/app/v1/user/container/c1dd4e1e-1356-411c-8613-e15146633640/"


@pytest.fixture
def pagerduty():
    yield from running(PagerDutyFake((KEY,)))


@pytest.fixture
def start(emulator, pagerduty, tmp_path: Path):
    rules = write_rules(tmp_path / "rules", RULES)
    secret = tmp_path / "pd-key"
    secret.write_text(KEY + "\n")
    env = emulator_env(emulator, PD_URL=pagerduty.url, PAGERDUTY_ROUTING_KEY_FILE=str(secret))
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


def events(pagerduty) -> list[str]:
    return [r.json()["event_action"] for r in pagerduty.requests if r.status == 202]


def test_one_incident_repeats_join_it_and_the_resolving_event_resolves_it(
        start, emulator, pagerduty, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = start()
    container(emulator, "Stopped")
    wait_until(lambda: events(pagerduty) == ["trigger"], 10, message="trigger at PagerDuty")
    container(emulator, "Stopped")
    wait_until(lambda: events(pagerduty) == ["trigger", "trigger"], 10, message="repeat")
    [incident] = pagerduty.incidents
    assert incident.status == "triggered" and len(incident.events) == 2
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 1
    payload = incident.events[0]["payload"]
    assert payload["summary"] == "container c1dd4e1e-1356-411c-8613-e15146633640 stopped"
    container(emulator, "Running")
    wait_until(lambda: pagerduty.incidents[0].status == "resolved", 10, message="resolved")
    assert len(pagerduty.incidents) == 1
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 0
    container(emulator, "Running")  # nothing open: nothing sent
    container(emulator, "Stopped")  # a new incident after the resolve
    wait_until(lambda: len(pagerduty.incidents) == 2, 10, message="a second incident")
    assert KEY not in caplog.text


def test_a_restart_between_trigger_and_resolve_still_resolves(start, emulator, pagerduty) -> None:
    daemon = start()
    container(emulator, "Stopped")
    wait_until(lambda: events(pagerduty) == ["trigger"], 10, message="trigger at PagerDuty")
    daemon.stop()
    daemon = start()  # the same state directory: the open incident is read back
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 1
    container(emulator, "Running")
    wait_until(lambda: pagerduty.incidents[0].status == "resolved", 10, message="resolved")
    assert events(pagerduty) == ["trigger", "resolve"]


def test_a_rate_limited_trigger_is_delivered_once_pagerduty_accepts(
        start, emulator, pagerduty) -> None:
    pagerduty.limit(2, retry_after="1")
    start()
    container(emulator, "Stopped")
    wait_until(lambda: events(pagerduty) == ["trigger"], 20, message="trigger after the 429s")
    assert [r.status for r in pagerduty.requests] == [429, 429, 202]
    assert pagerduty.requests[2].at - pagerduty.requests[0].at >= 1.9  # 1 s, twice


def test_check_reads_the_routing_key_file_as_run_does(tmp_path: Path) -> None:
    import subprocess
    import sys

    rules = write_rules(tmp_path / "rules", RULES)
    secret = tmp_path / "pd-key"
    secret.write_text(KEY + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PD_URL": "https://pd.example",
           "PAGERDUTY_ROUTING_KEY_FILE": str(secret)}
    done = subprocess.run([sys.executable, "-m", "eventd", "check", str(rules)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    missing = subprocess.run([sys.executable, "-m", "eventd", "check", str(rules)],
                             capture_output=True, text=True, timeout=30,
                             env={**env, "PAGERDUTY_ROUTING_KEY_FILE": str(tmp_path / "none")})
    assert missing.returncode == 2
    assert "PAGERDUTY_ROUTING_KEY_FILE: cannot read" in missing.stderr
    assert KEY not in done.stdout + done.stderr + missing.stderr


def test_the_console_masks_a_routing_key_whatever_its_source() -> None:
    from eventd.console.redact import Redactor

    shown = Redactor().value({"routing_key": KEY, "summary": "web-1 stopped"})
    assert shown == {"routing_key": "***", "summary": "web-1 stopped"}
