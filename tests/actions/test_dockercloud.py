"""The dockercloud action against the emulator: exact REST calls, waiting, guards."""

from __future__ import annotations

import threading

import pytest

from eventd.actions.base import FollowUp
from eventd.actions.dockercloud import DockerCloudAction
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.delivery.dispatcher import Dispatcher
from eventd.errors import GateRefused, PermanentActionError
from eventd.guards.calls import TargetLimiter
from eventd.guards.loop import LoopGuard
from eventd.ops.metrics import Metrics
from eventd.sources.dockercloud.action_waiter import ActionWaiter
from eventd.stores.sqlite import SqliteStore
from tests.actions import attempt, make_context, make_job, sample
from tests.waiting import wait_until


@pytest.fixture
def rest(emulator):
    client = RestClient(emulator.rest_url, Credentials(header=emulator.auth_header, source="test"))
    yield client
    client.close()


@pytest.fixture
def action(metrics, rest):
    context = make_context(metrics, rest=rest, poll_interval=0.05, loop_guard=LoopGuard())
    yield DockerCloudAction(context)
    context.stopping.set()


def calls(emulator):
    return [(c.method, c.path, dict(c.query)) for c in emulator.rest_calls()]


def run_to_end(action, job):
    """One attempt, and the follow-up the dispatcher would run beside the REST lane."""
    result = attempt(action, job)
    if isinstance(result, FollowUp):
        assert result.progress["action_uri"].startswith("/api/audit/v1/action/")
        return result.follow(action.context.stopping)
    return result


def test_redeploy_makes_exactly_the_documented_call(emulator, action):
    service = emulator.world.uri("service", "web")
    result = attempt(action, make_job(action, {"call": "redeploy", "target": service,
                                          "reuse_volumes": False}))
    [call] = emulator.rest_calls()
    assert (call.method, call.path, dict(call.query)) == \
        ("POST", f"{service}redeploy/", {"reuse_volumes": "false"})
    assert call.headers["Authorization"] == emulator.auth_header
    assert call.headers["Accept"] == "application/json"
    assert "Content-Type" not in call.headers
    assert call.status == 202
    assert "/api/audit/v1/action/" in result


def test_redeploy_without_reuse_volumes_sends_no_query_and_target_gets_a_slash(emulator, action):
    service = emulator.world.uri("service", "web")
    run_to_end(action, make_job(action, {"call": "redeploy", "target": service.rstrip("/"),
                                         "wait": True}))
    attempt(action, make_job(action, {"call": "redeploy", "target": service, "reuse_volumes": True}))
    posts = [c for c in calls(emulator) if c[0] == "POST"]
    assert posts == [("POST", f"{service}redeploy/", {})] * 2


def test_scale_is_patch_then_post_scale(emulator, action):
    service = emulator.world.uri("service", "web")
    attempt(action, make_job(action, {"call": "scale", "target": service, "containers": 3}))
    recorded = emulator.rest_calls()
    assert [(c.method, c.path) for c in recorded] == [("PATCH", service), ("POST", f"{service}scale/")]
    assert recorded[0].json == {"target_num_containers": 3}
    assert recorded[0].headers["Content-Type"] == "application/json"


def test_terminate_start_stop_and_raw_calls(emulator, action):
    container = emulator.world.uri("container", "db-1")
    stack = emulator.world.uri("stack", "demo")
    attempt(action, make_job(action, {"call": "stop", "target": container}))
    attempt(action, make_job(action, {"method": "GET", "path": stack}))
    wait_until(lambda: emulator.world.get("container", emulator.world.uuid("container", "db-1"))
               ["state"] == "Stopped", 5, message="db-1 stopped: only then may it be terminated")
    attempt(action, make_job(action, {"call": "terminate", "target": container}))
    assert calls(emulator) == [("POST", f"{container}stop/", {}), ("GET", stack, {}),
                               ("DELETE", container, {})]


def test_un_namespaced_target_is_used_as_given(emulator, action):
    uuid = emulator.world.uuid("service", "web")
    attempt(action, make_job(action, {"call": "stop", "target": f"/api/app/v1/service/{uuid}"}))
    assert calls(emulator) == [("POST", f"/api/app/v1/service/{uuid}/stop/", {})]


def test_wait_follows_the_action_to_success_by_polling(emulator, action):
    service = emulator.world.uri("service", "web")
    result = run_to_end(action, make_job(action, {"call": "redeploy", "target": service,
                                                   "wait": True}))
    assert result.endswith("Success")
    polls = [c for c in emulator.rest_calls() if c.path.startswith("/api/audit/v1/action/")]
    assert polls and all(c.method == "GET" for c in polls)


def test_wait_follows_the_action_through_stream_events(emulator, action):
    waiter = ActionWaiter()
    action.context.action_waiter = waiter
    action.poll_interval = 1.0  # with a waiter, a poll only after 5 s without the event
    done = threading.Event()

    def feed():  # what the engine does with every `action` event of the stream
        seen = 0
        while not done.wait(0.01):
            events = emulator.sent_events()
            for event in events[seen:]:
                if event.get("type") == "action":
                    waiter.observe(event)
            seen = len(events)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        service = emulator.world.uri("service", "web")
        result = run_to_end(action, make_job(action, {"call": "redeploy", "target": service,
                                                       "wait": True}))
    finally:
        done.set()
        feeder.join(2)
    assert result.endswith("Success")
    assert calls(emulator) == [("POST", f"{service}redeploy/", {})]  # no polling needed


def test_failed_action_is_permanent(emulator, action):
    emulator.faults.fail_actions(1)
    service = emulator.world.uri("service", "web")
    with pytest.raises(PermanentActionError, match="ended Failed"):
        run_to_end(action, make_job(action, {"call": "redeploy", "target": service, "wait": True}))


def test_loop_guard_marks_the_redeploys_own_events(emulator, action):
    guard = action.loop_guard
    assert isinstance(guard, LoopGuard)
    service = emulator.world.uri("service", "web")
    db_event = emulator.emit_event(type="service", resource_uri=emulator.world.uri("service", "db"))
    before = len(emulator.sent_events())
    run_to_end(action, make_job(action, {"call": "redeploy", "target": service, "wait": True}))
    caused = emulator.sent_events()[before:]
    assert {e["type"] for e in caused} >= {"action", "service", "container"}
    assert all(guard.is_self_caused(e) for e in caused)
    assert any(e["type"] == "container" and e["state"] == "Running" for e in caused)
    assert not guard.is_self_caused(db_event)


def test_rest_5xx_is_retried_by_the_dispatcher(emulator, action, metrics, tmp_path):
    emulator.faults.fail_rest(503, count=2)
    store = SqliteStore(tmp_path)
    waits: list[float] = []
    dispatcher = Dispatcher(action.context, store, {"dockercloud": action}, sleep=waits.append)
    dispatcher.start()
    try:
        service = emulator.world.uri("service", "web")
        dispatcher.submit(make_job(action, {"call": "redeploy", "target": service}))
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
        store.close()
    assert [c.status for c in emulator.rest_calls()] == [503, 503, 202]
    assert len(waits) == 2
    assert sample(metrics, "eventd_actions_total", kind="dockercloud", outcome="success") == 1


def test_rate_limit_skips_the_fourth_call_within_the_window(emulator, metrics, rest, tmp_path,
                                                            caplog):
    context = make_context(metrics, rest=rest, limiter=TargetLimiter(max_calls=3, per=600.0))
    action = DockerCloudAction(context)
    store = SqliteStore(tmp_path)
    dispatcher = Dispatcher(context, store, {"dockercloud": action})
    dispatcher.start()
    service = emulator.world.uri("service", "web")
    try:
        for _ in range(5):
            dispatcher.submit(make_job(action, {"method": "GET", "path": service}))
        other = emulator.world.uri("service", "db")
        dispatcher.submit(make_job(action, {"method": "GET", "path": other}))
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
        store.close()
    assert [c.path for c in emulator.rest_calls()] == [service] * 3 + [other]
    assert sample(metrics, "eventd_actions_total", kind="dockercloud", outcome="skipped") == 2
    assert sample(metrics, "eventd_actions_total", kind="dockercloud", outcome="success") == 4
    assert len([r for r in caplog.records if "rate limit" in r.getMessage()]) == 1


def test_validate():
    v = DockerCloudAction.validate
    assert v({"call": "redeploy", "target": "/api/app/v1/service/x/"}) == []
    assert v({"method": "POST", "path": "/api/app/v1/service/x/start/"}) == []
    assert any("scale needs containers" in p for p in v({"call": "scale", "target": "/x/y/"}))
    assert any("call must be one of" in p for p in v({"call": "reboot", "target": "/x/y/"}))
    assert any("target" in p for p in v({"call": "stop"}))
    assert v({}) != []


def test_queue_is_shared(action):
    assert action.target({"call": "stop", "target": "/api/app/v1/service/x/"}) == "dockercloud"


def test_without_a_rest_client_it_fails_permanently(metrics):
    action = DockerCloudAction(make_context(metrics))
    with pytest.raises(PermanentActionError):
        attempt(action, make_job(action, {"call": "stop", "target": "/api/app/v1/service/x/"}))




SVC = "09cbcf8d-a727-40d9-b420-c8e18b7fa55b"
NODE = "fc1a5bb9-17f5-4819-b667-8c7cd819e949"


@pytest.mark.parametrize("options, problem", [
    ({"call": "redeploy", "target": f"/api/app/v1/acme/stack/{SVC}/stop/?/service/{SVC}/"},
     "the call takes no query"),
    ({"call": "redeploy", "target": f"/api/app/v1/acme/service/{SVC}/../../stack/{SVC}/"},
     "is not a path of the Docker Cloud API"),
    ({"call": "redeploy", "target": f"/api/app/v1/acme/service/{SVC}/#"}, "url holds a '#'"),
    ({"call": "redeploy", "target": "/api/app/v1/acme/service/web/"},
     "is not a path of the Docker Cloud API"),
    ({"call": "redeploy", "target": f"/api/infra/v1/acme/node/{NODE}/"},
     "redeploy does not apply to a node"),
    ({"call": "health-check", "target": f"/api/app/v1/service/{SVC}/"},
     "health-check does not apply to a service"),
    ({"call": "stop", "target": f"/api/infra/v1/service/{SVC}/"}, "a service lives under /api/app/v1/"),
    ({"method": "POST", "path": f"/api/app/v1/service/{SVC}/../stack/{SVC}/stop/"},
     "is not a path of the Docker Cloud API"),
    ({"method": "POST", "path": f"/api/app/v1/service/{SVC}/start/?x=1"}, "takes no query"),
    ({"method": "POST", "path": f"/api/app/v1/service/{SVC}/start/#"}, "url holds a '#'"),
    ({"method": "POST", "path": "http://elsewhere/api/"}, "is not a path of the Docker Cloud API"),
    ({"method": "DELETE", "path": f"/api/app/v1/otherorg/service/{SVC}/"},
     "namespace 'otherorg' is not one eventd serves (user)"),
])
def test_rendered_targets_that_are_not_exact_resource_uris_are_refused(emulator, action, options,
                                                                       problem):
    with pytest.raises(GateRefused, match="refused, no request made") as info:
        attempt(action, make_job(action, options))
    assert problem in str(info.value)
    assert emulator.rest_calls() == []


@pytest.mark.parametrize("options, problem", [
    ({"call": "redeploy", "target": ""}, "target (a resource URI) is required"),
    ({"call": "stop/../../stack", "target": f"/api/app/v1/service/{SVC}/"}, "call must be one of"),
])
def test_options_that_make_no_call_are_refused_before_the_gate(emulator, action, options, problem):
    with pytest.raises(PermanentActionError) as info:
        attempt(action, make_job(action, options))
    assert problem in str(info.value)
    assert emulator.rest_calls() == []


def test_exact_resource_uris_of_the_right_type_pass():
    from eventd.delivery.policies import dockercloud_call, namespace_of

    assert dockercloud_call("POST", f"/api/app/v1/acme/service/{SVC}/redeploy/", "") is None
    assert dockercloud_call("POST", f"/api/app/v1/service/{SVC}/redeploy/",
                            "reuse_volumes=false") is None
    assert dockercloud_call("POST", f"/api/infra/v1/my.org/node/{NODE}/health-check/", "") is None
    assert dockercloud_call("DELETE", f"/api/infra/v1/nodecluster/{NODE}/", "") is None
    assert dockercloud_call("GET", f"/api/app/v1/stack/{SVC}/export/", "") is None
    assert dockercloud_call("POST", f"/api/app/v1/service/{SVC}/trigger/{NODE}/call/", "") is None
    assert dockercloud_call("POST", f"/api/audit/v1/action/{SVC}/cancel/", "") is None
    assert dockercloud_call("PATCH", f"/api/app/v1/container/{SVC}/", "") is not None
    assert dockercloud_call("POST", f"/api/app/v1/service/{SVC}/", "") is not None
    assert dockercloud_call("GET", f"/api/app/v1/service/{SVC}/redeploy/", "") is not None
    assert namespace_of(f"/api/infra/v1/my.org/node/{NODE}/") == "my.org"
    assert namespace_of(f"/api/infra/v1/node/{NODE}/") is None


def test_parent_service_is_an_exact_uri_and_never_one_of_two_services():
    from eventd.events import parents_by_type

    real = f"/api/app/v1/acme/service/{SVC}/"
    other = "/api/app/v1/acme/service/1709048e-d686-414f-9acc-c149de6c3d02/"
    hostile = f"/api/app/v1/acme/stack/{SVC}/stop/?/service/{SVC}/"
    assert parents_by_type([hostile, real]) == {"service": real}
    assert parents_by_type([other, real]) == {}  # two services: no service, not the first
    assert parents_by_type([real, f"/api/app/v1/service/{SVC}/"]) == {"service": real}
    assert parents_by_type([f"/api/infra/v1/acme/node/{NODE}/", 7, None]) == {
        "node": f"/api/infra/v1/acme/node/{NODE}/"}


@pytest.fixture
def slow_emulator():
    """An emulator whose actions take a few seconds to end (one step per 0.4 s tick)."""
    from eventd.emulator import Emulator

    emu = Emulator(tick=0.4)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def slow_dispatcher(emu, metrics, store):
    rest = RestClient(emu.rest_url, Credentials(header=emu.auth_header, source="test"))
    context = make_context(metrics, rest=rest, poll_interval=0.05)
    action = DockerCloudAction(context)
    dispatcher = Dispatcher(context, store, {"dockercloud": action})
    dispatcher.start()
    return dispatcher, action, rest


def redeploy_state(emu, service):
    """The latest state of a redeploy action on `service`, from the stream's action events."""
    return next((e["state"] for e in reversed(emu.sent_events())
                 if e.get("type") == "action" and service in e.get("parents", [])), None)


def test_a_followed_action_holds_no_other_rest_action_back(slow_emulator, metrics, tmp_path):
    emu = slow_emulator
    store = SqliteStore(tmp_path)
    dispatcher, action, rest = slow_dispatcher(emu, metrics, store)
    web, stack = emu.world.uri("service", "web"), emu.world.uri("stack", "demo")
    try:
        dispatcher.submit(make_job(action, {"call": "redeploy", "target": web, "wait": True}))
        dispatcher.submit(make_job(action, {"method": "GET", "path": stack}))
        wait_until(lambda: any(c.path == stack for c in emu.rest_calls()), 5,
                   message="the second REST action ran")
        assert emu.rest_calls()[0].path == f"{web}redeploy/"
        assert redeploy_state(emu, web) != "Success"  # still being followed
        assert dispatcher.wait_idle(30)
    finally:
        dispatcher.close(2)
        store.close()
        rest.close()
    assert redeploy_state(emu, web) == "Success"
    assert sample(metrics, "eventd_actions_total", kind="dockercloud", outcome="success") == 2


def test_a_restart_during_a_wait_follows_the_same_action_and_never_calls_again(
        slow_emulator, metrics, tmp_path):
    emu = slow_emulator
    store = SqliteStore(tmp_path)
    dispatcher, action, rest = slow_dispatcher(emu, metrics, store)
    web = emu.world.uri("service", "web")
    job = make_job(action, {"call": "redeploy", "target": web, "wait": True})
    try:
        dispatcher.submit(job)
        wait_until(lambda: store.spool_pending() and
                   store.spool_pending()[0].context.get("action_uri"), 5,
                   message="the action URI saved with the job")
    finally:
        assert dispatcher.close(2) == 1  # shut down mid-wait: the job stays
        rest.close()
    [spooled] = store.spool_pending()
    assert spooled.context["action_uri"].startswith("/api/audit/v1/action/")
    assert redeploy_state(emu, web) != "Success"

    again = Metrics()
    dispatcher, action, rest = slow_dispatcher(emu, again, store)  # the restart
    try:
        assert dispatcher.wait_idle(30)
    finally:
        dispatcher.close(2)
        store.close()
        rest.close()
    posts = [c for c in emu.rest_calls() if c.method == "POST"]
    assert [c.path for c in posts] == [f"{web}redeploy/"]  # called once, across the restart
    assert redeploy_state(emu, web) == "Success"
    assert sample(again, "eventd_actions_total", kind="dockercloud", outcome="success") == 1


@pytest.mark.parametrize("state", [["Failed"], {"Success": 1}, None, 3])
def test_an_action_event_whose_state_is_not_a_string_is_ignored(state):
    """Found by tests/fuzz/test_fuzz_gate.py: a list as `state` raised TypeError (unhashable)
    in the engine thread for every such event."""
    action = f"/api/audit/v1/action/{SVC}/"
    waiter = ActionWaiter()
    waiter.observe({"type": "action", "state": state, "resource_uri": action})
    assert waiter.state(action) is None
    waiter.observe({"type": "action", "state": "Failed", "resource_uri": action})
    assert waiter.state(action) == "Failed"
