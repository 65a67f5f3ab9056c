"""The docker action against a real Engine: each call, the guards, and how failures are sorted."""

from __future__ import annotations

import pytest

from eventd.actions import resolve
from eventd.actions.docker import CALLS, DockerAction, container_uri
from eventd.errors import ActionSkipped, PermanentActionError, RetryableActionError
from eventd.guards.calls import TargetLimiter
from eventd.guards.loop import LoopGuard
from eventd.settings import Settings
from tests.actions import attempt, make_context, make_job
from tests.docker_engine import DockerEngine
from tests.waiting import wait_until

SERVE = "trap 'exit 0' TERM; sleep 1000 & wait"


def action(host: str, **kwargs) -> DockerAction:
    context = make_context(**kwargs)
    context.settings = Settings(docker_host=host)
    return DockerAction(context)


def state(engine: DockerEngine, name: str) -> dict:
    with engine.client() as client:
        return client.inspect_container(name)["State"]


@pytest.mark.parametrize("options, problem", [
    ({"call": "reboot", "target": "x"}, "call must be one of"),
    ({"call": "restart"}, "target"),
    ({"call": "restart", "target": "x", "signal": "SIGKILL"}, "signal does not apply to restart"),
    ({"call": "kill", "target": "x", "timeout": 3}, "timeout does not apply to kill"),
    ({"call": "stop", "target": "x", "timeout": "soon"}, "timeout must be a number"),
])
def test_options_are_checked_when_rules_load(options, problem):
    assert any(problem in p for p in DockerAction.validate(options))


def test_templates_pass_the_load_time_check():
    assert DockerAction.validate({"call": "{{ 'restart' }}", "target": "{{ event.id }}"}) == []
    assert DockerAction.validate({"call": "restart", "target": "x", "timeout": "{{ 3 }}"}) == []


def test_it_is_registered_durable_and_acts_on_objects():
    kind = resolve("docker")
    assert kind is DockerAction and kind.durable and kind.acts_on_objects and not kind.per_event
    assert set(CALLS) == {"restart", "start", "stop", "kill", "pause", "unpause"}


def test_each_call_does_what_it_says(docker_engine: DockerEngine):
    docker = action(docker_engine.host, limiter=TargetLimiter(max_calls=10))
    cid = docker_engine.run("act-calls", ["sh", "-c", SERVE])
    try:
        def run(**options):
            return attempt(docker, make_job(docker, {"target": "act-calls", **options}))

        assert run(call="pause") == f"pause act-calls ({cid[:12]})"
        assert state(docker_engine, "act-calls")["Paused"] is True
        run(call="unpause")
        assert state(docker_engine, "act-calls")["Paused"] is False
        run(call="stop", timeout=5)
        assert state(docker_engine, "act-calls")["Running"] is False
        run(call="start")
        assert state(docker_engine, "act-calls")["Running"] is True
        started = state(docker_engine, "act-calls")["StartedAt"]
        run(call="restart", timeout=5)
        assert state(docker_engine, "act-calls")["StartedAt"] != started
        run(call="kill", signal="SIGTERM")
        wait_until(lambda: not state(docker_engine, "act-calls")["Running"], 5)
        assert state(docker_engine, "act-calls")["ExitCode"] == 0  # the trap ran: SIGTERM it was
    finally:
        docker.close()
        docker_engine.remove("act-calls")


def test_the_guards_see_the_full_container_id(docker_engine: DockerEngine):
    guard, limiter = LoopGuard(), TargetLimiter(max_calls=2, per=600)
    docker = action(docker_engine.host, loop_guard=guard, limiter=limiter)
    cid = docker_engine.run("act-guard", ["sh", "-c", SERVE])
    try:
        for _ in range(2):  # by a short id, as a user might write it
            attempt(docker, make_job(docker, {"call": "restart", "target": cid[:12], "timeout": 1}))
        with pytest.raises(ActionSkipped) as skipped:
            attempt(docker, make_job(docker, {"call": "restart", "target": "act-guard"}))
        assert skipped.value.reason == "rate_limited"
        event = {"type": "container", "action": "restart", "resource_uri": container_uri(cid)}
        assert guard.is_self_caused(event)
        other = {"type": "container", "action": "restart", "resource_uri": container_uri("f" * 64)}
        assert not guard.is_self_caused(other)
    finally:
        docker.close()
        docker_engine.remove("act-guard")


def test_an_unknown_container_is_final(docker_engine: DockerEngine):
    docker = action(docker_engine.host)
    try:
        with pytest.raises(PermanentActionError, match="HTTP 404"):
            attempt(docker, make_job(docker, {"call": "restart", "target": "no-such-container"}))
    finally:
        docker.close()


def test_a_call_the_engine_refuses_is_final(docker_engine: DockerEngine):
    docker = action(docker_engine.host)
    docker_engine.run("act-stopped", ["true"])
    try:
        wait_until(lambda: not state(docker_engine, "act-stopped")["Running"], 5)
        with pytest.raises(PermanentActionError, match="HTTP 409"):  # not running: nothing to pause
            attempt(docker, make_job(docker, {"call": "pause", "target": "act-stopped"}))
    finally:
        docker.close()
        docker_engine.remove("act-stopped")


def test_an_engine_that_is_away_is_retried_later(tmp_path):
    docker = action(f"unix://{tmp_path}/none.sock")
    with pytest.raises(RetryableActionError, match="no such socket"):
        attempt(docker, make_job(docker, {"call": "restart", "target": "x"}))
