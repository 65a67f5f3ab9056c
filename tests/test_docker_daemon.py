"""eventd --source docker end to end, on a real Docker Engine with real containers.

The sample rules of rules/docker/ run as shipped; what is asserted is what a user sees: what
arrived at the webhook, what the Engine did to the container, what /metrics says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eventd.daemon import Daemon
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from tests.docker_engine import DockerEngine, SocketProxy, engine_workdir
from tests.receiver import WebhookReceiver
from tests.waiting import wait_until

RULES = Path(__file__).resolve().parent.parent / "rules" / "docker"
FAST = {"backoff_initial": 0.05, "backoff_max": 0.3, "healthy_after": 1.0,
        "shutdown_timeout": 5.0, "ping_interval": 1.0, "pong_timeout": 2.0}
#: a container command that stops at once on SIGTERM (so restarts take no stop timeout)
SERVE = "trap 'exit 0' TERM; sleep 1000 & wait"


@pytest.fixture
def run_daemon(tmp_path: Path, webhook_receiver: WebhookReceiver):
    started: list[Daemon] = []

    def run(host: str, *rules: Path, **overrides) -> Daemon:
        env = {"DOCKER_HOST": host, "HOME": "/nonexistent",
               "ALERT_WEBHOOK_URL": f"{webhook_receiver.url}/alerts",
               "ALERTMANAGER_URL": f"{webhook_receiver.url}/am"}
        options = dict(FAST)
        options.update(overrides)
        settings = Settings.from_env(env, source="docker", rules=rules or (RULES,),
                                     state_dir=tmp_path / f"state{len(started)}", **options)
        daemon = Daemon(settings, None, env, Metrics())
        daemon.start()
        started.append(daemon)
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected to the Engine")
        return daemon

    yield run
    for daemon in started:
        daemon.stop(timeout=5)


def write_rules(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def posts(receiver: WebhookReceiver, path: str, **fields: str) -> list[dict]:
    found = []
    for request in receiver.requests:
        if request.path == path:
            body = request.json()
            if all(body.get(k) == v for k, v in fields.items()):
                found.append(body)
    return found


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


def test_exit_code_3_reaches_the_webhook(docker_engine: DockerEngine, run_daemon,
                                         webhook_receiver: WebhookReceiver, tmp_path: Path):
    daemon = run_daemon(docker_engine.host, record=tmp_path / "events.jsonl")
    try:
        docker_engine.run("e2e-exit3", ["sh", "-c", "exit 3"],
                          labels={"com.docker.compose.service": "worker"})
        docker_engine.run("e2e-exit0", ["true"])
        body = wait_until(lambda: posts(webhook_receiver, "/alerts", container="e2e-exit3"), 10,
                          message="the die webhook")[0]
        assert body["exitCode"] == "3"
        assert body["service"] == "worker"
        assert body["text"] == "container e2e-exit3 exited with code 3"
        assert body["image"] == "eventd-test-busybox:latest"
        assert daemon.wait_idle(5)
        assert posts(webhook_receiver, "/alerts", container="e2e-exit0") == []
        assert metric(daemon, "eventd_rule_matches_total", rule="docker-container-died") == 1
        assert metric(daemon, "eventd_source_info", source="docker") == 1
        assert metric(daemon, "eventd_events_received_total", type="container") >= 3
    finally:
        docker_engine.remove("e2e-exit3", "e2e-exit0")
    # --record keeps the events as rules saw them: `eventd replay` runs them again.
    result = subprocess.run(
        [sys.executable, "-m", "eventd", "replay", str(tmp_path / "events.jsonl"), "--rules",
         str(RULES), "--dry-run"], capture_output=True, text=True, timeout=30,
        env={"PATH": os.environ.get("PATH", ""), "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/x"})
    assert result.returncode == 0, result.stderr
    assert "docker-container-died" in result.stdout and "e2e-exit3" in result.stdout


def restarts(engine: DockerEngine, name: str) -> int:
    """How many times the Engine restarted the container (its restart events)."""
    import time

    with engine.client() as client:
        events = client.events(since=int(time.time()) - 600, until=time.time(), decode=True,
                               filters={"container": name, "event": "restart"})
        return sum(1 for _ in events)


def test_an_unhealthy_labelled_container_is_restarted_once(docker_engine: DockerEngine,
                                                           run_daemon, tmp_path: Path,
                                                           webhook_receiver: WebhookReceiver):
    marker = write_rules(tmp_path / "own", """
        rules:
          - name: restart-seen
            match: {type: container, action: restart, caused_by_eventd: true}
            actions: [{log: {message: "{{ event.name }} restarted by eventd"}}]
    """)
    daemon = run_daemon(docker_engine.host, RULES, marker)
    health = {"test": ["CMD-SHELL", "[ -f /tmp/healthy ]"], "interval": 300_000_000,
              "retries": 1, "start_period": 0}
    # Unhealthy until its second start: the restart heals it. Stopped by the restart, it exits
    # 143 as many programs do on SIGTERM: eventd's own restart must not alert as a crash.
    command = ["sh", "-c", "[ -f /tmp/once ] && touch /tmp/healthy; touch /tmp/once; "
               "trap 'exit 143' TERM; sleep 1000 & wait"]
    try:
        docker_engine.run("e2e-heal", command, labels={"eventd.restart": "true"}, healthcheck=health)
        docker_engine.run("e2e-nolabel", ["sh", "-c", SERVE], healthcheck=health)
        with docker_engine.client() as client:
            wait_until(lambda: client.inspect_container("e2e-heal")["State"]["Health"]["Status"]
                       == "healthy", 20, message="healthy after eventd's restart")
            wait_until(lambda: client.inspect_container("e2e-nolabel")["State"]["Health"]["Status"]
                       == "unhealthy", 10)
        assert daemon.wait_idle(5)
        assert restarts(docker_engine, "e2e-heal") == 1
        assert restarts(docker_engine, "e2e-nolabel") == 0
        assert metric(daemon, "eventd_rule_matches_total", rule="restart-seen") == 1, \
            "the restart event eventd caused carries caused_by_eventd: true"
        assert metric(daemon, "eventd_actions_total", kind="docker", outcome="success") == 1
        assert metric(daemon, "eventd_rule_matches_total", rule="docker-container-died") == 0
        assert posts(webhook_receiver, "/alerts", container="e2e-heal") == []
    finally:
        docker_engine.remove("e2e-heal", "e2e-nolabel")


def test_the_guard_holds_a_crash_looping_container_to_the_limit(docker_engine: DockerEngine,
                                                                run_daemon):
    daemon = run_daemon(docker_engine.host)
    health = {"test": ["CMD-SHELL", "false"], "interval": 200_000_000, "retries": 1}
    try:
        docker_engine.run("e2e-loop", ["sh", "-c", SERVE], labels={"eventd.restart": "true"},
                          healthcheck=health)
        # Unhealthy again after every restart: the rule matches each time (the Engine reports
        # a health status when it changes), the limiter lets 3 restarts through, then says no.
        wait_until(lambda: metric(daemon, "eventd_actions_total", kind="docker",
                                  outcome="skipped") >= 1, 30, message="the limit reached")
        assert daemon.wait_idle(5)
        assert metric(daemon, "eventd_rule_matches_total", rule="docker-restart-unhealthy") == 4
        assert restarts(docker_engine, "e2e-loop") == 3
        assert metric(daemon, "eventd_actions_total", kind="docker", outcome="success") == 3
    finally:
        docker_engine.remove("e2e-loop")


def test_eventd_rides_out_a_lost_link_and_an_engine_restart(tmp_path: Path, run_daemon,
                                                            webhook_receiver: WebhookReceiver):
    gap_rules = write_rules(tmp_path / "gap", f"""
        rules:
          - name: gap
            match: {{type: eventd, state: connected, gap_seconds: {{exists: true}}}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/gap", json: {{gap: "{{{{ event.gap_seconds }}}}"}}}}
    """)
    with engine_workdir("dke") as workdir, DockerEngine(workdir) as engine:
        proxy = SocketProxy(engine.socket, workdir / "p.sock")
        try:
            daemon = run_daemon(proxy.host, RULES, gap_rules)
            # Only eventd's connection goes down; what happens meanwhile is replayed by since=.
            proxy.cut()
            wait_until(lambda: not daemon.consumer.connected, 10, message="the cut noticed")
            engine.run("e2e-during-cut", ["sh", "-c", "exit 4"])
            proxy.restore()
            body = wait_until(lambda: posts(webhook_receiver, "/alerts", container="e2e-during-cut"),
                              15, message="the die that happened during the cut")[0]
            assert body["exitCode"] == "4"
            assert daemon.wait_idle(5)
            assert [r for r in webhook_receiver.requests if r.path == "/gap"] == [], \
                "a gap the Engine replayed is no gap"
            # The Engine restarts under eventd: eventd reconnects by itself and says there was a gap.
            engine.restart()
            wait_until(lambda: [r for r in webhook_receiver.requests if r.path == "/gap"], 20,
                       message="a gap event after the Engine restarted")
            wait_until(lambda: daemon.consumer.connected, 10)
            engine.run("e2e-after-restart", ["sh", "-c", "exit 5"])
            wait_until(lambda: posts(webhook_receiver, "/alerts", container="e2e-after-restart"),
                       10, message="events after the restart")
            lost = sum(metric(daemon, "eventd_stream_reconnects_total", reason=reason)
                       for reason in ("dropped", "pong_timeout"))
            assert lost >= 2
        finally:
            daemon.stop(timeout=5)  # before the proxy goes: no reconnect attempts to a dead socket
            proxy.close()


def test_an_oom_kill_becomes_an_alertmanager_alert(docker_engine: DockerEngine, run_daemon,
                                                  webhook_receiver: WebhookReceiver):
    daemon = run_daemon(docker_engine.host)
    try:
        # 64 MiB buffer in a 16 MiB container: the kernel's OOM killer ends it.
        docker_engine.run("e2e-oom", ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                          mem_limit="16m", memswap_limit="16m")

        def alerts() -> list[dict]:
            return [alert for request in webhook_receiver.requests
                    if request.path == "/am/api/v2/alerts" for alert in request.json()
                    if alert["labels"].get("container") == "e2e-oom"]

        alert = wait_until(alerts, 30, message="the OOM alert")[0]
        assert alert["labels"]["alertname"] == "ContainerOOMKilled"
        assert alert["labels"]["image"] == "eventd-test-busybox:latest"
        assert alert["annotations"]["summary"] == "container e2e-oom ran out of memory"
        died = wait_until(lambda: posts(webhook_receiver, "/alerts", container="e2e-oom"), 15)
        assert died[0]["exitCode"] == "137"  # SIGKILL
        assert daemon.wait_idle(5)
    finally:
        docker_engine.remove("e2e-oom")
