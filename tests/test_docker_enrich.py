"""`enrich: resource` and `enrich: logs` on the docker source: inspects and log reads on a real
Docker Engine, started early by the reader (prefetch) for the events a rule that enriches
matches, taken by the engine thread, on clients kept open; log reads bounded in number and
age, and within their caps whatever the container wrote."""

from __future__ import annotations

import logging
import shutil
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from eventd.attachments import LOGS_BUDGET
from eventd.clients.docker import make_client
from eventd.daemon import Daemon
from eventd.events import Received
from eventd.ops.metrics import Metrics
from eventd.ruleset.enrichment import parse_enrich
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.sources.docker.enrich import MAX_LOG_READS, DockerEnricher, Prefetching
from tests.docker_engine import DockerEngine, SocketProxy
from tests.receiver import WebhookReceiver
from tests.waiting import wait_until


def exited(engine: DockerEngine, name: str) -> bool:
    with engine.client() as client:
        return client.inspect_container(name)["State"]["Status"] == "exited"


def enricher_for(engine: DockerEngine) -> DockerEnricher:
    return DockerEnricher(partial(make_client, Settings(docker_host=engine.host)))


def test_a_prefetched_inspect_is_the_one_the_engine_thread_gets(docker_engine: DockerEngine):
    cid = docker_engine.run("enr-prefetch", ["sh", "-c", "exit 3"])
    enricher = enricher_for(docker_engine)
    try:
        wait_until(lambda: exited(docker_engine, "enr-prefetch"), 10, message="exited")
        event = {"type": "container", "id": cid, "uuid": "u1"}
        enricher.prefetch(event)
        enricher.prefetch(event)  # already under way: not asked twice
        resource = enricher.resource(event)
        assert resource is not None and resource["State"]["ExitCode"] == 3
        assert resource["Name"] == "/enr-prefetch"
        assert (enricher.lookups, enricher.prefetched) == (1, 1)
        assert enricher.resource(event) is resource  # cached for ttl: no other Engine call
        enricher.prefetch(event)  # cached: nothing to start
        assert (enricher.lookups, enricher.prefetched) == (1, 1)
        # An event eventd cannot inspect asks nothing; a gone container gives None.
        assert enricher.resource({"type": "daemon", "id": "x"}) is None
        enricher.prefetch({"type": "container", "id": ""})
        assert enricher.resource({"type": "container", "id": "no-such-container"}) is None
        assert (enricher.lookups, enricher.prefetched) == (2, 1)
    finally:
        enricher.close()
        docker_engine.remove("enr-prefetch")
    # Closed: no more prefetches; an inspect still works, on a client closed right after it.
    enricher.prefetch({"type": "container", "id": cid, "uuid": "u2"})
    assert enricher.prefetched == 1


HOSTILE_IDS = ("../../images/busybox", "x/../../info", "..", "a?b=1", "a#b", "a%2F..%2Finfo",
               "/abs", "a//b", "a\nb", "-flag", "x" * 300)


@pytest.mark.parametrize("object_id", HOSTILE_IDS)
def test_an_id_that_would_move_the_inspect_elsewhere_asks_the_engine_nothing(tmp_path: Path,
                                                                          object_id: str):
    """docker-py quotes path arguments keeping `/`: an event's id with `..` segments would
    turn an inspect into a GET of another Engine endpoint. No call is made for such an id."""
    enricher = DockerEnricher(partial(make_client, Settings(
        docker_host=f"unix://{tmp_path}/no.sock")))
    try:
        event = {"type": "container", "id": object_id, "uuid": "u"}
        enricher.prefetch(event)
        assert enricher.resource(event) is None
        assert (enricher.lookups, enricher.prefetched) == (0, 0)
        # a plain id and an image reference are still asked for
        assert enricher.resource({"type": "image", "id": "registry:5000/ns/img:1.2"}) is None
        assert enricher.lookups == 1
    finally:
        enricher.close()


def test_an_engine_that_is_not_there_gives_none(tmp_path: Path):
    enricher = DockerEnricher(partial(make_client, Settings(
        docker_host=f"unix://{tmp_path}/no.sock")))
    try:
        event = {"type": "container", "id": "abc", "uuid": "u"}
        enricher.prefetch(event)
        assert enricher.resource(event) is None
        assert enricher.lookups == 1
    finally:
        enricher.close()


def test_the_reader_prefetches_only_for_rules_that_enrich(tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent("""
        rules:
          - name: crashed
            match: {type: container, action: die, attributes.exitCode: {not: "0"}}
            enrich: resource
            actions: [{log: {message: "x"}}]
          - name: any-start
            match: {type: container, action: start}
            actions: [{log: {message: "y"}}]
    """))
    ruleset = load_rules((rules,), {})
    asked: list[str] = []
    passed: list[list[Received]] = []
    sink = Prefetching(lambda event: asked.append(event["id"]), lambda: ruleset, passed.append)

    def received(action: str, code: str, cid: str, internal: bool = False) -> Received:
        event = {"type": "container", "action": action, "id": cid,
                 "attributes": {"exitCode": code}}
        return Received(event, 0.0, None, internal=internal)

    batch = [received("die", "1", "a"), received("die", "0", "b"), received("start", "", "c"),
             received("die", "2", "d", internal=True)]
    sink(batch)
    assert asked == ["a"] and passed == [batch]


ENRICHED = """
rules:
  - name: crashed
    match: {type: container, action: die, attributes.exitCode: {not: "0"}}
    enrich: resource
    when: "{{ resource is not none and resource.State.ExitCode == 3 }}"
    actions:
      - webhook:
          url: "${ALERT_WEBHOOK_URL}"
          json: {name: "{{ event.name }}", restarts: "{{ resource.RestartCount }}",
                 image: "{{ resource.Config.Image }}"}
"""


def _run_together(docker_engine: DockerEngine, runs: list[tuple[str, list[str]]]) -> None:
    """Run these containers (name, command) at once, as a burst, and wait for them to end."""
    threads = [threading.Thread(target=docker_engine.run, args=run) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def _started_daemon(rules_text: str, docker_engine: DockerEngine,
                    webhook_receiver: WebhookReceiver, tmp_path: Path) -> Daemon:
    """eventd following `docker_engine` with these rules, its webhooks to the receiver."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text)
    env = {"DOCKER_HOST": docker_engine.host, "HOME": "/nonexistent",
           "ALERT_WEBHOOK_URL": f"{webhook_receiver.url}/died"}
    settings = Settings.from_env(env, source="docker", rules=(rules,),
                                 state_dir=tmp_path / "state", shutdown_timeout=5.0)
    daemon = Daemon(settings, None, env, Metrics())
    daemon.start()
    return daemon


def test_containers_dying_together_are_each_inspected_once(
        docker_engine: DockerEngine, webhook_receiver: WebhookReceiver, tmp_path: Path):
    daemon = _started_daemon(ENRICHED, docker_engine, webhook_receiver, tmp_path)
    names = [f"enr-burst-{i}" for i in range(4)] + ["enr-ok"]
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected")
        _run_together(docker_engine, [(name, ["sh", "-c", "exit 3"]) for name in names[:4]]
                      + [("enr-ok", ["true"])])
        wait_until(lambda: len(webhook_receiver.requests) >= 4, 20, message="4 webhooks")
        assert daemon.wait_idle(5)
        bodies = sorted((r.json() for r in webhook_receiver.requests), key=lambda b: b["name"])
        assert bodies == [{"name": name, "restarts": "0", "image": "eventd-test-busybox:latest"}
                          for name in names[:4]]
        enricher = daemon.pipeline.enricher
        # One inspect per crashed container, each started by the reader; none for the
        # container that exited 0 (no rule that enriches matches its die).
        assert (enricher.lookups, enricher.prefetched) == (4, 4)
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove(*names)


# --- enrich: logs, read early -----------------------------------------------------------------

FIFTY = "i=1; while [ $i -le 50 ]; do echo \"line $i\"; i=$((i+1)); done; exit 3"


def test_the_logs_read_starts_before_the_engine_thread_asks(docker_engine: DockerEngine,
                                                            caplog: pytest.LogCaptureFixture):
    cid = docker_engine.run("enr-logs", ["sh", "-c", FIFTY])
    enricher = enricher_for(docker_engine)
    caplog.set_level(logging.DEBUG, logger="eventd.sources.docker.enrich")
    try:
        wait_until(lambda: exited(docker_engine, "enr-logs"), 10, message="exited")
        event = {"type": "container", "id": cid, "uuid": "u-logs"}
        enricher.prefetch(event, resource=False, logs=[(20, 16384)])
        enricher.prefetch(event, resource=False, logs=[(20, 16384)])  # under way: once
        # The read ran on the pool before anyone asked for it.
        wait_until(lambda: "read logs of container" in caplog.text, 10, message="read early")
        assert (enricher.log_reads, enricher.logs_prefetched, enricher.lookups) == (1, 1, 0)
        lines = enricher.logs(event, 20, 16384, LOGS_BUDGET)
        assert lines == [f"line {i}" for i in range(31, 51)]
        assert (enricher.log_reads, enricher.logs_taken) == (1, 1)  # taken, not read again
        assert "for event u-logs in" in caplog.text and "(prefetched)" in caplog.text
        # Taken means dropped: asked again, it is read again, on the engine thread.
        assert enricher.logs(event, 20, 16384, LOGS_BUDGET) == lines
        assert enricher.log_reads == 2 and "(read now)" in caplog.text
        # Other caps are another read; `enrich: resource` and logs from one prefetch call.
        enricher.prefetch(event, logs=[(5, 16384)])
        wait_until(lambda: enricher.log_reads == 3, 10, message="read early")
        assert enricher.logs(event, 5, 16384, LOGS_BUDGET) == lines[-5:]
        resource = enricher.resource(event)
        assert resource is not None and resource["State"]["ExitCode"] == 3
        assert (enricher.log_reads, enricher.logs_taken, enricher.prefetched) == (3, 2, 1)
        # The same container's next die (another event) is read again, not given this read.
        again = {"type": "container", "id": cid, "uuid": "u-again"}
        enricher.prefetch(again, resource=False, logs=[(20, 16384)])
        enricher.prefetch(event, resource=False, logs=[(20, 16384)])
        wait_until(lambda: enricher.log_reads == 5, 10, message="both read early")
        assert enricher.logs(again, 20, 16384, LOGS_BUDGET) == lines
        assert enricher.logs(event, 20, 16384, LOGS_BUDGET) == lines
        assert (enricher.log_reads, enricher.logs_taken, enricher.logs_prefetched) == (5, 4, 4)
    finally:
        enricher.close()
        docker_engine.remove("enr-logs")


#: (name, what the container writes): one 2 MB line without a newline; 300 KB of random bytes
#: (no TTY: the Engine frames them, and frame headers may appear inside them); a name full of
#: dots and dashes (all a name may hold) read by that name
HOSTILE_LOGS = (("enr-huge-line", "head -c 2000000 /dev/zero | tr '\\0' x; exit 1"),
                ("enr-binary", "head -c 300000 /dev/urandom; exit 1"),
                ("enr-..-..--..", "echo '../../info %2F..%2Fversion'; echo 'password=hunter2'; "
                                  "exit 1"))


@pytest.mark.parametrize(("name", "script"), HOSTILE_LOGS, ids=[n for n, _ in HOSTILE_LOGS])
def test_hostile_logs_are_read_within_the_caps(docker_engine: DockerEngine, name: str,
                                               script: str):
    docker_engine.run(name, ["sh", "-c", script])
    enricher = enricher_for(docker_engine)
    enrichment = parse_enrich({"logs": {"lines": 20, "max_bytes": 4096,
                                        "redact": ["password=\\S+"]}})
    spec = enrichment.logs if enrichment is not None else None
    assert spec is not None
    try:
        wait_until(lambda: exited(docker_engine, name), 20, message="exited")
        event = {"type": "container", "id": name, "uuid": "u-" + name}
        enricher.prefetch(event, resource=False, logs=[(spec.lines, spec.max_bytes)])
        wait_until(lambda: enricher.log_reads == 1, 10, message="read early")
        started = time.monotonic()
        raw = enricher.logs(event, spec.lines, spec.max_bytes, LOGS_BUDGET)
        assert time.monotonic() - started <= LOGS_BUDGET + 0.5
        assert raw is not None and 0 < len(raw) <= spec.lines
        assert sum(len(line) for line in raw) <= spec.max_bytes  # decoded: at most the bytes
        assert (enricher.log_reads, enricher.logs_taken) == (1, 1)
        shown = spec.redact(raw)
        assert len(shown) <= spec.lines and all("hunter2" not in line for line in shown)
    finally:
        enricher.close()
        docker_engine.remove(name)


@pytest.mark.parametrize("object_id", HOSTILE_IDS)
def test_an_id_that_would_move_the_logs_read_elsewhere_asks_the_engine_nothing(
        tmp_path: Path, object_id: str):
    enricher = DockerEnricher(partial(make_client, Settings(
        docker_host=f"unix://{tmp_path}/no.sock")))
    try:
        event = {"type": "container", "id": object_id, "uuid": "u"}
        enricher.prefetch(event, resource=False, logs=[(20, 16384)])
        with pytest.raises(ValueError, match="not a container id"):
            enricher.logs(event, 20, 16384, LOGS_BUDGET)
        assert (enricher.log_reads, enricher.logs_prefetched) == (0, 0)
    finally:
        enricher.close()


def test_a_burst_holds_a_bounded_number_of_reads_each_dropped_after_ttl(tmp_path: Path):
    """1,000 dies: at most MAX_LOG_READS reads held; those nobody takes go after `ttl`."""
    now = [100.0]
    enricher = DockerEnricher(partial(make_client, Settings(
        docker_host=f"unix://{tmp_path}/no.sock")), ttl=5.0, clock=lambda: now[0])
    try:
        for i in range(1000):
            enricher.prefetch({"type": "container", "id": f"c{i}", "uuid": f"u{i}"},
                              resource=False, logs=[(20, 16384)])
        assert enricher.logs_prefetched == MAX_LOG_READS
        assert enricher.logs_skipped == 1000 - MAX_LOG_READS
        # Each read ran (and failed at once: no Engine there); one taken is dropped.
        wait_until(lambda: enricher.log_reads == MAX_LOG_READS, 10, message="reads ran")
        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
            enricher.logs({"type": "container", "id": "c0", "uuid": "u0"}, 20, 16384,
                          LOGS_BUDGET)
        assert enricher.logs_taken == 1
        now[0] += 5.0  # ttl later, the next prefetch drops every read nobody took
        enricher.prefetch({"type": "container", "id": "late", "uuid": "u"}, resource=False,
                          logs=[(20, 16384)])
        assert enricher.logs_dropped == MAX_LOG_READS - 1
        assert enricher.logs_prefetched == MAX_LOG_READS + 1
    finally:
        enricher.close()
    assert enricher.logs_dropped == MAX_LOG_READS  # closing drops the last one too


def _rules(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return load_rules((path,), {})


def test_a_reload_changes_what_is_prefetched(tmp_path: Path):
    before = _rules(tmp_path, """
        rules:
          - name: crash-logs
            match: {type: container, action: die, attributes.exitCode: {not: "0"}}
            enrich: {logs: {lines: 20}, history: {window: 1h}}
            actions: [{log: {message: "x"}}]
          - name: crash-logs-too
            match: {type: container, action: die}
            enrich: {logs: {lines: 20}}
            actions: [{log: {message: "same caps: one read"}}]
    """)
    after = _rules(tmp_path, """
        rules:
          - name: kill-logs
            match: {type: container, action: kill}
            enrich: [resource, logs]
            actions: [{log: {message: "x"}}]
          - name: crash-history
            match: {type: container, action: die}
            enrich: [history]
            actions: [{log: {message: "no read"}}]
    """)
    in_force = [before]
    asked: list[tuple[str, bool, list[tuple[int, int]]]] = []

    def prefetch(event: dict[str, Any], resource: bool = True,
                 logs: Sequence[tuple[int, int]] = ()) -> None:
        asked.append((event["id"], resource, list(logs)))

    sink = Prefetching(prefetch, lambda: in_force[0], lambda batch: None)

    def batch() -> list[Received]:
        return [Received({"type": "container", "action": action, "id": cid,
                          "attributes": {"exitCode": "1"}}, 0.0, None)
                for action, cid in (("die", "a"), ("kill", "b"), ("start", "c"))]

    sink(batch())
    assert asked == [("a", False, [(20, 16384)])]
    asked.clear()
    in_force[0] = after  # what a reload does: the engine's rules are another object
    sink(batch())
    assert asked == [("b", True, [(20, 16384)])]
    in_force[0] = _rules(tmp_path, "rules: []")
    asked.clear()
    sink(batch())
    assert asked == []


LOGGED = """
rules:
  - name: crashed
    match: {type: container, action: die, attributes.exitCode: {not: "0"}}
    enrich: {logs: {lines: 20}, history: {window: 1h}}
    actions:
      - webhook:
          url: "${ALERT_WEBHOOK_URL}"
          json: {name: "{{ event.name }}", last: "{{ logs[-1] if logs else '' }}",
                 lines: "{{ logs | length }}"}
"""


def test_containers_dying_together_have_their_logs_read_early(
        docker_engine: DockerEngine, webhook_receiver: WebhookReceiver, tmp_path: Path):
    daemon = _started_daemon(LOGGED, docker_engine, webhook_receiver, tmp_path)
    names = [f"enr-logs-burst-{i}" for i in range(4)]
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected")
        _run_together(docker_engine, [(name, ["sh", "-c", FIFTY]) for name in names])
        wait_until(lambda: len(webhook_receiver.requests) >= 4, 20, message="4 webhooks")
        assert daemon.wait_idle(5)
        bodies = sorted((r.json() for r in webhook_receiver.requests), key=lambda b: b["name"])
        assert bodies == [{"name": name, "last": "line 50", "lines": "20"} for name in names]
        enricher = daemon.pipeline.enricher
        # Each container's logs had once: the tail its follower held since its start, or (a
        # follower that came too late for a container this short) a read started by the
        # reader (run by the pool, or by the engine thread for a read still queued when it
        # asked: under load); no inspect.
        taken = enricher.followers.counts["taken"]
        assert (enricher.log_reads + taken, enricher.logs_prefetched + taken,
                enricher.lookups) == (4, 4, 0)
        assert enricher.logs_taken <= 4 and enricher.logs_reread == 0
        assert daemon.metrics.registry.get_sample_value(
            "eventd_enrich_duration_seconds_count", {"what": "logs"}) == 4
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove(*names)


def test_an_early_read_that_failed_is_read_again_within_the_budget(docker_engine: DockerEngine):
    """A read started before the engine thread asks may fail where a read made when it asks
    would not (the Engine slow with the container then, the link cut): what is left of the
    engine thread's budget goes to one more read. A container that is gone is not asked twice."""
    cid = docker_engine.run("enr-reread", ["sh", "-c", FIFTY])
    where = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))
    proxy = SocketProxy(docker_engine.socket, where / "p.sock")
    enricher = DockerEnricher(partial(make_client, Settings(docker_host=proxy.host)))
    try:
        wait_until(lambda: exited(docker_engine, "enr-reread"), 10, message="exited")
        event = {"type": "container", "id": cid, "uuid": "u-reread"}
        lines = enricher.logs(event, 20, 16384, LOGS_BUDGET)  # a client, through the proxy
        assert lines == [f"line {i}" for i in range(31, 51)]
        proxy.cut()
        enricher.prefetch(event, resource=False, logs=[(20, 16384)])
        wait_until(lambda: enricher.log_reads == 2 and all(
            future.done() for _, future in enricher._log_reads.values()), 10,
            message="the early read failed")
        proxy.restore()
        assert enricher.logs(event, 20, 16384, LOGS_BUDGET) == lines
        assert (enricher.log_reads, enricher.logs_taken, enricher.logs_reread) == (3, 1, 1)
        gone = {"type": "container", "id": "enr-no-such-container", "uuid": "u-gone"}
        enricher.prefetch(gone, resource=False, logs=[(20, 16384)])
        with pytest.raises(docker.errors.NotFound):
            enricher.logs(gone, 20, 16384, LOGS_BUDGET)
        assert (enricher.log_reads, enricher.logs_reread) == (4, 1)
    finally:
        enricher.close()
        proxy.close()
        shutil.rmtree(where, ignore_errors=True)
        docker_engine.remove("enr-reread")
