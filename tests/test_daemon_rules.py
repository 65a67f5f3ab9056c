"""Rule behaviour that needs the whole daemon: reload under load, throttles across restarts,
stale events, replay for real."""

from __future__ import annotations

import io
import json
import threading
import time

from eventd.commands.replay import run as replay_run
from eventd.emulator.world import DEFAULT_SERVICE_UUIDS
from eventd.events import iso_utc
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until


def service_uri(emu):
    return emu.world.uri("service", DEFAULT_SERVICE_UUIDS["web"])


def hook_rules(name, url, path):
    return f"""
        rules:
          - name: {name}
            match: {{type: service}}
            actions:
              - webhook: {{url: "{url}{path}", json: {{uuid: "{{{{ event.uuid }}}}"}}}}
    """


def test_reload_under_load_loses_nothing_and_never_splits_an_event(emulator, webhook_receiver,
                                                                   tmp_path):
    rules = write_rules(tmp_path / "rules", hook_rules("old", webhook_receiver.url, "/old"))
    daemon = start_daemon(emulator, rules, tmp_path / "state")
    try:
        assert emulator.wait_for_connections(1, 5)
        wait_until(lambda: daemon.consumer.connected, 5)
        sent: list[str] = []
        done = threading.Event()

        def produce():
            for _ in range(300):
                sent.append(emulator.emit_event(type="service", state="Running",
                                                resource_uri=service_uri(emulator),
                                                parents=[])["uuid"])
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        flips = 0
        while not done.is_set() or flips < 2:
            name = "new" if flips % 2 == 0 else "old"
            write_rules(tmp_path / "rules", hook_rules(name, webhook_receiver.url, f"/{name}"))
            assert daemon.reload()
            flips += 1
        producer.join()
        wait_until(lambda: len(webhook_receiver.requests) == 300, 20,
                   message="one webhook per event")
        received = [r.json()["uuid"] for r in webhook_receiver.requests]
        assert sorted(received) == sorted(sent)  # each event ran exactly one rule set's action
        assert daemon.metrics.registry.get_sample_value("eventd_rules_reload_success") == 1
    finally:
        daemon.stop(5)


def test_throttle_survives_a_restart(emulator, webhook_receiver, tmp_path):
    rules = write_rules(tmp_path / "rules", f"""
        rules:
          - name: throttled
            match: {{type: service, state: Stopped}}
            throttle: {{key: "{{{{ object.uuid }}}}", window: 10m}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/t", json: {{u: "{{{{ event.uuid }}}}"}}}}
    """)
    state = tmp_path / "state"
    for round_ in range(2):
        daemon = start_daemon(emulator, rules, state)
        sample = daemon.metrics.registry.get_sample_value
        try:
            wait_until(lambda consumer=daemon.consumer: consumer.connected, 5)
            emulator.emit_event(type="service", state="Stopped", resource_uri=service_uri(emulator),
                                parents=[])
            wait_until(lambda s=sample: s("eventd_events_received_total", {"type": "service"}) == 1,
                       5)
            assert daemon.wait_idle(5)
            outcome = "success" if round_ == 0 else "throttled"
            assert daemon.metrics.registry.get_sample_value(
                "eventd_actions_total", {"kind": "webhook", "outcome": outcome}) == 1
        finally:
            daemon.stop(5)
    assert len(webhook_receiver.requests) == 1


def test_stale_events_are_audited_but_trigger_no_rest_action(emulator, tmp_path):
    audit = tmp_path / "audit.jsonl"
    rules = write_rules(tmp_path / "rules", f"""
        rules:
          - name: redeploy
            match: {{type: service, state: Stopped}}
            actions:
              - dockercloud: {{call: redeploy, target: "{{{{ event.resource_uri }}}}"}}
          - name: audit
            match: {{}}
            actions:
              - audit: {{path: "{audit}", fsync: always}}
    """)
    daemon = start_daemon(emulator, rules, tmp_path / "state")
    try:
        wait_until(lambda: daemon.consumer.connected, 5)
        emulator.clear_rest_calls()
        stale = emulator.complete_event({
            "type": "service", "action": "update", "state": "Stopped",
            "resource_uri": service_uri(emulator), "parents": [],
            "datetime": iso_utc(time.time() - 3600)})
        emulator.emit(stale)
        wait_until(lambda: audit.exists() and len(audit.read_text().splitlines()) == 2, 5)
        assert daemon.wait_idle(5)
        record = json.loads(audit.read_text().splitlines()[1])
        assert record["event"]["uuid"] == stale["uuid"]
        assert {"rule": "redeploy", "kind": "dockercloud", "status": "skipped"} in record["actions"]
        assert [c for c in emulator.rest_calls() if c.method == "POST"] == []
        assert daemon.metrics.registry.get_sample_value(
            "eventd_actions_total", {"kind": "dockercloud", "outcome": "skipped"}) == 1
    finally:
        daemon.stop(5)


def test_replay_runs_actions_for_real_and_exits_when_delivered(emulator, webhook_receiver,
                                                               tmp_path):
    rules = write_rules(tmp_path / "rules", hook_rules("replayed", webhook_receiver.url, "/r"))
    events = tmp_path / "events.jsonl"
    lines = [json.dumps(emulator.complete_event({"type": "service", "state": "Running",
                                                 "resource_uri": service_uri(emulator),
                                                 "parents": []})) for _ in range(5)]
    events.write_text("\n".join(lines + ["{broken"]) + "\n")
    webhook_receiver.respond_with(503, count=2)
    env = emulator_env(emulator)
    settings = Settings.from_env(env, rules=(rules,), state_dir=tmp_path / "state")
    out = io.StringIO()
    assert replay_run(events, settings, env, dry_run=False, out=out) == 0
    assert len({r.header("Idempotency-Key") for r in webhook_receiver.requests}) == 5
    assert "summary: 5 events replayed, 5 actions delivered, 0 dead-lettered" in out.getvalue()
    _ = Metrics  # replay builds its own registry
