"""Incidents that carry a container's last words, on a real Docker Engine (dockerd started by
the tests, tests/docker_engine.py) and the fakes of PagerDuty and Slack.

- 50 lines and exit 3: the incident carries the last 20, `password=...` redacted;
- a crash loop: one Slack message, each crash a reply in its thread, resolved (the message
  edited) once it has run for `resolve_after` without crashing;
- a 100 MB log: the enrichment reads at most the cap within 1 s; and when the logs cannot be
  read at all (the container is gone), the event is still delivered.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from eventd.attachments import LOGS_BUDGET_AWAY
from eventd.daemon import Daemon
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from tests.docker_engine import DockerEngine
from tests.incident_services import PagerDutyFake, SlackFake, running
from tests.waiting import wait_until

PD_KEY = "0123456789abcdef0123456789abcdef"
SLACK_TOKEN = "xoxb-9-9-enginetest"
FAST = {"backoff_initial": 0.05, "backoff_max": 0.3, "healthy_after": 1.0,
        "shutdown_timeout": 5.0, "ping_interval": 1.0, "pong_timeout": 2.0}

FIFTY_LINES = ("i=1; while [ $i -le 50 ]; do "
               "if [ $i -eq 45 ]; then echo \"line $i password=hunter2 user=bob\"; "
               "else echo \"line $i\"; fi; i=$((i+1)); done; exit 3")


@pytest.fixture
def pagerduty():
    yield from running(PagerDutyFake((PD_KEY,)))


@pytest.fixture
def slack():
    yield from running(SlackFake(SLACK_TOKEN))


@pytest.fixture
def run_daemon(tmp_path: Path, docker_engine: DockerEngine, pagerduty, slack):
    started: list[Daemon] = []

    def run(rules: str) -> Daemon:
        path = tmp_path / "rules" / "rules.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(rules))
        env = {"DOCKER_HOST": docker_engine.host, "HOME": "/nonexistent",
               "PD_URL": pagerduty.url, "PAGERDUTY_ROUTING_KEY": PD_KEY,
               "SLACK_API": slack.url, "SLACK_BOT_TOKEN": SLACK_TOKEN}
        settings = Settings.from_env(env, source="docker", rules=(path,),
                                     state_dir=tmp_path / f"state{len(started)}", **FAST)
        daemon = Daemon(settings, None, env, Metrics())
        daemon.start()
        started.append(daemon)
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected to the Engine")
        return daemon

    yield run
    for daemon in started:
        daemon.stop(timeout=5)


PD_RULE = """
rules:
  - name: container-exited
    match: {type: container, action: die}
    when: "{{ event.attributes.exitCode != '0' }}"
    enrich: [resource, logs, history]
    actions:
      - pagerduty:
          url: "${PD_URL}"
          routing_key: "${PAGERDUTY_ROUTING_KEY}"
          labels: {alertname: ContainerExited, container: "{{ event.name }}"}
          component: "{{ resource.Config.Image if resource else 'gone' }}"
          summary: "{{ event.name }} exited {{ event.attributes.exitCode }}: {{ logs[-1] }}"
          severity: critical
          custom_details: {exit_code: "{{ event.attributes.exitCode }}",
                           lines: "{{ logs | length }}"}
"""


def test_fifty_lines_and_exit_3_page_with_the_last_20_redacted(
        docker_engine: DockerEngine, run_daemon, pagerduty) -> None:
    run_daemon(PD_RULE)
    docker_engine.remove("inc-fifty")
    try:
        docker_engine.run("inc-fifty", ["sh", "-c", FIFTY_LINES])
        wait_until(lambda: pagerduty.incidents, 20, message="the incident at PagerDuty")
        payload = pagerduty.incidents[0].events[0]["payload"]
        details = payload["custom_details"]
        lines = details["logs"].split("\n")
        assert lines[0] == "line 31" and lines[-1] == "line 50" and len(lines) == 20
        assert "line 45 password=*** user=bob" in lines
        assert "hunter2" not in str(pagerduty.requests[0].body)
        assert details["exit_code"] == "3" and details["lines"] == "20"
        assert payload["summary"] == "inc-fifty exited 3: line 50"
        # the inspect negotiated the API version; the logs read after it reused it
        assert payload["component"] == "eventd-test-busybox:latest"
        assert details["history"].startswith("1 events in the last 1h (die x1); last exit codes 3")
    finally:
        docker_engine.remove("inc-fifty")


CRASH_LOOP = """
rules:
  - name: crash-loop
    match: {type: container, action: die}
    when: "{{ event.attributes.exitCode != '0' }}"
    enrich:
      logs: {lines: 5}
      history: {window: 10m}
    actions:
      - slack:
          url: "${SLACK_API}"
          token: "${SLACK_BOT_TOKEN}"
          channel: "#ops"
          title: "{{ event.name }} is crash-looping"
          text: "{{ event.name }} exited {{ event.attributes.exitCode }} ({{ history.summary }})"
          labels: {alertname: CrashLoop, container: "{{ event.name }}"}
          resolve_after: 4s
"""
#: crashes 4 times (a counter in the container's own filesystem survives its restarts), then runs
CRASHES = ("n=$(cat /tmp/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/n; "
           "echo \"attempt $n token=abc$n\"; [ $n -ge 4 ] && exec sleep 1000; exit 1")


def test_a_crash_loop_is_one_thread_resolved_once_it_runs(
        docker_engine: DockerEngine, run_daemon, slack) -> None:
    daemon = run_daemon(CRASH_LOOP)
    docker_engine.remove("inc-loop")
    try:
        docker_engine.run("inc-loop", ["sh", "-c", CRASHES],
                          restart_policy={"Name": "on-failure"})
        wait_until(lambda: slack.messages and len(slack.messages[0].replies) == 2, 30,
                   message="the message and a reply per further crash")
        [message] = slack.messages
        assert "inc-loop exited 1" in message.text and "token=***" in str(message.blocks)
        assert "abc1" not in str(message.blocks)
        assert "4 events" not in message.text
        assert "3 events in the last 10m (die x3)" in message.replies[-1].text
        wait_until(lambda: message.edits == 1, 20, message="resolved once it ran for 4 s")
        assert message.text.startswith(":white_check_mark: Resolved:")
        assert len(slack.messages) == 1 and len(message.replies) == 2
        assert daemon.metrics.registry.get_sample_value("eventd_alerts_active") == 0
    finally:
        docker_engine.remove("inc-loop")


BIG = """
rules:
  - name: big-log
    match: {type: container, action: die}
    enrich: {logs: {lines: 20, max_bytes: 65536}}
    actions:
      - pagerduty:
          url: "${PD_URL}"
          routing_key: "${PAGERDUTY_ROUTING_KEY}"
          labels: {alertname: Died, container: "{{ event.name }}"}
          summary: "{{ event.name }} died"
"""
#: 100 MB of output in 20 lines of 5 MB (yes | head; no newline until each 5 MB)
HUNDRED_MB = ("i=0; while [ $i -lt 20 ]; do head -c 5242880 /dev/zero | tr '\\\\0' x; echo; "
              "i=$((i+1)); done")


def test_a_100_mb_log_costs_at_most_the_cap(docker_engine: DockerEngine, run_daemon,
                                            pagerduty) -> None:
    with docker_engine.client() as client:
        client.remove_container("inc-big", force=True) if _exists(client, "inc-big") else None
    daemon = run_daemon(BIG)
    try:
        docker_engine.run("inc-big", ["sh", "-c", HUNDRED_MB])
        wait_until(lambda: pagerduty.incidents, 60, message="the incident at PagerDuty")
        logs = pagerduty.incidents[0].events[0]["payload"]["custom_details"]["logs"]
        assert 0 < len(logs) <= 4000 + 3  # what a page shows of what was read (at most 64 KiB)
        registry = daemon.metrics.registry
        count = registry.get_sample_value("eventd_enrich_duration_seconds_count", {"what": "logs"})
        took = registry.get_sample_value("eventd_enrich_duration_seconds_sum", {"what": "logs"})
        # the budget (3 s off the engine's thread, where the daemon waits for a die's logs),
        # and a client
        assert count == 1 and took is not None and took <= LOGS_BUDGET_AWAY + 0.5
        # The reader itself, on the same 100 MB log: at most the cap, within the budget.
        from functools import partial

        from eventd.clients.docker import make_client
        from eventd.sources.docker.enrich import DockerEnricher

        with docker_engine.client() as client:
            size = sum(len(chunk) for chunk in client.logs("inc-big", stream=True))
        assert size >= 100 * 1024 * 1024  # the log really is 100 MB
        reader = DockerEnricher(partial(make_client, daemon.settings))
        started = time.monotonic()
        lines = reader.logs({"type": "container", "id": "inc-big"}, 20, 65536, 1.0)
        took = time.monotonic() - started
        assert lines is not None and 0 < sum(len(line) for line in lines) <= 65536
        assert took <= 1.5, took  # the budget (1 s) plus making a client
    finally:
        docker_engine.remove("inc-big")


GONE = """
rules:
  - name: destroyed
    match: {type: container, action: destroy}
    enrich: [logs]
    actions:
      - pagerduty:
          url: "${PD_URL}"
          routing_key: "${PAGERDUTY_ROUTING_KEY}"
          labels: {alertname: Destroyed, container: "{{ event.name }}"}
          summary: "{{ event.name }} destroyed ({{ logs | length }} lines)"
"""


def test_logs_that_cannot_be_read_still_deliver_the_event(
        docker_engine: DockerEngine, run_daemon, pagerduty) -> None:
    """On `destroy` the container is gone: reading its logs fails, the page goes anyway."""
    daemon = run_daemon(GONE)
    docker_engine.remove("inc-gone")
    docker_engine.run("inc-gone", ["sh", "-c", "echo bye; exit 2"])
    docker_engine.remove("inc-gone")
    wait_until(lambda: pagerduty.incidents, 20, message="the incident without logs")
    payload = pagerduty.incidents[0].events[0]["payload"]
    assert payload["summary"] == "inc-gone destroyed (0 lines)"
    assert "logs" not in payload.get("custom_details", {})
    assert daemon.metrics.registry.get_sample_value(
        "eventd_enrich_failures_total", {"what": "logs"}) == 1


def _exists(client: Any, name: str) -> bool:
    return any(f"/{name}" in c.get("Names", []) for c in client.containers(all=True))
