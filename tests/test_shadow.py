"""Shadow rules (`mode: shadow`): they match, are counted and logged as "would run", and run
nothing, beside a live rule that does run, against the emulator."""

from __future__ import annotations

import logging

from eventd.emulator.world import DEFAULT_CONTAINER_UUIDS, DEFAULT_SERVICE_UUIDS
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until


def test_a_shadow_rule_matches_counts_and_logs_but_runs_nothing(
        emulator, webhook_receiver, tmp_path, caplog) -> None:
    service = emulator.world.uri("service", DEFAULT_SERVICE_UUIDS["web"])
    container = emulator.world.uri("container", DEFAULT_CONTAINER_UUIDS["web-1"])
    rules = write_rules(tmp_path / "rules", f"""
        rules:
          - name: new-redeploy
            mode: shadow
            match: {{type: container, state: Stopped}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/shadow", json: {{text: "{{{{ object.uuid }}}}"}}}}
              - dockercloud: {{call: redeploy, target: "{service}"}}
              - alertmanager: {{url: "{webhook_receiver.url}", labels: {{alertname: Shadow}}}}
          - name: live
            match: {{type: container, state: Stopped}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/live", json: {{text: live}}}}
    """)
    caplog.set_level(logging.INFO, logger="eventd.engine")
    daemon = start_daemon(emulator, rules, tmp_path / "state", env=emulator_env(emulator))
    try:
        assert emulator.wait_for_connections(1, 5)
        emulator.clear_rest_calls()
        emulator.emit_event(type="container", action="update", state="Stopped",
                            resource_uri=container, parents=[service])
        wait_until(lambda: any(r.path == "/live" for r in webhook_receiver.requests), 10,
                   message="the live rule's webhook")
        assert daemon.wait_idle(5)
        sample = daemon.metrics.registry.get_sample_value
        assert [r.path for r in webhook_receiver.requests] == ["/live"]
        assert [c for c in emulator.rest_calls() if c.method == "POST"] == []
        assert sample("eventd_rule_matches_total", {"rule": "new-redeploy"}) == 1
        for kind in ("webhook", "dockercloud", "alertmanager"):
            assert sample("eventd_actions_total", {"kind": kind, "outcome": "shadow"}) == 1, kind
        assert sample("eventd_alerts_active") == 0  # a shadow alert fires nothing
        lines = [r.getMessage() for r in caplog.records if "(shadow) would run" in r.getMessage()]
        assert len(lines) == 3
        assert lines[1].startswith(f'rule new-redeploy (shadow) would run dockercloud '
                                   f'{{"call":"redeploy","target":"{service}"}}')
    finally:
        daemon.stop()
