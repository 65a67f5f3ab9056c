"""Hostile events against every shipped rule: every request made passes the gate's policy.

One pipeline for the module, as `eventd run` builds it: every rule of rules/ and rules/docker/,
the emulator as the REST host, a real Redis as the store, a real dockerd for the docker action,
a webhook receiver as ALERT_WEBHOOK_URL and ALERTMANAGER_URL. Each example is one event shaped
to match a shipped rule, with any field replaced by anything (any JSON type, path tricks,
encodings, another namespace, another container's id). What is checked is what the servers
saw, with their own reading of the policy (not the gate's code): the emulator's calls, the
receiver's requests, the Engine's containers; and that nothing in eventd failed unexpectedly.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.clients.dockercloud.auth import Credentials
from eventd.emulator import Emulator
from eventd.emulator.world import (
    DEFAULT_CONTAINER_UUIDS,
    DEFAULT_NODE_UUIDS,
    DEFAULT_SERVICE_UUIDS,
    DEFAULT_STACK_UUID,
)
from eventd.errors import MalformedEvent
from eventd.events import Received, parse_event
from eventd.ops.metrics import Metrics
from eventd.pipeline import Pipeline, build_pipeline, rules_environ
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from tests.docker_engine import DockerEngine
from tests.receiver import WebhookReceiver
from tests.redis_server import delete_cluster, shared_redis_url

ROOT = Path(__file__).resolve().parents[2]
SERVE = "trap 'exit 0' TERM; sleep 1000 & wait"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: the one call the shipped rules may make (redeploy-stopped), in the user's own namespace or
#: none: the servers' reading of the policy, written independently of the gate
REDEPLOY = re.compile(rf"/api/app/v1/(?:user/)?service/{UUID}/redeploy/")
#: what enrichment and action polling may read
READ = re.compile(rf"/api/(?:(?:app|infra)/v1/(?:[A-Za-z0-9._-]+/)?"
                  rf"(?:stack|service|container|node|nodecluster)|audit/v1/action)/{UUID}/")
RECEIVER_PATHS = {"/alerts", "/am/api/v2/alerts"}


@dataclass
class World:
    """What the property runs against."""

    pipeline: Pipeline
    emulator: Emulator
    receiver: WebhookReceiver
    engine: DockerEngine
    victim: str  # a running container nobody's rule names
    started: str  # its StartedAt


@pytest.fixture(scope="module")
def world(docker_engine: DockerEngine) -> Iterator[World]:
    redis_url = shared_redis_url()
    cluster = f"test-fuzz-gate-{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-gate-"))
    rules = workdir / "rules"
    rules.mkdir()
    for path in [*sorted((ROOT / "rules").glob("*.yaml")),
                 *sorted((ROOT / "rules" / "docker").glob("*.yaml"))]:
        shutil.copy(path, rules / path.name)
    victim = docker_engine.run("fuzz-gate-victim", ["sh", "-c", SERVE])
    _victim_id[:] = [victim]  # before the first example is drawn
    with docker_engine.client() as client:
        started = client.inspect_container(victim)["State"]["StartedAt"]
    with Emulator(tick=0.02) as emu, WebhookReceiver() as receiver:
        environ = {"ALERT_WEBHOOK_URL": f"{receiver.url}/alerts",
                   "ALERTMANAGER_URL": f"{receiver.url}/am", "CRASH_DIGEST_WAIT": "0.2s"}
        settings_ = Settings(rest_host=emu.rest_url + "/", store=redis_url, cluster=cluster,
                             state_dir=workdir / "state", rules=(rules,),
                             docker_host=docker_engine.host, max_event_age=3600.0)
        ruleset = load_rules(settings_.rules, rules_environ(settings_, environ))
        names = {rule.name for rule in ruleset.rules}
        assert {"redeploy-stopped", "docker-restart-unhealthy", "container-crashed",
                "action-failed", "node-unreachable", "docker-container-died"} <= names
        pipeline = build_pipeline(settings_, metrics=Metrics(), environ=environ, ruleset=ruleset,
                                  credentials=Credentials(header=emu.auth_header, source="test",
                                                          user="user"))
        pipeline.start()
        try:
            yield World(pipeline, emu, receiver, docker_engine, victim, started)
        finally:
            pipeline.close(5.0)
            docker_engine.remove(victim)
            delete_cluster(redis_url, cluster)
            shutil.rmtree(workdir, ignore_errors=True)


# -- hostile events --------------------------------------------------------------------------------
WEB = f"/api/app/v1/user/service/{DEFAULT_SERVICE_UUIDS['web']}/"
WEB_1 = f"/api/app/v1/user/container/{DEFAULT_CONTAINER_UUIDS['web-1']}/"
NODE = f"/api/infra/v1/user/node/{DEFAULT_NODE_UUIDS[0]}/"
STACK = f"/api/app/v1/user/stack/{DEFAULT_STACK_UUID}/"
_victim_id: list[str] = []  # filled by the test: the Engine's id is known only at run time


def _victim(part: str) -> str:
    full = _victim_id[0] if _victim_id else "0" * 64
    return {"full": full, "short": full[:12], "name": "fuzz-gate-victim"}[part]


FRAGMENTS = ["../", "..", "%2e%2e/", "%2F", "\\", "?", "?x=", "#", "@", ":", "/", "//", "%00",
             "\x00", "\n", "\u2028", "é", "otherorg", "user", "api", "infra/v1/", "node/",
             NODE, STACK, WEB, "docker-upgrade/", "redeploy/", "{{ 7*7 }}", "{% raw %}",
             "http://127.0.0.1:1/", DEFAULT_NODE_UUIDS[0], DEFAULT_SERVICE_UUIDS["db"]]
tricky = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6).map("".join)
victim_names = st.sampled_from(["full", "short", "name"]).map(_victim)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=30) | tricky,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
def _uri(kind: str, namespace: str, uuid: str) -> str:
    api = "infra" if kind in ("node", "nodecluster") else "app"
    return f"/api/{api}/v1/{namespace}{kind}/{uuid}/"


#: exact resource URIs of any namespace and object: they pass every parser, not the policy
resource_uris = st.builds(
    _uri, st.sampled_from(["service", "node", "stack", "container", "nodecluster"]),
    st.sampled_from(["", "user/", "otherorg/", "a.b/", "user-x/"]),
    st.sampled_from([*DEFAULT_SERVICE_UUIDS.values(), DEFAULT_NODE_UUIDS[0]]) | st.uuids().map(str))
#: the parent a redeploy is made on: another service, in any namespace, each time (the loop
#: guard and the throttle would otherwise stop the rule after the first)
services = st.builds(_uri, st.just("service"), st.sampled_from(["otherorg/", "", "user/", "a.b/"]),
                     st.uuids().map(str))
hostile = st.one_of(tricky, victim_names, json_values, resource_uris,
                    st.builds(lambda uri, tail: uri + tail, st.sampled_from([WEB, NODE, STACK, WEB_1]),
                              tricky))


def bases() -> list[dict[str, Any]]:
    """One event per shipped rule that acts, as that rule matches it."""
    return [
        {"type": "container", "action": "update", "state": "Stopped", "resource_uri": WEB_1,
         "parents": [WEB, STACK]},
        {"type": "node", "action": "update", "state": "Unreachable", "resource_uri": NODE,
         "parents": []},
        {"type": "action", "action": "update", "state": "Failed",
         "resource_uri": "/api/audit/v1/action/7eaf7fff-882c-4f3d-9a8f-a22317ac00ce/",
         "parents": [WEB]},
        {"type": "container", "action": "health_status", "state": "unhealthy",
         "id": _victim("full"), "name": "fuzz-gate-victim",
         "attributes": {"eventd.restart": "true", "name": "fuzz-gate-victim"}},
        {"type": "container", "action": "die", "id": _victim("full"),
         "name": "fuzz-gate-victim", "attributes": {"exitCode": "1"}},
        {"type": "container", "action": "oom", "id": _victim("short"), "name": "x"},
        {"type": "eventd", "state": "disconnected"},
    ]


FIELDS = ["namespace", "resource_uri", "parents", "id", "name", "state", "attributes", "type",
          "action", "uuid", "datetime", "caused_by_eventd", "extra"]


@st.composite
def hostile_events(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(st.sampled_from([0, 0, 0, *range(len(bases()))]))  # redeploys: the REST policy
    event = dict(bases()[base])
    if base == 0:
        event["parents"] = draw(st.lists(services | hostile, min_size=1, max_size=3))
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        if key == "parents":
            event[key] = draw(st.lists(hostile | resource_uris, max_size=3) | hostile)
        elif key == "attributes":
            event[key] = draw(st.dictionaries(
                st.sampled_from(["eventd.restart", "exitCode", "name", "image"]) | st.text(max_size=5),
                hostile, max_size=3))
        else:
            event[key] = draw(hostile)
    event.setdefault("uuid", secrets.token_hex(16))
    event.setdefault("datetime", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return event


# -- the property ----------------------------------------------------------------------------------
def check_servers(world: World) -> None:
    """What each server saw passes the policy, read by the server's side."""
    for call in world.emulator.rest_calls():
        if call.method == "GET":
            assert READ.fullmatch(call.path) and not call.query, (call.path, call.query)
        else:
            assert call.method == "POST" and REDEPLOY.fullmatch(call.path) and not call.query, \
                (call.method, call.path, call.query)
            assert call.headers.get("Authorization") == world.emulator.auth_header
    for request in world.receiver.requests:
        assert request.method == "POST" and request.path in RECEIVER_PATHS, request.path
    with world.engine.client() as client:
        state = client.inspect_container(world.victim)["State"]
    assert state["Running"] and not state["Paused"] and state["StartedAt"] == world.started


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(event=hostile_events())
def test_every_request_made_for_a_hostile_event_passes_the_gate(world: World, event, internal_errors):
    try:
        parsed = parse_event(orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS))
    except (MalformedEvent, orjson.JSONEncodeError):
        return
    pipeline = world.pipeline
    assert pipeline.engine is not None
    pipeline.engine.process_batch([Received(parsed, time.time())])
    assert pipeline.dispatcher.wait_idle(15), "every accepted action delivered or dead-lettered"
    assert internal_errors == [], internal_errors
    check_servers(world)
    # Still alive: eventd's own event still reaches the receiver (engine, lanes, webhook).
    count = len(world.receiver.requests)
    pipeline.engine.process_batch([Received(
        {"type": "eventd", "state": "disconnected", "uuid": secrets.token_hex(16),
         "datetime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, time.time(),
        internal=True)])
    assert pipeline.dispatcher.wait_idle(15)
    assert len(world.receiver.requests) > count
