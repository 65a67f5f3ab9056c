"""The whole chain against the emulator: stream -> rules -> actions, over real sockets."""

from __future__ import annotations

import json

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from eventd.emulator.world import DEFAULT_CONTAINER_UUIDS, DEFAULT_SERVICE_UUIDS
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until


@pytest.fixture
def run_daemon(emulator, tmp_path):
    started = []

    def run(rules_text: str, **overrides):
        rules = write_rules(tmp_path / "rules", rules_text)
        env = emulator_env(emulator, **overrides.pop("env", {}))
        daemon = start_daemon(emulator, rules, tmp_path / "state", env=env, **overrides)
        started.append(daemon)
        assert emulator.wait_for_connections(1, timeout=5)
        wait_until(lambda: daemon.consumer.connected, 5, message="daemon connected")
        return daemon

    yield run
    for daemon in started:
        daemon.stop(timeout=5)


def web_container_uri(emu, name="web-1"):
    return emu.world.uri("container", DEFAULT_CONTAINER_UUIDS[name])


def web_service_uri(emu):
    return emu.world.uri("service", DEFAULT_SERVICE_UUIDS["web"])


def container_parents(emu, name="web-1"):
    world = emu.world
    return world.parents(world.find("container", DEFAULT_CONTAINER_UUIDS[name]))


def test_crash_alert_arrives_once_with_idempotency_key(run_daemon, emulator, webhook_receiver):
    daemon = run_daemon(f"""
        rules:
          - name: container-stopped
            match: {{type: container, state: Stopped}}
            actions:
              - webhook:
                  url: "{webhook_receiver.url}/alerts"
                  json: {{text: "{{{{ object.type }}}} {{{{ object.uuid }}}} is {{{{ event.state }}}}"}}
    """)
    event = emulator.emit_event(type="container", action="update", state="Stopped",
                                resource_uri=web_container_uri(emulator),
                                parents=container_parents(emulator))
    emulator.emit(event)  # the same uuid again: must not alert twice
    emulator.emit_event(type="container", action="update", state="Running",
                        resource_uri=web_container_uri(emulator),
                        parents=container_parents(emulator))
    wait_until(lambda: webhook_receiver.requests, 5, message="alert delivered")
    wait_until(lambda: daemon.metrics.registry.get_sample_value(
        "eventd_events_received_total", {"type": "container"}) == 3, 5)
    assert daemon.wait_idle(5)
    requests_seen = webhook_receiver.requests
    assert len(requests_seen) == 1
    alert = requests_seen[0]
    assert alert.path == "/alerts"
    assert alert.json() == {"text": f"container {DEFAULT_CONTAINER_UUIDS['web-1']} is Stopped"}
    assert alert.header("Idempotency-Key")
    assert alert.header("Content-Type").startswith("application/json")
    sample = daemon.metrics.registry.get_sample_value
    assert sample("eventd_events_duplicate_total") == 1
    assert sample("eventd_rule_matches_total", {"rule": "container-stopped"}) == 1
    assert sample("eventd_actions_total", {"kind": "webhook", "outcome": "success"}) == 1


def test_redeploy_rule_calls_rest_once_and_ignores_its_own_events(run_daemon, emulator):
    daemon = run_daemon("""
        rules:
          - name: redeploy-on-stop
            match: {type: container, state: Stopped}
            actions:
              - dockercloud: {call: redeploy, target: "{{ parent.service }}"}
    """)
    emulator.clear_rest_calls()
    emulator.emit_event(type="container", action="update", state="Stopped",
                        resource_uri=web_container_uri(emulator),
                        parents=container_parents(emulator))
    service_uri = web_service_uri(emulator)

    def redeploy_done():
        return any(e.get("type") == "action" and e.get("state") == "Success"
                   and service_uri in e.get("parents", []) for e in emulator.sent_events())

    wait_until(redeploy_done, 10, message="the redeploy finished in the emulator")
    # The redeploy stopped the service's old containers: those Stopped events are eventd's
    # own doing and must not trigger the rule again. Wait until eventd has processed them all.
    containers = [e for e in emulator.sent_events() if e.get("type") == "container"]
    stopped_after = [e for e in containers if e.get("state") == "Stopped"]
    assert len(stopped_after) >= 3  # the one we emitted + the redeploy's own
    wait_until(lambda: (daemon.metrics.registry.get_sample_value(
        "eventd_events_received_total", {"type": "container"}) or 0) >= len(containers), 10,
        message="every container event processed")
    assert daemon.wait_idle(10)
    assert daemon.metrics.registry.get_sample_value(
        "eventd_actions_total", {"kind": "dockercloud", "outcome": "skipped"}) >= 2
    calls = [c for c in emulator.rest_calls() if c.method != "GET"]
    assert [(c.method, c.path) for c in calls] == [("POST", service_uri + "redeploy/")]
    call = calls[0]
    assert call.headers.get("Authorization") == emulator.auth_header
    assert call.headers.get("Accept") == "application/json"
    assert call.status == 202


def test_stream_gap_is_visible_and_readiness_follows(run_daemon, emulator, webhook_receiver):
    daemon = run_daemon(f"""
        rules:
          - name: stream-gap
            match: {{type: eventd}}
            actions:
              - webhook:
                  url: "{webhook_receiver.url}/gap"
                  json: {{state: "{{{{ event.state }}}}", gap: "{{{{ event.gap_seconds }}}}"}}
    """, metrics_addr=("127.0.0.1", 0))
    base = f"http://127.0.0.1:{daemon.health_port}"
    wait_until(lambda: requests.get(base + "/readyz", timeout=2).status_code == 200, 5)
    emulator.stop_stream()
    wait_until(lambda: requests.get(base + "/readyz", timeout=2).status_code == 503, 5,
               message="readiness drops with the stream")
    body = requests.get(base + "/readyz", timeout=2).json()
    assert body["checks"]["stream"] != "ok"
    emulator.start_stream()
    wait_until(lambda: requests.get(base + "/readyz", timeout=2).status_code == 200, 10,
               message="readiness comes back")
    wait_until(lambda: len(webhook_receiver.requests) >= 3, 5)
    states = [r.json() for r in webhook_receiver.requests]
    assert states[0] == {"state": "connected", "gap": ""}
    assert states[1]["state"] == "disconnected"
    assert states[2]["state"] == "connected" and float(states[2]["gap"]) > 0
    families = {f.name: f for f in text_string_to_metric_families(
        requests.get(base + "/metrics", timeout=2).text)}
    reconnects = sum(s.value for s in families["eventd_stream_reconnects"].samples
                     if s.name == "eventd_stream_reconnects_total")
    assert reconnects >= 1
    connected = families["eventd_stream_connected"].samples[0].value
    assert connected == 1


def test_reload_keeps_old_rules_when_new_ones_are_invalid(run_daemon, emulator, webhook_receiver,
                                                          tmp_path):
    daemon = run_daemon(f"""
        rules:
          - name: first
            match: {{type: service}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/first", json: {{s: "{{{{ event.state }}}}"}}}}
    """)
    rules_file = tmp_path / "rules" / "rules.yaml"
    rules_file.write_text("rules:\n  - name: broken\n    match: {type: [}\n")
    assert daemon.reload() is False
    assert daemon.metrics.registry.get_sample_value("eventd_rules_reload_success") == 0
    emulator.emit_event(type="service", action="update", state="Running",
                        resource_uri=web_service_uri(emulator), parents=[])
    wait_until(lambda: [r.path for r in webhook_receiver.requests] == ["/first"], 5)
    rules_file.write_text(json.dumps({"rules": [
        {"name": "second", "match": {"type": "service"},
         "actions": [{"webhook": {"url": f"{webhook_receiver.url}/second", "json": {"a": 1}}}]},
    ]}))
    assert daemon.reload() is True
    assert daemon.metrics.registry.get_sample_value("eventd_rules_reload_success") == 1
    emulator.emit_event(type="service", action="update", state="Stopped",
                        resource_uri=web_service_uri(emulator), parents=[])
    wait_until(lambda: [r.path for r in webhook_receiver.requests] == ["/first", "/second"], 5)


def test_audit_records_every_event(run_daemon, emulator, tmp_path):
    audit = tmp_path / "audit.jsonl"
    daemon = run_daemon(f"""
        rules:
          - name: audit-all
            match: {{}}
            actions:
              - audit: {{path: "{audit}", fsync: always}}
    """)
    for state in ("Stopping", "Stopped", "Starting", "Running"):
        emulator.emit_event(type="container", action="update", state=state,
                            resource_uri=web_container_uri(emulator),
                            parents=container_parents(emulator))

    def lines():
        return audit.read_text().splitlines() if audit.exists() else []

    # the first connected gap event plus the four container events
    wait_until(lambda: len(lines()) == 5, 5, message="five audit lines")
    records = [json.loads(line) for line in lines()]
    assert records[0]["event"]["type"] == "eventd"
    assert [r["event"]["state"] for r in records[1:]] == ["Stopping", "Stopped", "Starting", "Running"]
    assert all(r["rules"] == ["audit-all"] for r in records)
    assert daemon.wait_idle(5)


def test_hostile_parents_cannot_retarget_the_shipped_redeploy_rule(emulator, tmp_path):
    """Issue 13 item 2: event data placed in `parents` cannot steer an authenticated call."""
    import shutil
    from pathlib import Path

    from eventd.emulator.world import DEFAULT_STACK_UUID
    from tests.daemon_helpers import start_daemon

    rules = tmp_path / "rules"
    rules.mkdir()
    shipped = Path(__file__).resolve().parent.parent / "rules" / "redeploy-stopped.yaml"
    shutil.copy(shipped, rules / shipped.name)
    daemon = start_daemon(emulator, rules, tmp_path / "state")
    try:
        wait_until(lambda: daemon.consumer.connected, 5, message="daemon connected")
        stack = emulator.world.uri("stack", DEFAULT_STACK_UUID)
        service = web_service_uri(emulator)
        hostile = f"{stack}stop/?{service[service.index('/service/'):]}"
        assert hostile.endswith(f"/service/{DEFAULT_SERVICE_UUIDS['web']}/")
        emulator.clear_rest_calls()
        emulator.emit_event(type="container", action="update", state="Stopped",
                            resource_uri=web_container_uri(emulator),
                            parents=[hostile] + container_parents(emulator))
        wait_until(lambda: [c for c in emulator.rest_calls() if c.method == "POST"], 10,
                   message="the redeploy was called")
        assert daemon.wait_idle(10)
    finally:
        daemon.stop(timeout=5)
    posts = [(c.method, c.path) for c in emulator.rest_calls() if c.method != "GET"]
    assert posts == [("POST", f"{service}redeploy/")]  # the real service, never the stack
    assert not any("/stack/" in c.path for c in emulator.rest_calls())


def test_skipped_and_delivered_rest_actions_each_log_one_info_line(run_daemon, emulator, caplog):
    """Issue 12 part 6: one line per outcome, at INFO, for skips and first-attempt successes."""
    import logging

    with caplog.at_level(logging.INFO, logger="eventd"):
        daemon = run_daemon("""
            rules:
              - name: redeploy-on-stop
                match: {type: container, state: Stopped}
                actions:
                  - dockercloud: {call: redeploy, target: "{{ parent.service }}"}
        """)
        old = {"type": "container", "action": "update", "state": "Stopped",
               "resource_uri": web_container_uri(emulator),
               "parents": container_parents(emulator),
               "uuid": "6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01", "datetime": "2016-06-01T10:15:02Z"}
        emulator.emit(old)
        emulator.emit_event(type="container", action="update", state="Stopped",
                                    resource_uri=web_container_uri(emulator, "web-2"),
                                    parents=container_parents(emulator, "web-2"))

        def lines(text):
            return [r for r in caplog.records if text in r.getMessage()]

        wait_until(lambda: lines("caused by eventd's own REST action"), 15,
                   message="a self-caused event skipped")
        assert daemon.wait_idle(10)
    [too_old] = lines(f"for event {old['uuid']}")
    assert too_old.levelno == logging.INFO
    assert too_old.getMessage() == (f"rule redeploy-on-stop: dockercloud skipped for event "
                                    f"{old['uuid']}: event older than max_event_age (900 s)")
    service = web_service_uri(emulator)
    [done] = lines(f"redeploy {service}")
    assert done.levelno == logging.INFO and done.getMessage().startswith(
        f"dockercloud for rule redeploy-on-stop: redeploy {service}: HTTP 202, action ")
    self_caused = lines("caused by eventd's own REST action")
    assert all(r.levelno == logging.INFO and r.getMessage().startswith(
        "rule redeploy-on-stop skipped for event ") for r in self_caused)
    assert len({r.getMessage() for r in self_caused}) == len(self_caused)  # once per event
