"""Stream API: URL forms, handshake auth, the auth message, event shape, filters, fan-out."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid

import pytest
from websocket import WebSocketBadStatusException

from eventd.emulator import Emulator
from eventd.emulator.world import (
    DEFAULT_CONTAINER_UUIDS,
    DEFAULT_NODE_UUIDS,
    DEFAULT_SERVICE_UUIDS,
    DEFAULT_STACK_UUID,
)
from tests.emulator.conftest import Streams, read_until
from tests.waiting import wait_until

EVENT_KEYS = ["type", "action", "parents", "resource_uri", "state", "uuid", "datetime"]


@pytest.mark.parametrize("path", [
    "api/audit/v1/events", "api/audit/v1/events/", "api/audit/v1/user/events",
    "api/audit/v1/user/events/", "v1/events", "api/audit/v1/user/events?type=container",
])
def test_every_documented_url_form_connects_and_gets_auth_first(emu, streams, path):
    ws = streams.connect(path, read_auth=False)
    assert ws.recv() == '{"type":"auth"}'
    assert emu.handshakes()[-1].status == 101
    assert emu.handshakes()[-1].path == "/" + path.split("?")[0]


@pytest.mark.parametrize("path", [
    "", "api/audit/v1/someone-else/events", "api/audit/v2/events", "api/app/v1/events",
    "api/audit/v1/user/events/extra",
])
def test_other_paths_get_404_on_the_handshake(emu, streams, path):
    with pytest.raises(WebSocketBadStatusException) as info:
        streams.connect(path)
    assert info.value.status_code == 404
    assert emu.handshakes()[-1].status == 404


def test_python_dockercloud_url_building_works_unchanged(emu, streams):
    stream_host = emu.stream_url
    url = stream_host.rstrip("/") + "/api/audit/v1/" + emu.namespace + "/events"
    ws = streams.connect(path="", base=url)
    emu.emit_event(state="Stopped")
    assert read_until(ws, lambda f: True)[0]["state"] == "Stopped"


@pytest.mark.parametrize("auth", [None, "Basic dXNlcjp3cm9uZw==", "Bearer apikey", ""])
def test_wrong_or_missing_credentials_get_401(emu, streams, auth):
    with pytest.raises(WebSocketBadStatusException) as info:
        streams.connect(auth=auth)
    assert info.value.status_code == 401
    assert emu.connection_count == 0


def test_opaque_token_and_basic_are_both_accepted():
    with Emulator(token="opaque-token-123", tick=0.01) as emu:
        opened = Streams(emu)
        try:
            opened.connect(auth="opaque-token-123")
            opened.connect()
            assert [h.status for h in emu.handshakes()] == [101, 101]
            assert emu.handshakes()[0].headers["authorization"] == "opaque-token-123"
        finally:
            opened.close_all()


def test_emitted_events_have_exactly_the_documented_fields(emu, streams):
    ws = streams.connect()
    uri = emu.world.uri("container", "web-1")
    sent = emu.emit_event(type="container", action="update", state="Stopped", resource_uri=uri)
    event = json.loads(ws.recv())
    assert list(event) == EVENT_KEYS
    assert event == sent
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["datetime"])
    assert uuid.UUID(event["uuid"]).version == 4
    assert event["parents"] == [
        f"/api/app/v1/user/service/{DEFAULT_SERVICE_UUIDS['web']}/",
        f"/api/app/v1/user/stack/{DEFAULT_STACK_UUID}/",
        f"/api/infra/v1/user/node/{DEFAULT_NODE_UUIDS[0]}/",
        f"/api/infra/v1/user/nodecluster/{emu.world.uuid('nodecluster', 'production')}/",
    ]
    assert emu.sent_events()[-1] == sent


def test_world_events_have_the_documented_fields_and_namespaced_uris(emu, streams, rest):
    ws = streams.connect()
    rest.post(emu.rest_url + f"api/app/v1/container/{DEFAULT_CONTAINER_UUIDS['db-1']}/stop/")
    frames = read_until(ws, lambda f: f["type"] == "action" and f["state"] == "Success")
    for frame in frames:
        assert list(frame) == EVENT_KEYS
        assert frame["resource_uri"].startswith(("/api/app/v1/user/", "/api/audit/v1/action/"))


def _collect(emu, streams, query):
    ws = streams.connect(f"api/audit/v1/user/events?{query}" if query else "api/audit/v1/events")
    return ws


def test_filters_type_object_parent_and_parents(emu, streams):
    web1 = emu.world.uuid("container", "web-1")
    web_svc = DEFAULT_SERVICE_UUIDS["web"]
    db_svc = DEFAULT_SERVICE_UUIDS["db"]
    node2 = DEFAULT_NODE_UUIDS[1]
    queries = {
        "all": "",
        "type": "type=service",
        "types": "type=service,node",
        "object_bare": f"object=/api/app/v1/container/{web1}/",
        "object_many": f"object=/api/app/v1/user/container/{web1}/,/api/app/v1/service/{db_svc}/",
        "parent": f"parent=/api/app/v1/service/{web_svc}/",
        "parents": f"parents=/api/infra/v1/user/node/{node2}/,/api/app/v1/service/{db_svc}/",
        "combined": f"type=container&parents=/api/app/v1/user/service/{web_svc}/",
    }
    clients = {name: _collect(emu, streams, q) for name, q in queries.items()}
    uri = emu.world.uri
    emitted = [
        emu.emit_event(type="container", state="Stopped", resource_uri=uri("container", "web-1")),
        emu.emit_event(type="container", state="Stopped", resource_uri=uri("container", "web-2")),
        emu.emit_event(type="container", state="Stopped", resource_uri=uri("container", "db-1")),
        emu.emit_event(type="service", state="Partly running", resource_uri=uri("service", "web")),
        emu.emit_event(type="service", state="Stopped", resource_uri=uri("service", "db")),
        emu.emit_event(type="node", state="Unreachable", resource_uri=uri("node", node2)),
    ]
    emu.emit("MARKER")  # raw frames ignore filters: each client sees the marker last
    got = {name: [f["uuid"] for f in read_until(ws, lambda f: f == "MARKER")[:-1]]
           for name, ws in clients.items()}
    u = [e["uuid"] for e in emitted]
    assert got["all"] == u
    assert got["type"] == [u[3], u[4]]
    assert got["types"] == [u[3], u[4], u[5]]
    assert got["object_bare"] == [u[0]]
    assert got["object_many"] == [u[0], u[4]]
    assert got["parent"] == [u[0], u[1]]
    assert got["parents"] == [u[1], u[2]]  # web-2 is on node-2; db-1's parent is db
    assert got["combined"] == [u[0], u[1]]


def test_raw_str_and_bytes_are_sent_as_is_as_text_frames(emu, streams):
    ws = streams.connect("api/audit/v1/events?type=service")
    emu.emit("not json {")
    emu.emit(b'{"type": "container"')
    assert ws.recv() == "not json {"
    assert ws.recv() == '{"type": "container"'


def test_every_connection_gets_every_event_in_order(emu, streams):
    clients = [streams.connect() for _ in range(3)]
    assert emu.connection_count == 3
    sent = [emu.emit_event(state=f"S{i}")["uuid"] for i in range(50)]
    for ws in clients:
        frames = read_until(ws, lambda f: f["uuid"] == sent[-1])
        assert [f["uuid"] for f in frames] == sent


def test_a_client_that_never_reads_does_not_block_others(emu, streams):
    streams.connect()  # never reads again
    reader = streams.connect()
    pad = "x" * 4000
    emitted = threading.Event()

    def emit_all() -> None:
        for i in range(600):  # ~2.4 MB: far beyond the socket buffers of the stalled client
            emu.emit({"type": "container", "state": "Running", "n": i, "pad": pad})
        emitted.set()

    threading.Thread(target=emit_all, daemon=True).start()
    assert emitted.wait(20), "emit() blocked on the client that never reads"
    frames = read_until(reader, lambda f: f["n"] == 599, timeout=10)
    assert [f["n"] for f in frames] == list(range(600))


def test_connection_count_follows_connects_and_closes(emu, streams):
    assert emu.connection_count == 0
    ws = streams.connect()
    assert emu.wait_for_connections(1)
    ws.close()
    assert emu.wait_for_connections(0)
    assert not emu.wait_for_connections(5, timeout=0.05)


def test_redeploy_events_reach_the_stream_in_order(emu, streams, rest):
    ws = streams.connect()
    web = DEFAULT_SERVICE_UUIDS["web"]
    rest.post(emu.rest_url + f"api/app/v1/user/service/{web}/redeploy/")
    frames = read_until(ws, lambda f: f["type"] == "action" and f["state"] == "Success")
    assert frames == emu.sent_events()
    wait_until(lambda: emu.scheduler.pending == 0)


def test_credentials_in_legacy_query_strings_stay_out_of_the_logs(emu, streams, rest, caplog):
    caplog.set_level(logging.INFO, logger="eventd.emulator")
    streams.connect("api/audit/v1/events?user=user&token=s3cret-key&type=service")
    rest.get(emu.rest_url + "api/app/v1/service/?auth=s3cret-key")
    assert "token=***" in caplog.text and "auth=***" in caplog.text
    assert "s3cret-key" not in caplog.text
    assert emu.auth_header not in caplog.text
