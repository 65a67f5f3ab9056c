"""REST API: auth, objects, lists, actions with their 202 + header + events, guards, errors."""

from __future__ import annotations

import email.utils

import pytest
import requests

from eventd.emulator import Emulator
from eventd.emulator.world import (
    DEFAULT_CONTAINER_UUIDS,
    DEFAULT_NODE_UUIDS,
    DEFAULT_NODECLUSTER_UUID,
    DEFAULT_SERVICE_UUIDS,
    DEFAULT_STACK_UUID,
)
from tests.emulator.conftest import steps, tail
from tests.waiting import wait_until

WEB = DEFAULT_SERVICE_UUIDS["web"]
DB = DEFAULT_SERVICE_UUIDS["db"]
WEB1 = DEFAULT_CONTAINER_UUIDS["web-1"]
DB1 = DEFAULT_CONTAINER_UUIDS["db-1"]
STACK = DEFAULT_STACK_UUID
CLUSTER = DEFAULT_NODECLUSTER_UUID


def url(emu, path):
    return emu.rest_url + path.lstrip("/")


def finish(emu, response):
    """Wait until the action of a 202 answer settles; return the events since it started."""
    action_uri = response.headers["X-DockerCloud-Action-URI"]
    action_uuid = tail(action_uri).split("/")[1]
    wait_until(lambda: emu.world.get("action", action_uuid)["state"] not in ("In progress",
                                                                           "Canceling"))
    return action_uri


def events_after(emu, count):
    return emu.sent_events()[count:]


def test_rest_needs_the_credentials(emu):
    for headers in ({}, {"Authorization": "Basic dXNlcjp3cm9uZw=="}):
        r = requests.get(url(emu, "api/app/v1/service/"), headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": "Unauthorized"}
    assert [c.status for c in emu.rest_calls()] == [401, 401]


def test_opaque_token_is_accepted_as_well_as_basic():
    with Emulator(token="tok-xyz", tick=0.01) as emu:
        for auth in ("tok-xyz", emu.auth_header):
            r = requests.get(url(emu, "api/app/v1/user/stack/"), headers={"Authorization": auth})
            assert r.status_code == 200


@pytest.mark.parametrize("path", [
    f"api/app/v1/service/{WEB}/", f"api/app/v1/user/service/{WEB}/",
    f"api/app/v1/user/service/{WEB}",
])
def test_get_a_service_namespaced_or_not(emu, rest, path):
    r = rest.get(url(emu, path))
    assert r.status_code == 200
    body = r.json()
    assert body["uuid"] == WEB and body["name"] == "web" and body["state"] == "Running"
    assert body["resource_uri"] == f"/api/app/v1/user/service/{WEB}/"
    assert body["image_name"] == "dockercloud/hello-world:latest"
    assert body["stack"] == f"/api/app/v1/user/stack/{DEFAULT_STACK_UUID}/"
    assert body["target_num_containers"] == 2 and body["running_num_containers"] == 2
    assert len(body["containers"]) == 2
    assert email.utils.parsedate_to_datetime(body["deployed_datetime"]) is not None
    assert body["deployed_datetime"].endswith("+0000")


def test_objects_of_every_kind_carry_their_key_fields(emu, rest):
    container = rest.get(url(emu, f"api/app/v1/user/container/{DB1}/")).json()
    assert container["image_name"] == "postgres:9.6"
    assert container["exit_code"] is None and container["exit_code_msg"] is None
    assert container["service"] == f"/api/app/v1/user/service/{DB}/"
    assert container["node"] == f"/api/infra/v1/user/node/{DEFAULT_NODE_UUIDS[0]}/"
    node = rest.get(url(emu, f"api/infra/v1/node/{DEFAULT_NODE_UUIDS[1]}/")).json()
    assert node["state"] == "Deployed"
    assert node["node_cluster"] == f"/api/infra/v1/user/nodecluster/{DEFAULT_NODECLUSTER_UUID}/"
    cluster = rest.get(url(emu, f"api/infra/v1/user/nodecluster/{CLUSTER}/")).json()
    assert cluster["name"] == "production" and cluster["state"] == "Deployed"
    assert len(cluster["nodes"]) == 2
    stack = rest.get(url(emu, f"api/app/v1/stack/{STACK}/")).json()
    assert stack["name"] == "demo" and stack["state"] == "Running" and len(stack["services"]) == 2


def test_lists_paginate_with_limit_offset_and_next_paths(emu, rest):
    first = rest.get(url(emu, "api/app/v1/user/container/?limit=2")).json()
    assert first["meta"] == {"limit": 2, "next": "/api/app/v1/user/container/?limit=2&offset=2",
                             "offset": 0, "previous": None, "total_count": 3}
    assert [o["name"] for o in first["objects"]] == ["web-1", "web-2"]
    second = rest.get(url(emu, first["meta"]["next"])).json()
    assert [o["name"] for o in second["objects"]] == ["db-1"]
    assert second["meta"]["next"] is None
    assert second["meta"]["previous"] == "/api/app/v1/user/container/?limit=2&offset=0"
    default = rest.get(url(emu, "api/app/v1/container/")).json()
    assert default["meta"]["limit"] == 25 and default["meta"]["total_count"] == 3


def test_list_filters(emu, rest):
    def names(path):
        r = rest.get(url(emu, path))
        assert r.status_code == 200, r.text
        return [o["name"] for o in r.json()["objects"]]

    assert names("api/app/v1/service/?name=db") == ["db"]
    assert names(f"api/app/v1/service/?stack=/api/app/v1/user/stack/{STACK}/") == ["web", "db"]
    assert names(f"api/app/v1/container/?service=/api/app/v1/service/{WEB}/") == ["web-1", "web-2"]
    assert names(f"api/app/v1/container/?node={DEFAULT_NODE_UUIDS[0]}") == ["web-1", "db-1"]
    assert names("api/app/v1/container/?state=Stopped") == []
    assert names(f"api/app/v1/service/?uuid={DB}") == ["db"]
    r = rest.get(url(emu, "api/app/v1/service/?colour=blue"))
    assert r.status_code == 400 and "colour" in r.json()["error"]


def test_service_redeploy_answers_202_and_emits_the_real_sequence(emu, rest):
    before = len(emu.sent_events())
    old = set(DEFAULT_CONTAINER_UUIDS[n] for n in ("web-1", "web-2"))
    r = rest.post(url(emu, f"api/app/v1/user/service/{WEB}/redeploy/?reuse_volumes=false"))
    assert r.status_code == 202
    assert r.json()["uuid"] == WEB and r.json()["state"] == "Redeploying"
    action_uri = r.headers["X-DockerCloud-Action-URI"]
    assert action_uri.startswith("/api/audit/v1/action/")
    action = rest.get(url(emu, action_uri)).json()
    assert action["action"] == "Service Redeploy" and action["method"] == "POST"
    assert action["object"] == f"/api/app/v1/user/service/{WEB}/"
    assert action["path"] == f"/api/app/v1/user/service/{WEB}/redeploy/"
    finish(emu, r)
    events = events_after(emu, before)
    assert steps(events) == [
        ("action", "create", "In progress"), ("service", "update", "Redeploying"),
        ("container", "update", "Stopping"), ("container", "update", "Stopped"),
        ("container", "delete", "Terminated"),
        ("container", "update", "Stopping"), ("container", "update", "Stopped"),
        ("container", "delete", "Terminated"),
        ("container", "create", "Starting"), ("container", "update", "Running"),
        ("container", "create", "Starting"), ("container", "update", "Running"),
        ("service", "update", "Running"), ("action", "update", "Success"),
    ]
    assert events[0]["parents"] == [f"/api/app/v1/user/service/{WEB}/"]
    assert events[0]["resource_uri"] == action_uri
    assert events[1]["parents"] == [f"/api/app/v1/user/stack/{DEFAULT_STACK_UUID}/"]
    assert {tail(e["resource_uri"]).split("/")[1] for e in events[2:8]} == old
    assert len(events[8]["parents"]) == 4
    service = rest.get(url(emu, f"api/app/v1/service/{WEB}/")).json()
    assert service["state"] == "Running" and len(service["containers"]) == 2
    assert not {tail(c).split("/")[1] for c in service["containers"]} & old
    old_web1 = rest.get(url(emu, f"api/app/v1/container/{WEB1}/")).json()
    assert old_web1["state"] == "Terminated"
    done = rest.get(url(emu, action_uri)).json()
    assert done["state"] == "Success" and done["end_date"] is not None


def test_rest_objects_agree_with_each_event_as_it_is_emitted(emu, rest):
    seen = []
    original = emu._emit_world_event

    def check(event):
        kind, uuid = tail(event["resource_uri"]).split("/")
        seen.append(emu.world.get(kind, uuid)["state"] == event["state"])
        original(event)

    emu.world._emit = check
    finish(emu, rest.post(url(emu, f"api/app/v1/service/{WEB}/redeploy/")))
    assert seen and all(seen)


def test_stop_then_start_a_service_and_the_guards_between(emu, rest):
    before = len(emu.sent_events())
    r = rest.post(url(emu, f"api/app/v1/service/{DB}/stop/"))
    assert r.status_code == 202 and r.json()["state"] == "Stopping"
    finish(emu, r)
    assert steps(events_after(emu, before)) == [
        ("action", "create", "In progress"), ("service", "update", "Stopping"),
        ("container", "update", "Stopping"), ("container", "update", "Stopped"),
        ("service", "update", "Stopped"), ("stack", "update", "Partly running"),
        ("action", "update", "Success"),
    ]
    container = rest.get(url(emu, f"api/app/v1/container/{DB1}/")).json()
    assert container["state"] == "Stopped" and container["exit_code"] == 0
    again = rest.post(url(emu, f"api/app/v1/service/{DB}/stop/"))
    assert again.status_code == 400
    assert "Stopped" in again.json()["error"]
    before = len(emu.sent_events())
    r = rest.post(url(emu, f"api/app/v1/user/service/{DB}/start/"))
    assert r.status_code == 202 and r.json()["state"] == "Starting"
    finish(emu, r)
    assert steps(events_after(emu, before)) == [
        ("action", "create", "In progress"), ("service", "update", "Starting"),
        ("container", "update", "Starting"), ("container", "update", "Running"),
        ("service", "update", "Running"), ("stack", "update", "Running"),
        ("action", "update", "Success"),
    ]


def test_patch_then_scale_up_and_down(emu, rest):
    r = rest.patch(url(emu, f"api/app/v1/service/{WEB}/"), json={"target_num_containers": 3})
    assert r.status_code == 200 and r.json()["target_num_containers"] == 3
    assert emu.rest_calls()[-1].json == {"target_num_containers": 3}
    before = len(emu.sent_events())
    r = rest.post(url(emu, f"api/app/v1/service/{WEB}/scale/"))
    assert r.status_code == 202 and r.json()["state"] == "Scaling"
    finish(emu, r)
    assert steps(events_after(emu, before)) == [
        ("action", "create", "In progress"), ("service", "update", "Scaling"),
        ("container", "create", "Starting"), ("container", "update", "Running"),
        ("service", "update", "Running"), ("action", "update", "Success"),
    ]
    assert rest.get(url(emu, f"api/app/v1/service/{WEB}/")).json()["current_num_containers"] == 3
    rest.patch(url(emu, f"api/app/v1/user/service/{WEB}/"), json={"target_num_containers": 1})
    before = len(emu.sent_events())
    finish(emu, rest.post(url(emu, f"api/app/v1/user/service/{WEB}/scale/")))
    assert steps(events_after(emu, before)) == [
        ("action", "create", "In progress"), ("service", "update", "Scaling"),
        ("container", "update", "Terminating"), ("container", "delete", "Terminated"),
        ("container", "update", "Terminating"), ("container", "delete", "Terminated"),
        ("service", "update", "Running"), ("action", "update", "Success"),
    ]
    body = rest.get(url(emu, f"api/app/v1/service/{WEB}/")).json()
    assert body["current_num_containers"] == 1 and body["running_num_containers"] == 1


def test_patch_rejects_bad_values(emu, rest):
    r = rest.patch(url(emu, f"api/app/v1/service/{WEB}/"), json={"target_num_containers": -1})
    assert r.status_code == 400 and "target_num_containers" in r.json()["error"]
    r = rest.patch(url(emu, f"api/app/v1/service/{WEB}/"), json={"flavour": "x"})
    assert r.status_code == 400 and "flavour" in r.json()["error"]


def test_delete_terminates_a_service(emu, rest):
    before = len(emu.sent_events())
    r = rest.delete(url(emu, f"api/app/v1/service/{DB}/"))
    assert r.status_code == 202 and r.json()["state"] == "Terminating"
    finish(emu, r)
    assert steps(events_after(emu, before)) == [
        ("action", "create", "In progress"), ("service", "update", "Terminating"),
        ("container", "update", "Terminating"), ("container", "delete", "Terminated"),
        ("service", "delete", "Terminated"), ("action", "update", "Success"),
    ]
    assert rest.get(url(emu, f"api/app/v1/stack/{STACK}/")).json()["state"] == "Running"
    r = rest.post(url(emu, f"api/app/v1/service/{DB}/start/"))
    assert r.status_code == 400 and "Terminated" in r.json()["error"]


def test_container_stop_makes_the_service_partly_running(emu, rest):
    web1 = DEFAULT_CONTAINER_UUIDS["web-1"]
    before = len(emu.sent_events())
    r = rest.post(url(emu, f"api/app/v1/user/container/{web1}/stop/"))
    assert r.status_code == 202 and r.json()["state"] == "Stopping"
    finish(emu, r)
    assert steps(events_after(emu, before)) == [
        ("action", "create", "In progress"), ("container", "update", "Stopping"),
        ("container", "update", "Stopped"), ("service", "update", "Partly running"),
        ("stack", "update", "Partly running"), ("action", "update", "Success"),
    ]
    r = rest.post(url(emu, f"api/app/v1/container/{web1}/start/"))
    assert r.status_code == 202
    finish(emu, r)
    assert rest.get(url(emu, f"api/app/v1/service/{WEB}/")).json()["state"] == "Running"


def test_stack_redeploy_redeploys_every_service(emu, rest):
    r = rest.post(url(emu, f"api/app/v1/user/stack/{DEFAULT_STACK_UUID}/redeploy/"))
    assert r.status_code == 202 and r.json()["state"] == "Redeploying"
    finish(emu, r)
    kinds = steps(emu.sent_events())
    assert kinds[1] == ("stack", "update", "Redeploying")
    assert kinds[-2:] == [("stack", "update", "Running"), ("action", "update", "Success")]
    assert kinds.count(("service", "update", "Redeploying")) == 2


def test_node_health_check_only_when_unreachable(emu, rest):
    node = DEFAULT_NODE_UUIDS[1]
    r = rest.post(url(emu, f"api/infra/v1/user/node/{node}/health-check/"))
    assert r.status_code == 400 and "Deployed" in r.json()["error"]
    with emu.world.lock:
        emu.world.set_state(emu.world.find("node", node), "Unreachable")
    r = rest.post(url(emu, f"api/infra/v1/node/{node}/health-check/"))
    assert r.status_code == 202
    finish(emu, r)
    assert rest.get(url(emu, f"api/infra/v1/node/{node}/")).json()["state"] == "Deployed"
    assert steps(emu.sent_events())[-2:] == [("node", "update", "Deployed"),
                                            ("action", "update", "Success")]


def test_node_docker_upgrade_restarts_its_containers(emu, rest):
    r = rest.post(url(emu, f"api/infra/v1/node/{DEFAULT_NODE_UUIDS[1]}/docker-upgrade/"))
    assert r.status_code == 202 and r.json()["state"] == "Upgrading"
    finish(emu, r)
    assert steps(emu.sent_events())[2:7] == [
        ("container", "update", "Stopping"), ("container", "update", "Stopped"),
        ("container", "update", "Starting"), ("container", "update", "Running"),
        ("node", "update", "Deployed")]


def test_nodecluster_deploy_is_refused_once_deployed(emu, rest):
    r = rest.post(url(emu, f"api/infra/v1/nodecluster/{DEFAULT_NODECLUSTER_UUID}/deploy/"))
    assert r.status_code == 400 and "'Deployed'" in r.json()["error"]


@pytest.mark.parametrize("method,path,status", [
    ("GET", f"api/app/v1/service/{'0' * 8}-0000-4000-8000-{'0' * 12}/", 404),
    ("POST", f"api/app/v1/service/{'0' * 8}-0000-4000-8000-{'0' * 12}/stop/", 404),
    ("GET", f"api/app/v1/service/{WEB}/redeploy/", 405),
    ("PUT", f"api/app/v1/service/{WEB}/", 405),
    ("POST", "api/app/v1/service/", 405),
    ("POST", f"api/app/v1/service/{WEB}/explode/", 404),
    ("GET", "api/app/v1/other-org/service/", 404),
    ("GET", "api/infra/v1/service/", 404),
    ("GET", "api/audit/v1/user/action/", 404),
    ("GET", "api/nothing/", 404),
])
def test_unknown_objects_and_wrong_methods(emu, rest, method, path, status):
    r = rest.request(method, url(emu, path))
    assert r.status_code == status
    assert isinstance(r.json()["error"], str)


def test_a_body_that_is_not_json_gets_415_or_400(emu, rest):
    r = rest.patch(url(emu, f"api/app/v1/service/{WEB}/"), data="target_num_containers=3",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = rest.patch(url(emu, f"api/app/v1/service/{WEB}/"), data="{oops",
                   headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 400


def test_action_list_filters(emu, rest):
    finish(emu, rest.post(url(emu, f"api/app/v1/service/{DB}/redeploy/")))
    finish(emu, rest.post(url(emu, f"api/app/v1/container/{WEB1}/stop/")))

    def labels(query):
        r = rest.get(url(emu, "api/audit/v1/action/?" + query))
        assert r.status_code == 200, r.text
        return [a["action"] for a in r.json()["objects"]]

    assert labels("") == ["Service Redeploy", "Container Stop"]
    assert labels("state=Success") == ["Service Redeploy", "Container Stop"]
    assert labels("state=Failed") == []
    assert labels(f"object=/api/app/v1/service/{DB}/") == ["Service Redeploy"]
    assert labels(f"object=/api/app/v1/user/stack/{DEFAULT_STACK_UUID}/&include_related=true") == [
        "Service Redeploy", "Container Stop"]
    assert labels(f"object=/api/app/v1/user/stack/{STACK}/&include_related=false") == []
    first = rest.get(url(emu, "api/audit/v1/action/")).json()["objects"][0]
    start = email.utils.parsedate_to_datetime(first["start_date"])
    iso = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(labels(f"start_date__gte={iso}")) == 2
    assert len(labels("start_date__gte=" + requests.utils.quote(start.isoformat()))) == 2
    assert len(labels("start_date__lte=" + requests.utils.quote(first["start_date"]))) >= 1
    assert labels("start_date__lte=2016-06-01T10:15:02Z") == []
    assert rest.get(url(emu, "api/audit/v1/action/?start_date__gte=yesterday")).status_code == 400


def test_cancel_an_action_in_progress_and_retry_it():
    with Emulator(tick=0.3) as emu, requests.Session() as rest:
        rest.headers["Authorization"] = emu.auth_header
        r = rest.post(url(emu, f"api/app/v1/service/{WEB}/redeploy/"))
        action_uri = r.headers["X-DockerCloud-Action-URI"]
        c = rest.post(url(emu, action_uri + "cancel/"))
        assert c.status_code == 202 and c.json()["state"] == "Canceling"
        assert c.headers["X-DockerCloud-Action-URI"] == action_uri
        wait_until(lambda: rest.get(url(emu, action_uri)).json()["state"] == "Canceled")
        assert rest.get(url(emu, f"api/app/v1/service/{WEB}/")).json()["state"] == "Running"
        again = rest.post(url(emu, action_uri + "cancel/"))
        assert again.status_code == 400 and "Canceled" in again.json()["error"]
        retry = rest.post(url(emu, action_uri + "retry/"))
        assert retry.status_code == 202
        new_uri = retry.headers["X-DockerCloud-Action-URI"]
        assert new_uri != action_uri and retry.json()["action"] == "Service Redeploy"
        assert retry.json()["state"] == "In progress"


def test_fail_actions_fault_ends_the_action_failed(emu, rest):
    emu.faults.fail_actions()
    r = rest.post(url(emu, f"api/app/v1/service/{WEB}/redeploy/"))
    assert r.status_code == 202
    finish(emu, r)
    assert steps(emu.sent_events()) == [
        ("action", "create", "In progress"), ("service", "update", "Redeploying"),
        ("service", "update", "Running"), ("action", "update", "Failed")]
    assert rest.get(url(emu, r.headers["X-DockerCloud-Action-URI"])).json()["state"] == "Failed"


def test_rest_calls_are_recorded_with_headers_and_bodies(emu, rest):
    rest.patch(url(emu, f"api/app/v1/service/{WEB}/?x=1"), json={"target_num_containers": 2},
               headers={"User-Agent": "eventd-test/1"})
    call = emu.rest_calls()[-1]
    assert (call.method, call.path, call.query, call.status) == (
        "PATCH", f"/api/app/v1/service/{WEB}/", {"x": "1"}, 200)
    assert call.headers["authorization"] == emu.auth_header
    assert call.headers["User-Agent"] == "eventd-test/1"
    assert call.json == {"target_num_containers": 2}
    emu.clear_rest_calls()
    assert emu.rest_calls() == []
