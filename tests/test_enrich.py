"""Enrichment against the emulator: the object's REST view, cached per object, retried."""

from __future__ import annotations

import logging

import pytest

from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.sources.dockercloud.enrich import Enricher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rest(emulator):
    client = RestClient(emulator.rest_url, Credentials(header=emulator.auth_header, source="test"))
    yield client
    client.close()


def exit_container(emulator, name, code):
    """Stop a container with an exit code, as the world does when a process dies."""
    from eventd.emulator.world import exit_code_message

    world = emulator.world
    with world.lock:
        container = world.find("container", name)
        container.exit_code, container.exit_code_msg = code, exit_code_message(code)
        world.set_state(container, "Stopped")
    return [e for e in emulator.sent_events() if e["resource_uri"].endswith(
        f"/{container.uuid}/") and e["state"] == "Stopped"][-1]


def test_killed_versus_clean_exit(emulator, rest):
    enricher = Enricher(rest)
    killed = enricher.resource(exit_container(emulator, "web-1", 137))
    clean = enricher.resource(exit_container(emulator, "db-1", 0))
    assert killed["exit_code"] == 137 and killed["state"] == "Stopped"
    assert clean["exit_code"] == 0
    assert killed["exit_code_msg"] != clean["exit_code_msg"]


def test_cached_per_object_for_ttl_across_uri_forms(emulator, rest):
    clock = Clock()
    enricher = Enricher(rest, ttl=5.0, clock=clock)
    uuid = emulator.world.uuid("service", "web")
    namespaced = {"type": "service", "resource_uri": emulator.world.uri("service", "web")}
    plain = {"type": "service", "resource_uri": f"/api/app/v1/service/{uuid}/"}
    assert enricher.resource(namespaced)["uuid"] == uuid
    assert enricher.resource(plain)["uuid"] == uuid  # the same object: from the cache
    assert len(emulator.rest_calls()) == 1
    clock.now += 5.0
    enricher.resource(plain)
    assert len(emulator.rest_calls()) == 2


def test_action_events_are_resolved_on_the_audit_endpoint(emulator, rest):
    service = emulator.world.uri("service", "web")
    action_uri = rest.request("POST", f"{service}redeploy/").headers["X-DockerCloud-Action-URI"]
    uuid = action_uri.rstrip("/").rsplit("/", 1)[1]
    event = {"type": "action", "resource_uri": f"/api/app/v1/user/action/{uuid}/"}  # the docs' form
    assert Enricher(rest).resource(event)["uuid"] == uuid
    assert emulator.rest_calls()[-1].path == f"/api/audit/v1/action/{uuid}/"


def test_failures_are_retried_then_none_with_a_warning(emulator, rest, caplog):
    waits: list[float] = []
    enricher = Enricher(rest, retries=2, sleep=waits.append)
    event = {"type": "service", "resource_uri": emulator.world.uri("service", "web")}
    emulator.faults.fail_rest(503, count=2)
    assert enricher.resource(event)["name"] == "web"  # third try succeeds
    emulator.faults.fail_rest(503, count=3)
    other = {"type": "service", "resource_uri": emulator.world.uri("service", "db")}
    with caplog.at_level(logging.WARNING):
        assert enricher.resource(other) is None
    assert len(waits) == 4
    [record] = [r for r in caplog.records if r.name == "eventd.sources.dockercloud.enrich"]
    assert record.levelno == logging.WARNING and "HTTP 503" in record.getMessage()
    missing = {"type": "container", "resource_uri": "/api/app/v1/user/container/nope/"}
    assert enricher.resource(missing) is None  # 404: not retried
    assert len(waits) == 4
    assert emulator.auth_header not in caplog.text
