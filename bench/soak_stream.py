"""The soak's stream server: a steady rate of events to whichever eventd is connected, and faults.

One connection is live at a time (a new one replaces the old). A ticker sends `rate` events a
second to it, each with a fresh uuid, the current `datetime` and `bench_sent`; while no
connection is live, or the live one is silenced, no event is made (the real stream does not
replay either). Every send is written down: the soak's expectation is computed from it.
A new connection first gets the last few events again (a server that repeats itself after a
reconnect; the de-dup window must absorb them). Faults: `drop()` (a RST, after a pause in
which eventd reads what was sent) and `silence()` (no data and no pongs).
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass

from blaster import Connection, handshake
from streamgen import LiveEvents, _uuid4s, encode, text_frame

REPLAY = 10  # events sent again at the start of each new connection


@dataclass(frozen=True)
class Send:
    """One event written to a connection."""

    uuid: str
    kind: str
    state: str
    t: float
    conn: int


class SoakConnection(Connection):
    """A blaster connection that can be silenced: then nothing goes out, not even pongs."""

    silent = False

    def send(self, data: bytes | memoryview) -> None:
        if not self.silent:
            super().send(data)


class StreamServer:
    """Accepts eventd's websocket connections and feeds the live one at a steady rate."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.live_events = LiveEvents(seed)
        self.server = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = int(self.server.getsockname()[1])
        self.lock = threading.Lock()
        self.live: SoakConnection | None = None
        self.connections = 0
        self.sends: list[Send] = []
        self.recent: collections.deque[tuple[bytes, str, str, str]] = collections.deque(maxlen=REPLAY)
        self.paused = threading.Event()
        self.stopped = threading.Event()

    @property
    def host(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="soak-accept").start()
        threading.Thread(target=self._tick, daemon=True, name="soak-ticker").start()

    def stop(self) -> None:
        """No more events; the live connection stays open and idle."""
        self.stopped.set()

    def live_number(self) -> int | None:
        with self.lock:
            return self.live.number if self.live is not None and not self.live.closed.is_set() \
                else None

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._open, args=(sock,), daemon=True).start()

    def _open(self, sock: socket.socket) -> None:
        try:
            if not handshake(sock):
                sock.close()
                return
        except OSError:
            sock.close()
            return
        with self.lock:
            self.connections += 1
            conn = SoakConnection(sock, self.connections)
            conn.reader.start()
            old, self.live = self.live, conn
            try:
                for frame, uuid, kind, state in list(self.recent):
                    conn.send(frame)
                    self.sends.append(Send(uuid, kind, state, time.time(), conn.number))
            except OSError:
                pass
        if old is not None:
            old.hang_up(abrupt=True)

    def _tick(self) -> None:
        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self.stopped.is_set():
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                due = time.monotonic()  # far behind (a stalled machine): do not burst
            if self.paused.is_set():
                continue
            with self.lock:
                conn = self.live
                if conn is None or conn.silent:
                    continue
                if conn.closed.is_set():
                    self.live = None
                    continue
                event = dict(self.live_events._rng.choice(self.live_events._templates))
                uuid = _uuid4s(1).decode()
                now = time.time()
                event.update(uuid=uuid, bench_sent=now,
                             datetime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
                frame = text_frame(encode(event))
                try:
                    conn.send(frame)
                except OSError:
                    self.live = None
                    continue
                self.sends.append(Send(uuid, event["type"], event["state"], now, conn.number))
                self.recent.append((frame, uuid, event["type"], event["state"]))

    def drop(self) -> bool:
        """Pause a second (eventd reads what it was sent), then RST the live connection."""
        self.paused.set()
        try:
            time.sleep(1.0)
            with self.lock:
                conn, self.live = self.live, None
            if conn is None:
                return False
            conn.hang_up(abrupt=True)
            return True
        finally:
            self.paused.clear()

    def silence(self, seconds: float) -> tuple[bool, float]:
        """No data, no pongs, until eventd gives up on the connection or `seconds` pass.

        Returns whether eventd reconnected, and when the silence ended.
        """
        with self.lock:
            conn = self.live
            if conn is None:
                return False, time.time()
            conn.silent = True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if self.live is not conn:
                    return True, time.time()
            if conn.closed.wait(0.1):
                return True, time.time()
        conn.silent = False
        return False, time.time()
