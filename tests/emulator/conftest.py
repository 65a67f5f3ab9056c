"""Fixtures for the emulator's own tests: a running emulator, REST sessions, stream clients."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from websocket import WebSocket, WebSocketTimeoutException, create_connection

from eventd.emulator import Emulator

EVENTS_PATH = "api/audit/v1/user/events"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """A started emulator on ephemeral ports with a fast world clock."""
    emulator = Emulator(tick=0.01)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def rest(emu: Emulator) -> Iterator[requests.Session]:
    """A requests session that sends the emulator's credentials."""
    session = requests.Session()
    session.headers.update({"Authorization": emu.auth_header, "Accept": "application/json"})
    try:
        yield session
    finally:
        session.close()


class Streams:
    """Opens websocket-client connections and closes them all at teardown."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.opened: list[WebSocket] = []

    def connect(self, path: str = EVENTS_PATH, auth: str | None = "default",
                base: str | None = None, read_auth: bool = True, timeout: float = 5.0
                ) -> WebSocket:
        header = []
        if auth is not None:
            header.append("Authorization: " + (self.emulator.auth_header
                                               if auth == "default" else auth))
        url = (base or self.emulator.stream_url) + path
        ws = create_connection(url, header=header, timeout=timeout)
        self.opened.append(ws)
        if read_auth:
            assert json.loads(ws.recv()) == {"type": "auth"}
        return ws

    def close_all(self) -> None:
        for ws in self.opened:
            try:
                ws.close(timeout=0.5)
            except Exception:  # noqa: BLE001 - already broken on purpose by a fault
                ws.shutdown()


@pytest.fixture
def streams(emu: Emulator) -> Iterator[Streams]:
    """Stream clients against `emu`, closed at teardown."""
    opened = Streams(emu)
    try:
        yield opened
    finally:
        opened.close_all()


def read_until(ws: WebSocket, done: Callable[[Any], bool], timeout: float = 5.0) -> list[Any]:
    """Read frames (JSON-decoded when possible) until `done(frame)`; fail at the deadline."""
    frames: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame within {timeout}s; got {frames!r}")
        ws.settimeout(remaining)
        try:
            text = ws.recv()
        except WebSocketTimeoutException:
            raise AssertionError(f"no matching frame within {timeout}s; got {frames!r}") from None
        try:
            frame = json.loads(text)
        except ValueError:
            frame = text
        frames.append(frame)
        if done(frame):
            return frames


def tail(uri: str) -> str:
    """`<type>/<uuid>` of a resource URI."""
    return "/".join([p for p in uri.split("/") if p][-2:])


def steps(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(type, action, state) of each event, for sequence assertions."""
    return [(e["type"], e["action"], e["state"]) for e in events]
