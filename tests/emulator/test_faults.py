"""Faults: dropped and silent streams, refused handshakes, failing and slow REST, restarts."""

from __future__ import annotations

import socket
import time

import pytest
import requests
from websocket import (
    ABNF,
    WebSocketBadStatusException,
    WebSocketConnectionClosedException,
    WebSocketTimeoutException,
)

from tests.emulator.conftest import read_until
from tests.waiting import wait_until


def test_drop_connections_aborts_without_a_close_frame(emu, streams):
    ws = streams.connect()
    assert emu.wait_for_connections(1)
    emu.faults.drop_connections()
    ws.settimeout(3)
    with pytest.raises((WebSocketConnectionClosedException, ConnectionError)):
        opcode, _ = ws.recv_data(control_frame=True)
        assert opcode != ABNF.OPCODE_CLOSE, "a close frame was sent"
        ws.recv_data(control_frame=True)
    assert emu.wait_for_connections(0)
    streams.connect()  # the server still accepts new connections
    assert emu.wait_for_connections(1)


def test_silent_stream_answers_no_ping_and_loses_events(emu, streams):
    ws = streams.connect()
    ws.ping("before")
    assert ws.recv_data(control_frame=True) == (ABNF.OPCODE_PONG, b"before")
    emu.faults.set_silent(True)
    emu.emit_event(state="Lost")
    ws.ping("during")
    ws.settimeout(0.5)
    with pytest.raises(WebSocketTimeoutException):
        ws.recv_data(control_frame=True)
    late = streams.connect(read_auth=False)  # new connections are silent too: not even auth
    late.settimeout(0.3)
    with pytest.raises(WebSocketTimeoutException):
        late.recv()
    assert emu.connection_count == 2
    emu.faults.set_silent(False)
    ws.settimeout(3)
    assert ws.recv_data(control_frame=True) == (ABNF.OPCODE_PONG, b"during")
    sent = emu.emit_event(state="After")
    frames = read_until(ws, lambda f: True)
    assert frames == [sent]
    assert read_until(late, lambda f: f.get("state") == "After") == [{"type": "auth"}, sent]


def test_reject_auth_refuses_good_credentials_with_401(emu, streams):
    emu.faults.reject_auth(True)
    with pytest.raises(WebSocketBadStatusException) as info:
        streams.connect()
    assert info.value.status_code == 401
    emu.faults.reject_auth(False)
    streams.connect()
    assert [h.status for h in emu.handshakes()] == [401, 101]


@pytest.mark.parametrize("status", [403, 429, 500, 503])
def test_fail_handshake_answers_the_status_with_retry_after(emu, streams, status):
    emu.faults.fail_handshake(status, count=2, retry_after=7)
    for _ in range(2):
        with pytest.raises(WebSocketBadStatusException) as info:
            streams.connect()
        assert info.value.status_code == status
        assert info.value.resp_headers["retry-after"] == "7"
    streams.connect()
    assert [h.status for h in emu.handshakes()] == [status, status, 101]


def test_fail_handshake_without_retry_after_sends_none(emu, streams):
    emu.faults.fail_handshake(500)
    with pytest.raises(WebSocketBadStatusException) as info:
        streams.connect()
    assert "retry-after" not in info.value.resp_headers


def test_fail_rest_answers_the_status_then_recovers(emu, rest):
    emu.faults.fail_rest(503, count=2, retry_after="120")
    control = requests.get(emu.rest_url + "_emulator/state")
    assert control.status_code == 200  # control calls neither consume nor suffer the fault
    for _ in range(2):
        r = rest.get(emu.rest_url + "api/app/v1/service/")
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "120"
        assert set(r.json()) == {"error"}
    assert rest.get(emu.rest_url + "api/app/v1/service/").status_code == 200
    assert [c.status for c in emu.rest_calls()] == [503, 503, 200]


def test_fail_rest_comes_before_auth(emu):
    emu.faults.fail_rest(429)
    r = requests.get(emu.rest_url + "api/app/v1/service/")
    assert r.status_code == 429
    assert requests.get(emu.rest_url + "api/app/v1/service/").status_code == 401


def test_delays_slow_down_rest_and_handshakes(emu, streams, rest):
    emu.faults.set_delay(handshake=0.3, rest=0.3)
    started = time.monotonic()
    assert rest.get(emu.rest_url + "api/app/v1/stack/").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    streams.connect()
    assert time.monotonic() - started >= 0.3
    emu.faults.set_delay(handshake=30, rest=30)
    emu.faults.set_delay()  # back to none: a 30 s delay left behind would fail these timeouts
    assert rest.get(emu.rest_url + "api/app/v1/stack/", timeout=10).status_code == 200
    streams.connect(timeout=10)


def test_clear_switches_every_fault_off(emu, streams, rest):
    emu.faults.set_silent(True)
    emu.faults.reject_auth(True)
    emu.faults.fail_handshake(503, count=5)
    emu.faults.fail_rest(500, count=5)
    emu.faults.set_delay(handshake=5, rest=5)
    emu.faults.clear()
    assert rest.get(emu.rest_url + "api/app/v1/stack/").status_code == 200
    ws = streams.connect()
    ws.ping("x")
    assert ws.recv_data(control_frame=True) == (ABNF.OPCODE_PONG, b"x")


def test_restart_stream_drops_clients_and_listens_on_the_same_port(emu, streams):
    ws = streams.connect()
    url = emu.stream_url
    emu.restart_stream()
    assert emu.stream_url == url
    ws.settimeout(3)
    with pytest.raises((WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()
        ws.recv()
    again = streams.connect()
    sent = emu.emit_event(state="Back")
    assert read_until(again, lambda f: True) == [sent]


def test_stop_stream_keeps_it_down_until_start_stream(emu, streams, rest):
    port = emu.stream_port
    emu.stop_stream()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert emu.connection_count == 0
    assert rest.get(emu.rest_url + "api/app/v1/stack/").status_code == 200
    emu.emit_event(state="While down")  # recorded, delivered to nobody
    emu.start_stream()
    assert emu.stream_port == port
    streams.connect()
    wait_until(lambda: emu.connection_count == 1)
    assert emu.sent_events()[-1]["state"] == "While down"
