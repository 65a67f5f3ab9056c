"""The /_emulator control endpoint: recordings, events and faults over plain HTTP."""

from __future__ import annotations

import pytest
import requests
from websocket import WebSocketBadStatusException

from eventd.emulator.world import DEFAULT_SERVICE_UUIDS
from tests.emulator.conftest import read_until


def control(emu, method, path, **kwargs):
    return requests.request(method, emu.rest_url + "_emulator/" + path, **kwargs)


def test_calls_are_listed_and_cleared_without_auth(emu, rest):
    rest.get(emu.rest_url + "api/app/v1/service/?name=web")
    calls = control(emu, "GET", "calls").json()
    assert calls == [{"method": "GET", "path": "/api/app/v1/service/", "query": {"name": "web"},
                      "headers": calls[0]["headers"], "json": None, "status": 200,
                      "peer": calls[0]["peer"], "at": calls[0]["at"]}]
    assert calls[0]["peer"].startswith("127.0.0.1:") and calls[0]["at"] > 0
    assert calls[0]["headers"]["Authorization"] == "Basic ***"  # redacted unless asked for
    assert emu.auth_header.split()[1] not in control(emu, "GET", "calls").text
    revealed = control(emu, "GET", "calls?reveal=1").json()
    assert revealed[0]["headers"]["Authorization"] == emu.auth_header
    assert control(emu, "DELETE", "calls").status_code == 200
    assert control(emu, "GET", "calls").json() == []
    assert emu.rest_calls() == []


def test_handshakes_are_listed(emu, streams):
    streams.connect("api/audit/v1/events?type=service")
    [handshake] = control(emu, "GET", "handshakes").json()
    assert handshake["path"] == "/api/audit/v1/events"
    assert handshake["query"] == {"type": "service"}
    assert handshake["status"] == 101
    assert handshake["headers"]["Authorization"] == "Basic ***"
    [revealed] = control(emu, "GET", "handshakes?reveal=true").json()
    assert revealed["headers"]["Authorization"] == emu.auth_header


def test_posts_need_a_json_content_type(emu, streams):
    ws = streams.connect()
    for headers in ({}, {"Content-Type": "text/plain"},
                    {"Content-Type": "application/x-www-form-urlencoded"}):
        r = control(emu, "POST", "events", data=b'{"type": "container"}', headers=headers)
        assert r.status_code == 415, headers
        assert "application/json" in r.json()["error"]
        r = control(emu, "POST", "faults", data=b'{"drop": true}', headers=headers)
        assert r.status_code == 415
    assert emu.sent_events() == [] and emu.wait_for_connections(1)
    r = control(emu, "POST", "events", data=b'{"type": "container", "state": "A"}',
                headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert read_until(ws, lambda f: True)[0]["state"] == "A"


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by connect()
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_control_answers_only_loopback_clients_even_on_all_interfaces():
    from eventd.emulator import Emulator

    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with Emulator(host="0.0.0.0", tick=0.01) as emu:
        port = emu.rest_port
        far = requests.get(f"http://{outside}:{port}/_emulator/calls", timeout=5)
        assert far.status_code == 403 and "127.0.0.1" in far.json()["error"]
        far = requests.post(f"http://{outside}:{port}/_emulator/faults", json={"drop": True},
                            timeout=5)
        assert far.status_code == 403
        api = requests.get(f"http://{outside}:{port}/api/app/v1/service/", timeout=5,
                           headers={"Authorization": emu.auth_header})
        assert api.status_code == 200  # the REST API itself does answer there
        near = requests.get(f"http://127.0.0.1:{port}/_emulator/calls", timeout=5)
        assert near.status_code == 200 and len(near.json()) == 1


def test_posted_events_are_completed_and_broadcast(emu, streams):
    ws = streams.connect()
    uri = f"/api/app/v1/user/service/{DEFAULT_SERVICE_UUIDS['web']}/"
    r = control(emu, "POST", "events", json={"type": "service", "action": "update",
                                             "parents": [], "resource_uri": uri,
                                             "state": "Stopped"})
    assert r.status_code == 200
    [sent] = r.json()["sent"]
    assert set(sent) == {"type", "action", "parents", "resource_uri", "state", "uuid", "datetime"}
    assert read_until(ws, lambda f: True) == [sent]
    r = control(emu, "POST", "events", json=[{"type": "container", "state": "A"},
                                             {"type": "container", "state": "B",
                                              "uuid": "fixed"}])
    frames = read_until(ws, lambda f: f["state"] == "B")
    assert [f["state"] for f in frames] == ["A", "B"] and frames[1]["uuid"] == "fixed"
    assert emu.sent_events()[-1]["uuid"] == "fixed"


def test_faults_can_be_set_over_http(emu, streams):
    assert control(emu, "POST", "faults", json={"reject_auth": True}).json()["reject_auth"]
    with pytest.raises(WebSocketBadStatusException):
        streams.connect()
    r = control(emu, "POST", "faults",
                json={"clear": True, "fail_handshake": {"status": 503, "count": 1,
                                                        "retry_after": 1}})
    assert r.json()["reject_auth"] is False
    assert r.json()["fail_handshake"] == {"status": 503, "count": 1, "retry_after": "1"}
    with pytest.raises(WebSocketBadStatusException) as info:
        streams.connect()
    assert info.value.status_code == 503 and info.value.resp_headers["retry-after"] == "1"
    ws = streams.connect()
    assert emu.wait_for_connections(1)
    control(emu, "POST", "faults", json={"drop": True})
    assert emu.wait_for_connections(0)
    ws.shutdown()
    r = control(emu, "POST", "faults", json={"delay": {"handshake": 0.5, "rest": 0},
                                             "silent": True, "fail_rest": {"status": 500}})
    assert r.json()["delay"] == {"handshake": 0.5, "rest": 0.0} and r.json()["silent"]
    assert r.json()["fail_rest"]["status"] == 500
    r = control(emu, "POST", "faults", json={"explode": True})
    assert r.status_code == 400 and "explode" in r.json()["error"]


def test_state_summarises_connections_and_world(emu, streams):
    streams.connect()
    state = control(emu, "GET", "state").json()
    assert state["connections"] == 1
    assert state["rest_url"] == emu.rest_url and state["stream_url"] == emu.stream_url
    assert {s["name"]: s["state"] for s in state["world"]["service"]} == {"web": "Running",
                                                                         "db": "Running"}


def test_unknown_control_paths_and_methods(emu):
    assert control(emu, "GET", "nothing").status_code == 404
    assert control(emu, "PATCH", "calls").status_code == 405
