"""Fencing tokens at the server, and the stream keepalive the chaos tests rely on.

The header is data from the network: hostile values are refused (409), never raised on, and a
stale token is refused wherever the write happens (stream handshake, REST write); a request
without the header passes (a client that does not fence yet). The keepalive ends a connection
whose client answers no ping (stopped, or cut off) and records the last pong.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from websocket import WebSocketBadStatusException

from eventd.emulator import Emulator
from eventd.emulator.fencing import HEADER, Fences, Token, parse
from tests.emulator.conftest import Streams
from tests.receiver import WebhookReceiver
from tests.waiting import wait_until


@pytest.fixture
def fenced() -> Iterator[Emulator]:
    emulator = Emulator(tick=0.01, fencing=True, keepalive=(0.2, 1.0))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def fenced_streams(fenced: Emulator) -> Iterator[Streams]:
    opened = Streams(fenced)
    try:
        yield opened
    finally:
        opened.close_all()


# -- the header parser: the attacker's inputs first ---------------------------------------------
@pytest.mark.parametrize("value", [
    "", " ", ":", "prod/acme:", "prod/acme:-1", "prod/acme:1.5", "prod/acme:0x10",
    "prod/acme:١٢",  # Arabic-Indic digits: str.isdigit() says yes, a token they are not
    "prod/acme:1234567890123456789",  # 19 digits: past any lease counter, refused
    "acme:7", "/acme:7", "prod/:7", "prod/acme/x:7", "prod/acme:7\r\nX-Injected: 1",
    "prod/acme:7:8", "prod /acme:7", "pröd/acme:7", "prod/acme:7 ; scope=other",
    "a" * 65 + "/acme:7", "prod/" + "n" * 256 + ":7",
])
def test_a_hostile_header_is_malformed_and_refused(value: str) -> None:
    fences = Fences()
    assert parse(value) is None
    assert fences.refuses(value)
    assert fences.snapshot()["malformed"] == 1
    assert fences.highest() == {}


def test_a_well_formed_header_parses_with_the_namespace_label_of_the_own_namespace() -> None:
    assert parse("prod/acme:7") == Token("prod/acme", 7)
    assert parse(" eventd/(own):12 ") == Token("eventd/(own)", 12)


def test_a_lower_token_is_stale_per_scope_and_an_absent_one_passes() -> None:
    fences = Fences()
    assert [fences.check(v) for v in ("prod/acme:5", "prod/acme:5", "prod/acme:4",
                                      "prod/globex:1", "prod/acme:6", "prod/acme:5", None)] == \
        ["newer", "current", "stale", "newer", "newer", "stale", "absent"]
    assert fences.highest() == {"prod/acme": 6, "prod/globex": 1}
    assert fences.snapshot() == {"absent": 1, "current": 1, "newer": 3, "stale": 2,
                                 "malformed": 0}


@given(st.text(max_size=80))
def test_any_header_value_gets_a_verdict_and_never_raises(value: str) -> None:
    fences = Fences()
    verdict = fences.check(value)
    token = parse(value)
    assert verdict == ("malformed" if token is None else "newer")
    if token is not None:  # what parses is exactly what a client would have formatted
        assert parse(f"{token.scope}:{token.token}") == token


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=30))
def test_the_tokens_let_through_never_go_down(tokens: list[int]) -> None:
    fences = Fences()
    passed = [t for t in tokens if not fences.refuses(f"c/ns:{t}")]
    assert passed == sorted(passed)
    assert fences.snapshot()["stale"] == len(tokens) - len(passed)


# -- where the write happens --------------------------------------------------------------------
def test_a_stream_handshake_with_a_stale_token_is_refused_with_409_and_counted(
        fenced, fenced_streams):
    fenced_streams.connect()  # no header: a client that does not fence yet still connects
    _connect_with(fenced, fenced_streams, "prod/user:3")
    with pytest.raises(WebSocketBadStatusException) as info:
        _connect_with(fenced, fenced_streams, "prod/user:2")
    assert info.value.status_code == 409
    assert [h.status for h in fenced.handshakes()] == [101, 101, 409]
    assert fenced.fences is not None and fenced.fences.snapshot()["stale"] == 1
    opened = fenced.stream_connections()
    assert [c.token for c in opened] == [None, "prod/user:3"]


def _connect_with(emu: Emulator, streams: Streams, token: str) -> object:
    from websocket import create_connection

    ws = create_connection(emu.stream_url + "api/audit/v1/user/events", timeout=5,
                           header=[f"Authorization: {emu.auth_header}", f"{HEADER}: {token}"])
    streams.opened.append(ws)
    return ws


def test_a_rest_write_with_a_stale_token_is_refused_and_a_read_is_not(fenced):
    url = fenced.rest_url + "api/app/v1/service/"
    headers = {"Authorization": fenced.auth_header}
    service = requests.get(url, headers=headers, timeout=5).json()["objects"][0]["uuid"]
    redeploy = f"{url}{service}/redeploy/"
    assert requests.post(redeploy, headers={**headers, HEADER: "prod/user:9"}, timeout=5) \
        .status_code == 202
    refused = requests.post(redeploy, headers={**headers, HEADER: "prod/user:8"}, timeout=5)
    assert refused.status_code == 409 and "fencing" in refused.json()["error"]
    assert requests.get(url, headers={**headers, HEADER: "prod/user:8"}, timeout=5) \
        .status_code == 200
    calls = fenced.rest_calls()
    assert [c.status for c in calls if c.method == "POST"] == [202, 409]
    assert all(c.peer.startswith("127.0.0.1:") and c.at > 0 for c in calls)


def test_the_receiver_screen_refuses_before_the_script_and_records_the_peer():
    fences = Fences()
    with WebhookReceiver(screen=lambda r: 409 if fences.refuses(r.header(HEADER)) else None) \
            as receiver:
        for token in ("prod/acme:2", "prod/acme:1", None):
            headers = {HEADER: token} if token else {}
            requests.post(receiver.url + "/hook", json={}, headers=headers, timeout=5)
    assert [r.status for r in receiver.requests] == [200, 409, 200]
    assert all(r.peer.startswith("127.0.0.1:") for r in receiver.requests)


# -- keepalive ----------------------------------------------------------------------------------
def test_keepalive_ends_a_client_that_answers_no_ping_and_keeps_its_last_pong(
        fenced, fenced_streams):
    alive = fenced_streams.connect()  # websocket-client answers pings while it reads
    reader = threading.Thread(target=_read_until_closed, args=(alive,), daemon=True)
    reader.start()
    silent = _silent_client(fenced)  # a handshake, then nothing: a stopped process
    try:
        wait_until(lambda: any(c.ended == "keepalive" for c in fenced.stream_connections()), 5,
                   message="the silent client's connection ended by the keepalive")
        wait_until(lambda: fenced.stream_connections()[0].last_pong is not None, 5)
        first, second = fenced.stream_connections()
        assert first.closed is None and first.last_pong is not None
        assert second.ended == "keepalive" and second.last_pong is None
        assert second.closed is not None and second.closed - second.opened < 3.0
        assert alive.connected
    finally:
        silent.close()


def _read_until_closed(ws: Any) -> None:
    while True:
        try:
            ws.recv()
        except Exception:  # noqa: BLE001 - closed at teardown: the reader ends
            return


def _silent_client(emu: Emulator) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", emu.stream_port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/audit/v1/user/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nAuthorization: {emu.auth_header}\r\n\r\n")
                 .encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock
