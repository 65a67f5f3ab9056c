"""`enrich: logs` waited for off the engine's thread, on a real Docker Engine: a container
whose logs are slow does not hold back the webhooks of containers that died after it, and a
kill -9 while its logs are awaited loses nothing (the next start delivers it, the logs read
then). The slow logs are the Engine's answers held by a socket proxy in front of it."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from eventd.daemon import Daemon
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from tests.docker_engine import IMAGE, DockerEngine, SocketProxy
from tests.external import free_port
from tests.receiver import WebhookReceiver
from tests.test_docker_enrich import FIFTY, LOGGED, exited
from tests.waiting import wait_until

TREE = Path(__file__).resolve().parent.parent  # the eventd under test, for its subprocesses


@pytest.fixture
def proxy(docker_engine: DockerEngine) -> Iterator[SocketProxy]:
    """A proxy in front of the Engine (a short path: unix socket paths are short)."""
    where = Path(tempfile.mkdtemp(prefix="lw", dir="/tmp"))
    proxy = SocketProxy(docker_engine.socket, where / "p.sock")
    try:
        yield proxy
    finally:
        proxy.release()
        proxy.close()
        shutil.rmtree(where, ignore_errors=True)


def _created(engine: DockerEngine, name: str, command: list[str]) -> str:
    """A container created, not started: its id (to hold its logs before it runs)."""
    with engine.client() as client:
        config = client.create_host_config(network_mode="none")
        return str(client.create_container(IMAGE, command, name=name,
                                           host_config=config)["Id"])


def _start(engine: DockerEngine, name: str) -> None:
    with engine.client() as client:
        client.start(name)


def _start_together(engine: DockerEngine, names: list[str]) -> None:
    """Start these created containers at once, as a burst."""
    threads = [threading.Thread(target=_start, args=(engine, name)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def _died(engine: DockerEngine, names: list[str]) -> dict[str, float]:
    """When each container ended, on this process's monotonic clock (the receiver's)."""
    offset = time.time() - time.monotonic()
    with engine.client() as client:
        return {name: datetime.datetime.fromisoformat(
            client.inspect_container(name)["State"]["FinishedAt"][:26] + "+00:00").timestamp()
            - offset for name in names}


def _daemon(rules: Path, host: str, receiver: WebhookReceiver, state: Path) -> Daemon:
    env = {"DOCKER_HOST": host, "HOME": "/nonexistent",
           "ALERT_WEBHOOK_URL": f"{receiver.url}/died"}
    settings = Settings.from_env(env, source="docker", rules=(rules,), state_dir=state,
                                 shutdown_timeout=5.0)
    daemon = Daemon(settings, None, env, Metrics())
    daemon.start()
    return daemon


def test_containers_with_slow_logs_do_not_hold_back_the_others(
        docker_engine: DockerEngine, proxy: SocketProxy, webhook_receiver: WebhookReceiver,
        tmp_path: Path):
    """3 containers die whose logs the Engine holds (its answers never come), then 15 more
    while those are awaited: each slow die waits out the 1 s budget and goes with no logs,
    and the 15 are delivered meanwhile, each with its own logs, well within a second of its
    die. (Before, the engine thread waited for the slow ones' logs one after the other, 3 s,
    and every later die waited behind them.)"""
    rules = tmp_path / "rules.yaml"
    rules.write_text(LOGGED)
    daemon = _daemon(rules, proxy.host, webhook_receiver, tmp_path / "state")
    slow = [f"lw-slow-{i}" for i in range(3)]
    fast = [f"lw-fast-{i}" for i in range(15)]
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected")
        for name in slow:
            proxy.hold(f"/containers/{_created(docker_engine, name, ['sh', '-c', 'exit 3'])}"
                       f"/logs".encode())
        for name in fast:
            _created(docker_engine, name, ["sh", "-c", FIFTY])
        _start_together(docker_engine, slow)
        wait_until(lambda: all(exited(docker_engine, name) for name in slow), 10,
                   message="the slow ones exited")
        _start_together(docker_engine, fast)
        wait_until(lambda: len(webhook_receiver.requests) >= 18, 30, message="18 webhooks")
        assert daemon.wait_idle(5)
        requests_ = webhook_receiver.requests
        bodies = {r.json()["name"]: r.json() for r in requests_}
        assert len(requests_) == len(bodies) == 18
        assert all(bodies[name] == {"name": name, "last": "", "lines": "0"} for name in slow)
        assert all(bodies[name] == {"name": name, "last": "line 50", "lines": "20"}
                   for name in fast)
        arrived = {r.json()["name"]: r.at for r in requests_}
        died = _died(docker_engine, fast)
        late = {name: round(arrived[name] - died[name], 3) for name in fast}
        assert max(late.values()) < 1.5, late  # before: 2 s and more for the first ones
        registry = daemon.metrics.registry
        assert registry.get_sample_value("eventd_enrich_logs_waited_total") >= 3
        assert registry.get_sample_value("eventd_enrich_logs_waiting") == 0
        assert registry.get_sample_value("eventd_enrich_failures_total", {"what": "logs"}) == 3
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove(*slow, *fast)


def _metric(port: int, name: str) -> float | None:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
    except requests.RequestException:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _eventd(rules: Path, host: str, receiver: WebhookReceiver, state: Path,
            port: int) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(state.parent), "DOCKER_HOST": host,
           "ALERT_WEBHOOK_URL": f"{receiver.url}/died", "PYTHONPATH": str(TREE)}
    return subprocess.Popen(
        [sys.executable, "-m", "eventd", "run", "--source", "docker", "--rules", str(rules),
         "--state-dir", str(state), "--metrics-addr", f"127.0.0.1:{port}"],
        env=env, cwd=state.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_9_while_held(engine: DockerEngine, proxy: SocketProxy, receiver: WebhookReceiver,
                       tmp_path: Path, rules_text: str, name: str, command: str,
                       held: tuple[str, int], expected: dict[str, str]) -> None:
    """eventd killed (SIGKILL) once the container `name` died and its die is set aside for
    an answer the Engine holds (`held`: the request path's end, and how many such requests
    to wait for); the Engine answers again, eventd starts again: one webhook, `expected`."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text)
    state = tmp_path / "state"
    port = free_port()
    process = _eventd(rules, proxy.host, receiver, state, port)
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: _metric(port, "eventd_stream_connected") == 1.0, 20,
                   message="eventd connected")
        cid = _created(engine, name, ["sh", "-c", command])
        proxy.hold(f"/containers/{cid}/{held[0]}".encode())
        _start(engine, name)
        wait_until(lambda: proxy.held >= held[1], 20, message=f"the die waits for {held[0]}")
        wait_until(lambda: _metric(port, "eventd_enrich_logs_waiting") == 1.0, 20,
                   message="the die set aside (kept in the state directory)")
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
        assert receiver.requests == []
        proxy.release()  # the Engine answers again
        port = free_port()
        second = _eventd(rules, proxy.host, receiver, state, port)
        wait_until(lambda: len(receiver.requests) >= 1, 30,
                   message="the webhook after the restart")
        assert [r.json() for r in receiver.requests] == [expected]
        wait_until(lambda: _metric(port, "eventd_enrich_logs_waiting") == 0.0, 10,
                   message="nothing waits")
    finally:
        for running in (process, second):
            if running is not None and running.poll() is None:
                running.terminate()
                running.communicate(timeout=15)
        engine.remove(name)


def test_a_kill_9_while_logs_are_awaited_loses_no_action(
        docker_engine: DockerEngine, proxy: SocketProxy, webhook_receiver: WebhookReceiver,
        tmp_path: Path):
    """eventd is killed (SIGKILL) while a die's logs are awaited (the Engine holds them): the
    event was kept in the state directory before the wait, so the next start delivers its
    webhook, with the logs read then (the container is still there). Before, the event was
    only in memory: lost, and the Engine's stream resumes from the new start. (Held: the
    follow request at start, then the read at die, the follower's stream not ended.)"""
    _kill_9_while_held(docker_engine, proxy, webhook_receiver, tmp_path, LOGGED, "lw-killed",
                       FIFTY, ("logs", 2), {"name": "lw-killed", "last": "line 50",
                                            "lines": "20"})

INSPECTED = """
rules:
  - name: crashed
    match: {type: container, action: die, attributes.exitCode: {not: "0"}}
    enrich: resource
    actions:
      - webhook:
          url: "${ALERT_WEBHOOK_URL}"
          json: {name: "{{ event.name }}", restarts: "{{ resource.RestartCount }}",
                 code: "{{ resource.State.ExitCode }}"}
"""


def test_a_container_whose_inspect_is_slow_does_not_hold_back_the_others(
        docker_engine: DockerEngine, proxy: SocketProxy, webhook_receiver: WebhookReceiver,
        tmp_path: Path):
    """`enrich: resource`: one container dies whose inspect the Engine holds, then 8 more: the
    8 are delivered, each with its own resource, while the first's inspect is still held;
    it is delivered once the Engine answers. (Before, the engine thread waited for that
    inspect, and every later die waited behind it: none came while it was held.)"""
    rules = tmp_path / "rules.yaml"
    rules.write_text(INSPECTED)
    daemon = _daemon(rules, proxy.host, webhook_receiver, tmp_path / "state")
    slow = "li-slow"
    fast = [f"li-fast-{i}" for i in range(8)]
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected")
        held = f"/containers/{_created(docker_engine, slow, ['sh', '-c', 'exit 3'])}/json"
        proxy.hold(held.encode())
        for name in fast:
            _created(docker_engine, name, ["sh", "-c", "exit 4"])
        _start(docker_engine, slow)
        wait_until(lambda: proxy.held >= 1, 10, message="the slow one's inspect is held")
        held_at = time.monotonic()
        _start_together(docker_engine, fast)
        wait_until(lambda: len(webhook_receiver.requests) >= len(fast), 20,
                   message="the others' webhooks while the slow inspect is held")
        assert {r.json()["name"]: r.json() for r in webhook_receiver.requests} == {
            name: {"name": name, "restarts": "0", "code": "4"} for name in fast}
        # Well before the held inspect gives up (API_TIMEOUT, 10 s): before, they came only
        # once it had, all at once.
        late = [round(r.at - held_at, 2) for r in webhook_receiver.requests]
        assert max(late) < 8.0, late
        assert daemon.engine.waiting == 1
        proxy.release(held.encode())
        wait_until(lambda: len(webhook_receiver.requests) == len(fast) + 1, 20,
                   message="the slow one's webhook once its inspect is answered")
        assert webhook_receiver.requests[-1].json() == {"name": slow, "restarts": "0",
                                                        "code": "3"}
        assert daemon.wait_idle(5)
        registry = daemon.metrics.registry
        assert registry.get_sample_value("eventd_enrich_logs_waiting") == 0
        assert daemon.store.parked_list() == []  # forgotten once its webhook was spooled
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove(slow, *fast)


def test_a_kill_9_while_an_inspect_is_awaited_loses_no_action(
        docker_engine: DockerEngine, proxy: SocketProxy, webhook_receiver: WebhookReceiver,
        tmp_path: Path):
    """eventd is killed (SIGKILL) while a die's inspect is held by the Engine: the event was
    kept in the state directory before the wait, so the next start delivers its webhook,
    with the container inspected then. (Before, the engine thread waited for the inspect
    with the event only in memory: lost.)"""
    _kill_9_while_held(docker_engine, proxy, webhook_receiver, tmp_path, INSPECTED,
                       "li-killed", "exit 5", ("json", 1),
                       {"name": "li-killed", "restarts": "0", "code": "5"})

VERSIONED = """
rules:
  - name: crashed
    match: {type: container, action: die, attributes.exitCode: {not: "@CODE@"}}
    enrich: {logs: {lines: 20}, resource: true}
    actions:
      - webhook:
          url: "${ALERT_WEBHOOK_URL}"
          json: {name: "{{ event.name }}", last: "{{ logs[-1] if logs else '' }}",
                 code: "{{ resource.State.ExitCode }}", rules: "@VERSION@"}
"""


def _versioned(version: str, code: str) -> str:
    """A rule with `enrich: logs` and `resource`, its match on exit codes other than `code`
    (another match: the followers start anew on reload), its webhook saying which version
    of the rules sent it."""
    return VERSIONED.replace("@CODE@", code).replace("@VERSION@", version)


def test_a_reload_while_a_die_is_set_aside_delivers_it_once_by_the_rules_it_matched(
        docker_engine: DockerEngine, proxy: SocketProxy, webhook_receiver: WebhookReceiver,
        tmp_path: Path):
    """A die waits for its logs (the Engine holds them) when the rules are reloaded with
    another match (every follower stops and starts anew) and another webhook: a die after
    the reload goes by the new rules at once; the one set aside is delivered once its logs
    come, once, by the rules it matched when it came (the rule set changes between two
    events, never in the middle of one), with its logs and resource; nothing stays kept."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(_versioned("1", "0"))
    daemon = _daemon(rules, proxy.host, webhook_receiver, tmp_path / "state")
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected")
        held = f"/containers/{_created(docker_engine, 'lr-held', ['sh', '-c', FIFTY])}/logs"
        proxy.hold(held.encode())
        _created(docker_engine, "lr-after", ["sh", "-c", FIFTY])
        _start(docker_engine, "lr-held")
        wait_until(lambda: daemon.engine.waiting == 1, 20, message="the die set aside")
        assert [key for key, _ in daemon.store.parked_list()] != []
        rules.write_text(_versioned("2", "9"))
        assert daemon.reload()
        _start(docker_engine, "lr-after")
        wait_until(lambda: len(webhook_receiver.requests) >= 1, 20,
                   message="the die after the reload, by the new rules")
        assert [r.json() for r in webhook_receiver.requests] == [
            {"name": "lr-after", "last": "line 50", "code": "3", "rules": "2"}]
        assert daemon.engine.waiting == 1
        proxy.release()
        wait_until(lambda: len(webhook_receiver.requests) >= 2, 20,
                   message="the die set aside, once its logs came")
        assert daemon.wait_idle(5)
        bodies = sorted((r.json() for r in webhook_receiver.requests), key=str)
        assert bodies == sorted([
            {"name": "lr-after", "last": "line 50", "code": "3", "rules": "2"},
            {"name": "lr-held", "last": "line 50", "code": "3", "rules": "1"}], key=str)
        assert daemon.engine.waiting == 0
        assert daemon.store.parked_list() == []
        assert daemon.metrics.registry.get_sample_value("eventd_enrich_logs_waiting") == 0
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove("lr-held", "lr-after")
