"""Read-ahead while a sink holds the stream reader up: one keeper thread for the process.

The stream consumer reads its socket and hands each read's events to its sink on one thread.
A sink that blocks (the engine's spool waiting on a stalled store: ~10 s at a Redis failover)
used to stop the reading: the server's pings went unanswered and its keepalive dropped the
connection, and what it sent meanwhile fell into a gap. Now the consumer reads under its
connection's `ReadAhead.lock` and lets go of it while it delivers; once a delivery has held
it `KEEP_AFTER`, the keeper reads the connection in its place (the reader answers the pings),
stashing every read with when it came in, up to a bound in messages and bytes. Full, it stops
reading: TCP backpressure, and the server drops the connection as before the read-ahead.
Back from the sink, the consumer delivers the stash first, in order, then reads on; a stash
entry carries what the consumer's own read would have told it (when the read began waiting,
when the data came in, whether it filled its room), so one piece of code dates every read.

One keeper for every consumer of the process, not one per consumer: it wakes `TICK` to look
at the consumers' holds, one wake-up for all of them (one per consumer would be N), and reads
only while a hold lasts, polling the held sockets together. Nothing is signalled per read.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from websocket import WebSocketException

from eventd.ops.internal import report_internal_error
from eventd.sources.dockercloud.framing import ConnectionEnded, FrameReader, FramingError

#: a delivery that held the reader up this long gets its connection read by the keeper
#: (a fraction of any keepalive: the chaos test's server pings every 0.5 s, wants a pong in
#: 1 s); kept under the stream's `_HELD`, so that a hold the keeper covers is no hold
KEEP_AFTER = 0.1
#: how often the keeper looks at the holds, and its longest poll of the held sockets
TICK = 0.1
#: what a stash entry costs beside its messages' bytes (a read without events costs this)
ENTRY_COST = 64
#: a stash entry: (asked, heard, filled, wall, messages, size): when the read began waiting
#: for its data (monotonic), when the data was there, whether it filled the reader's room,
#: when it came in (POSIX time), its messages (copies), its size for the bound. `messages`
#: None: no read, the keeper watched the socket until `heard` (the consumer appends it when
#: it comes back)
Entry = tuple[float, float, bool, float, list[bytes | memoryview] | None, int]
_POLLED = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


class ReadAhead:
    """One connection's read-ahead: the lock that says who reads it, and the stash."""

    def __init__(self, reader: FrameReader, sock: socket.socket,
                 held_since: Callable[[], float | None], stopped: Callable[[], bool],
                 clock: Callable[[], float], max_events: int, max_bytes: int,
                 metrics: Any = None) -> None:
        """`held_since`: since when (monotonic) the consumer has been in its sink, or None;
        `metrics`: where the keeper counts an unexpected error of its own."""
        self.metrics = metrics
        #: held by whoever reads the connection: the consumer, except while it delivers
        self.lock = threading.Lock()
        #: reads the keeper made, oldest first (taken by the consumer, under `lock`)
        self.stash: deque[Entry] = deque()
        #: the keeper watched the socket, in this hold, until then (monotonic)
        self.watched: float | None = None
        self.events = 0
        self.size = 0
        self.closed = False  # the connection is being let go: nobody reads it here any more
        self.ended = False  # the keeper found it ended or broken: the consumer's read will too
        self._reader = reader
        self._sock = sock
        self._held_since = held_since
        self._stopped = stopped
        self._clock = clock
        self._max_events = max(1, max_events)
        self._max_bytes = max(1, max_bytes)
        self._hold: float | None = None  # the hold (its held_since) being kept
        self._asked = 0.0  # the keeper has waited on the socket since then (this hold)

    # -- the consumer's side (under `lock`) -----------------------------------------------------
    def take(self) -> Entry:
        """The oldest stashed read, for the consumer to deliver."""
        entry = self.stash.popleft()
        messages = entry[4]
        if messages is not None:
            self.events -= len(messages)
            self.size -= entry[5]
        return entry

    def end_hold(self) -> None:
        """The consumer is back from its sink: mark until when the keeper watched the socket
        (after the reads it stashed), so that a hold is counted from then, not from its last read."""
        watched, self.watched = self.watched, None
        if watched is not None:
            self.stash.append((watched, watched, False, 0.0, None, 0))

    def shut(self) -> None:
        """Let the connection go: the keeper reads it no more (waits out a read under way)."""
        with self.lock:
            self.closed = True

    # -- the keeper's side ----------------------------------------------------------------------
    def due(self, now: float) -> bool:
        """Whether the keeper should read this connection now (its consumer held up)."""
        since = self._held_since()
        if since is None or now - since < KEEP_AFTER or self.closed or self.ended \
                or self.events >= self._max_events or self.size >= self._max_bytes \
                or self._stopped():
            return False
        if since != self._hold:  # a new hold: waited on from now
            self._hold = since
            self._asked = now
        return True

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed: `interrupt` shut it)."""
        return self._sock.fileno()

    def pending(self) -> bool:
        """Whether TLS holds decrypted data that a poll of the socket does not show."""
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def keep(self, readable: bool, polled: float) -> None:
        """After a poll that returned at `polled`: read the connection if it is `readable`
        and its consumer is still held up in the same hold, and stash what came."""
        if not self.lock.acquire(blocking=False):
            return  # the consumer is back and reads
        try:
            if self.closed or self.ended or self._held_since() != self._hold:
                return
            if not readable:
                self.watched = polled
                return
            reader = self._reader
            try:
                messages = reader.read()
            except TimeoutError:  # a partial TLS record: waited for, the rest comes next time
                self.watched = polled
                return
            except (ConnectionEnded, FramingError, OSError, ValueError, WebSocketException):
                self.ended = True  # the consumer's next read finds the same end
                return
            copies: list[bytes | memoryview] = [bytes(m) for m in messages]
            size = sum(map(len, copies)) + ENTRY_COST
            self.stash.append((self._asked, polled, reader.filled, self._clock(), copies, size))
            self.events += len(copies)
            self.size += size
            self._asked = self.watched = polled
            if reader.close_frame is not None or reader.broken is not None:
                self.ended = True
        finally:
            self.lock.release()


class Keeper:
    """The thread that reads held-up consumers' connections (one for the process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: list[ReadAhead] = []
        self._thread: threading.Thread | None = None

    def watch(self, ahead: ReadAhead) -> None:
        """Keep `ahead`'s connection read whenever its consumer is held up (from now on)."""
        with self._lock:
            self._watched.append(ahead)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="eventd-keeper",
                                                daemon=True)
                self._thread.start()

    def forget(self, ahead: ReadAhead) -> None:
        """Stop watching `ahead` (its connection is let go); the thread ends with the last."""
        with self._lock:
            if ahead in self._watched:
                self._watched.remove(ahead)

    def _run(self) -> None:
        monotonic, sleep = time.monotonic, time.sleep
        while True:
            with self._lock:
                watched = list(self._watched)
                if not watched:
                    self._thread = None
                    return
            try:
                now = monotonic()
                due = [ahead for ahead in watched if ahead.due(now)]
                if due:
                    self._read(due)
                    continue
            except Exception as exc:  # noqa: BLE001 - the keeper must not die unseen
                metrics = next((a.metrics for a in watched if a.metrics is not None), None)
                report_internal_error("readahead", exc, metrics)
            sleep(TICK)

    @staticmethod
    def _read(due: list[ReadAhead]) -> None:
        """Poll the held connections together (up to TICK), then read those with data."""
        poller = select.poll()
        by_fd: dict[int, ReadAhead] = {}
        waiting = False
        for ahead in due:
            fd = ahead.fileno()
            if fd < 0:
                ahead.keep(True, time.monotonic())  # shut: the read says so (ended)
                continue
            by_fd[fd] = ahead
            poller.register(fd, _POLLED)
            waiting = waiting or ahead.pending()
        if not by_fd:
            return
        try:
            ready = {fd for fd, _ in poller.poll(0 if waiting else TICK * 1000)}
        except OSError:
            ready = set(by_fd)  # a descriptor closed meanwhile: each read tells which
        polled = time.monotonic()
        for fd, ahead in by_fd.items():
            ahead.keep(fd in ready or ahead.pending(), polled)


#: the process's keeper
KEEPER = Keeper()
