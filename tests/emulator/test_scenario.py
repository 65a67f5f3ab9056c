"""Scenarios: timelines drive the world and the stream; broken files name file and line."""

from __future__ import annotations

from importlib import resources

import pytest
import requests

from eventd.emulator import Emulator, ScenarioError, load_scenario
from tests.emulator.conftest import Streams, read_until, steps, tail
from tests.waiting import wait_until


def running(scenario, **kwargs):
    return Emulator(scenario=scenario, tick=0.01, **kwargs)


def test_container_exit_reaches_rest_and_the_stream(tmp_path):
    path = tmp_path / "crash.yaml"
    path.write_text("timeline:\n  - at: 0.2\n"
                    "    container_exit: {service: web, index: 1, exit_code: 137}\n")
    with running(path) as emu:
        opened = Streams(emu)
        try:
            ws = opened.connect("api/audit/v1/events?type=container,service,stack")
            frames = read_until(ws, lambda f: f["type"] == "stack")
        finally:
            opened.close_all()
        assert steps(frames) == [("container", "update", "Stopped"),
                                 ("service", "update", "Partly running"),
                                 ("stack", "update", "Partly running")]
        uuid = tail(frames[0]["resource_uri"]).split("/")[1]
        assert uuid == emu.world.uuid("container", "web-2")
        body = requests.get(emu.rest_url + f"api/app/v1/container/{uuid}/",
                            headers={"Authorization": emu.auth_header}).json()
        assert body["state"] == "Stopped"
        assert body["exit_code"] == 137 and body["exit_code_msg"] == "Exit code 137 (Failure)"


def test_node_failed_action_burst_and_drop_steps():
    scenario = {"timeline": [
        {"at": 0.0, "node_unreachable": {"index": 1}},
        {"at": 0.05, "failed_action": {"service": "db", "action": "Service Redeploy"}},
        {"at": 0.1, "burst": {"count": 30, "rate": 300}},
    ]}
    with running(scenario) as emu:
        wait_until(lambda: sum(1 for e in emu.sent_events()
                               if e["type"] in ("container", "service")) >= 30)
        events = emu.sent_events()
        assert steps(events)[0] == ("node", "update", "Unreachable")
        assert emu.world.get("node", emu.world.uuid("node", 1))["state"] == "Unreachable"
        actions = [e for e in events if e["type"] == "action"]
        assert [a["state"] for a in actions] == ["In progress", "Failed"]
        assert actions[0]["parents"] == [emu.world.uri("service", "db")]
        action = emu.world.get("action", tail(actions[0]["resource_uri"]).split("/")[1])
        assert action["action"] == "Service Redeploy" and action["state"] == "Failed"
        burst = [e for e in events if e["type"] in ("container", "service")]
        assert len(burst) == 30
        for event in burst:  # synthetic events still agree with the REST objects
            kind, uuid = tail(event["resource_uri"]).split("/")
            assert emu.world.get(kind, uuid)["state"] == event["state"]


def test_drop_connections_step_drops_the_stream():
    with running({"timeline": [{"at": 0.5, "drop_connections": True}]}) as emu:
        opened = Streams(emu)
        try:
            opened.connect()
            assert emu.wait_for_connections(1)
            assert emu.wait_for_connections(0, timeout=5)
        finally:
            opened.close_all()


def test_explicit_world():
    scenario = {"world": {"stacks": ["shop"], "nodes": 3, "nodecluster": "east",
                          "services": [{"name": "api", "image": "acme/api:1", "containers": 3,
                                        "stack": "shop"},
                                       {"name": "cron", "containers": 0}]}}
    with running(scenario, namespace="acme") as emu:
        r = requests.get(emu.rest_url + "api/app/v1/acme/service/?name=api",
                         headers={"Authorization": emu.auth_header}).json()
        [api] = r["objects"]
        assert api["image_name"] == "acme/api:1" and api["running_num_containers"] == 3
        assert api["resource_uri"].startswith("/api/app/v1/acme/service/")
        assert emu.world.get("service", emu.world.uuid("service", "cron"))["state"] == "Not running"
        assert len(emu.world.objects("node")) == 3
        assert emu.world.get("nodecluster", emu.world.uuid("nodecluster", "east"))["name"] == "east"


def test_shipped_demo_scenario_loads():
    path = resources.files("eventd.emulator") / "scenarios" / "demo.yaml"
    scenario = load_scenario(str(path))
    assert [s.name for s in scenario.steps][:3] == ["container_exit", "drop_connections",
                                                   "node_unreachable"]
    assert scenario.steps[0].args["exit_code"] == 137


BROKEN = [
    ("timeline:\n  - at: 1\n    contaner_exit: {service: web}\n",
     ":3: unknown step 'contaner_exit' (did you mean 'container_exit'?)"),
    ("world: default\ntimeline:\n  - at: 1\n    container_exit: {service: wbe}\n",
     ":4: unknown service 'wbe' (did you mean 'web'?)"),
    ("timeline:\n  - container_exit: {service: web}\n", ":2: a timeline entry needs 'at'"),
    ("timeline:\n  - at: soon\n    drop_connections: true\n", ":2: 'at' must be int or float"),
    ("timeline:\n  - at: 1\n    burst: {count: 10, speed: 5}\n",
     ":3: unknown argument of burst 'speed'"),
    ("timeline:\n  - at: 1\n    container_exit: {service: web, index: 5}\n",
     ":3: service 'web' has 2 container(s); index 5 is out of range"),
    ("timeline:\n  - at: 1\n    node_unreachable: {index: 2}\n", ":3: the world has 2 node(s)"),
    ("world:\n  nodes: 1\n  servics: []\n",
     ":3: unknown world key 'servics' (did you mean 'services'?)"),
    ("timeline: [\n  {at: 1\n", ":3: invalid YAML"),
    ("timline: []\n", ":1: unknown top-level key 'timline' (did you mean 'timeline'?)"),
    ("timeline:\n  - at: 1\n    drop_connections: true\n    silent: true\n", ":4: one step per"),
    ("", "the scenario is empty"),
]


@pytest.mark.parametrize("text,message", BROKEN)
def test_broken_scenarios_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        Emulator(scenario=str(path))
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_missing_scenario_file(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "absent.yaml")


def test_broken_dict_scenario_names_the_problem():
    with pytest.raises(ScenarioError, match="<scenario>: unknown step 'explode'"):
        Emulator(scenario={"timeline": [{"at": 0, "explode": True}]})
