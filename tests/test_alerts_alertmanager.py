"""Alerts with a lifecycle against a real Alertmanager (Debian's), routing to the test receiver.

eventd runs in this process against the emulator, with `--alert-resend 1s` (so `endsAt` is
4 s ahead): the alert is active, still active after its first `endsAt` (re-sent), resolved
within seconds of the resolving event with a "resolved" notification at the receiver, and
still resolved by a daemon restarted between the two.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until

RULES = """
rules:
  - name: node-unreachable
    match: {type: node, state: Unreachable}
    actions:
      - alertmanager:
          url: "${AM_URL}"
          labels: {alertname: NodeUnreachable, node: "{{ object.uuid }}", severity: page}
          annotations: {summary: "node {{ object.uuid }} is unreachable"}
  - name: node-deployed
    match: {type: node, state: Deployed}
    actions:
      - alertmanager:
          url: "${AM_URL}"
          labels: {alertname: NodeUnreachable, node: "{{ object.uuid }}", severity: page}
          resolve: true
"""
NODE = "/api/infra/v1/node/7a1e0000-0000-4000-8000-000000000001/"


def am_alert(alertmanager_alerts: list[dict[str, Any]]) -> dict[str, Any] | None:
    found = [a for a in alertmanager_alerts if a["labels"].get("alertname") == "NodeUnreachable"]
    return found[0] if found else None


def ends_at(alert: dict[str, Any]) -> float:
    return datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00")).timestamp()


def notifications(receiver) -> list[str]:
    return [a["status"] for r in receiver.requests if r.path == "/alertmanager"
            for a in r.json()["alerts"] if a["labels"].get("alertname") == "NodeUnreachable"]


@pytest.fixture
def setup(emulator, alertmanager, tmp_path: Path):

    rules = write_rules(tmp_path / "rules", RULES)
    env = emulator_env(emulator, AM_URL=alertmanager)
    started: list[Any] = []

    def start():
        daemon = start_daemon(emulator, rules, tmp_path / "state", env=env, alert_resend=1.0)
        started.append(daemon)
        assert emulator.wait_for_connections(1, 10)
        return daemon

    def alerts() -> list[dict[str, Any]]:
        import requests

        answer = requests.get(f"{alertmanager}/api/v2/alerts", timeout=5)
        answer.raise_for_status()
        return list(answer.json())

    yield start, alerts
    for daemon in started:
        daemon.stop()


def node_event(emulator, state: str) -> None:
    emulator.emit_event(type="node", action="update", state=state, resource_uri=NODE)


def test_an_alert_stays_active_while_firing_and_resolves_on_the_resolving_event(
        setup, emulator, webhook_receiver) -> None:
    start, alerts = setup
    daemon = start()
    fired_at = time.time()
    node_event(emulator, "Unreachable")
    wait_until(lambda: am_alert(alerts()) is not None, 10, message="alert in Alertmanager")
    first = am_alert(alerts())
    assert first is not None and first["status"]["state"] == "active"
    assert first["labels"]["node"] == NODE.split("/")[-2]
    first_end = ends_at(first)
    # endsAt = when it was sent + 4 x 1 s (RFC 3339 in whole seconds)
    assert fired_at + 3 <= first_end <= time.time() + 4
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 1
    wait_until(lambda: "firing" in notifications(webhook_receiver), 10,
               message="firing notification at the receiver")
    # Past its first endsAt it is still active: eventd re-sent it with a later endsAt.
    wait_until(lambda: time.time() > first_end + 1.5, 10, message="first endsAt passed")
    later = am_alert(alerts())
    assert later is not None and later["status"]["state"] == "active", later
    assert ends_at(later) > first_end
    assert "resolved" not in notifications(webhook_receiver)

    node_event(emulator, "Deployed")
    wait_until(lambda: am_alert(alerts()) is None, 5, message="alert resolved in Alertmanager")
    wait_until(lambda: "resolved" in notifications(webhook_receiver), 10,
               message="resolved notification at the receiver")
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 0


def test_a_restart_between_firing_and_resolving_still_resolves(
        setup, emulator, webhook_receiver) -> None:
    start, alerts = setup
    daemon = start()
    node_event(emulator, "Unreachable")
    wait_until(lambda: am_alert(alerts()) is not None, 10, message="alert in Alertmanager")
    daemon.stop()
    before = ends_at(am_alert(alerts()) or {})

    daemon = start()  # same state directory: the firing alert is read back from the store
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 1
    wait_until(lambda: ends_at(am_alert(alerts()) or {"endsAt": "1970-01-01T00:00:00Z"}) > before,
               10, message="re-sending resumed after the restart")
    node_event(emulator, "Deployed")
    wait_until(lambda: am_alert(alerts()) is None, 5, message="alert resolved in Alertmanager")
    wait_until(lambda: "resolved" in notifications(webhook_receiver), 10,
               message="resolved notification at the receiver")
    assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 0


def test_sigkill_between_firing_and_resolving_still_resolves(
        emulator, alertmanager, webhook_receiver, tmp_path: Path) -> None:
    """eventd as a process, killed with SIGKILL while the alert fires: the next one re-sends
    it (read back from the state directory) and resolves it."""
    import requests

    from tests.daemon_helpers import eventd_process, free_port, is_ready

    rules = write_rules(tmp_path / "rules", RULES)
    env = emulator_env(emulator, AM_URL=alertmanager)

    def alerts() -> list[dict[str, Any]]:
        return list(requests.get(f"{alertmanager}/api/v2/alerts", timeout=5).json())

    def start() -> Any:
        port = free_port()
        proc = eventd_process("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                              "--alert-resend", "1s", "--metrics-addr", f"127.0.0.1:{port}", env=env)
        wait_until(lambda: proc.poll() is None and is_ready(port), 20, message="eventd ready")
        return proc

    proc = start()
    try:
        node_event(emulator, "Unreachable")
        wait_until(lambda: am_alert(alerts()) is not None, 10, message="alert in Alertmanager")
        proc.kill()  # SIGKILL: no chance to save anything
        proc.communicate(timeout=10)
        before = ends_at(am_alert(alerts()) or {"endsAt": "1970-01-01T00:00:00Z"})
        proc = start()
        wait_until(lambda: ends_at(am_alert(alerts()) or {"endsAt": "1970-01-01T00:00:00Z"})
                   > before, 10, message="re-sending resumed after SIGKILL")
        node_event(emulator, "Deployed")
        wait_until(lambda: am_alert(alerts()) is None, 5, message="alert resolved in Alertmanager")
        wait_until(lambda: "resolved" in notifications(webhook_receiver), 10,
                   message="resolved notification at the receiver")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
