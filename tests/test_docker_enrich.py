"""`enrich: resource` on the docker source: inspects on a real Docker Engine, started early by
the reader (prefetch) for the events a rule with `enrich: resource` matches, shared with the
engine thread, on clients kept open."""

from __future__ import annotations

import textwrap
import threading
from functools import partial
from pathlib import Path

import pytest

from eventd.clients.docker import make_client
from eventd.daemon import Daemon
from eventd.events import Received
from eventd.ops.metrics import Metrics
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.sources.docker.enrich import DockerEnricher, Prefetching
from tests.docker_engine import DockerEngine
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


def test_containers_dying_together_are_each_inspected_once(
        docker_engine: DockerEngine, webhook_receiver: WebhookReceiver, tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(ENRICHED)
    env = {"DOCKER_HOST": docker_engine.host, "HOME": "/nonexistent",
           "ALERT_WEBHOOK_URL": f"{webhook_receiver.url}/died"}
    settings = Settings.from_env(env, source="docker", rules=(rules,),
                                 state_dir=tmp_path / "state", shutdown_timeout=5.0)
    daemon = Daemon(settings, None, env, Metrics())
    daemon.start()
    names = [f"enr-burst-{i}" for i in range(4)] + ["enr-ok"]
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected")
        threads = [threading.Thread(target=docker_engine.run, args=(name, ["sh", "-c", "exit 3"]))
                   for name in names[:4]]
        threads.append(threading.Thread(target=docker_engine.run, args=("enr-ok", ["true"])))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
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
