"""The bounded hand-off between the stream reader and the engine, counted in events.

The reader hands over whole batches (one socket read each), but the bound is on events, so
memory stays flat whether a batch holds one event or a thousand. A full queue blocks the
reader (backpressure); nothing is ever dropped.

`claim()` lets a producer skip the queue when nothing waits in it and nothing is being
processed: it then processes its item on its own thread, in turn (the daemon's reader does
so with a read that found a backlog, see eventd.daemon).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class EventQueue:
    """A FIFO of batches holding at most `max_events` events (one oversized batch may pass)."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max(1, max_events)
        self._items: deque[tuple[Any, int]] = deque()
        self._events = 0
        self._unfinished = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._all_done = threading.Condition(self._lock)

    def put(self, item: Any, size: int, timeout: float | None = None) -> bool:
        """Add an item worth `size` events; wait while full. False if the timeout passed."""
        with self._not_full:
            if self._events and self._events + size > self.max_events:
                if not self._not_full.wait_for(
                        lambda: not self._events or self._events + size <= self.max_events,
                        timeout):
                    return False
            self._items.append((item, size))
            self._events += size
            self._unfinished += 1
            self._not_empty.notify()
            return True

    def claim(self, timeout: float | None = 0.0) -> bool:
        """Take the next turn without queueing, once nothing is queued or being processed
        (waiting up to `timeout` for that; None: as long as it takes): True means the caller
        processes its item at once and then calls `task_done()`, and until then every `put`
        waits its turn behind it (`join` counts it too). False if the timeout passed."""
        with self._lock:
            if self._unfinished and (timeout == 0 or not self._all_done.wait_for(
                    lambda: not self._unfinished, timeout)):
                return False
            self._unfinished += 1
            return True

    def get(self) -> Any:
        """Take the oldest item, waiting for one."""
        with self._not_empty:
            while not self._items:
                self._not_empty.wait()
            item, size = self._items.popleft()
            self._events -= size
            self._not_full.notify_all()
            return item

    def task_done(self) -> None:
        """The item last taken has been processed."""
        with self._lock:
            self._unfinished -= 1
            if self._unfinished == 0:
                self._all_done.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every item put has been processed."""
        with self._all_done:
            return self._all_done.wait_for(lambda: self._unfinished == 0, timeout)

    @property
    def events(self) -> int:
        """Events waiting now."""
        return self._events
