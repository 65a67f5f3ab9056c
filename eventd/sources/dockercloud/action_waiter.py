"""Follow Docker Cloud actions through the stream's `action` events instead of polling.

The engine feeds every `action` event to `observe` (a stream batch's, as (uuid, state) pairs
to `observe_states` at the batch's end); a `dockercloud` action with `wait: true`
calls `wait(action_uri, timeout)`. Terminal states are remembered for a while, because the
event may arrive before the caller starts waiting (the REST answer and the stream race).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from eventd.clients.dockercloud.rest import TERMINAL_STATES
from eventd.events import object_ref

__all__ = ["TERMINAL_STATES", "ActionWaiter"]


class ActionWaiter:
    """Terminal states of recently seen actions, by action uuid, with waiting."""

    def __init__(self, remember: float = 600.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.remember = remember
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()  # observe() takes it in C, not the Condition's Python
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # callers in wait(): only then does a terminal state notify
        self._states: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def observe(self, event: dict[str, Any]) -> None:
        """Note an `action` event's state if it is terminal."""
        state = event.get("state")
        if not isinstance(state, str) or state not in TERMINAL_STATES:  # a list is data too
            return
        ref = object_ref(event.get("resource_uri"))
        if ref is None:
            return
        now = self._clock()
        with self._lock:
            self._states[ref.uuid] = (str(state), now)
            self._states.move_to_end(ref.uuid)
            while len(self._states) > self.max_entries:
                self._states.popitem(last=False)
            if self._waiting:
                self._cond.notify_all()

    def observe_states(self, seen: list[tuple[str, str]]) -> None:
        """`observe` a batch's actions at once, in order, as (action uuid, state) pairs
        (the engine's, at the batch's end): one lock, one reading of the clock."""
        terminal = [pair for pair in seen if pair[1] in TERMINAL_STATES]
        if not terminal:
            return
        now = self._clock()
        states, limit = self._states, self.max_entries
        with self._lock:
            for uuid, state in terminal:
                states[uuid] = (state, now)
                states.move_to_end(uuid)
            while len(states) > limit:  # the newest `limit`, as when each was observed alone
                states.popitem(last=False)
            if self._waiting:
                self._cond.notify_all()

    def state(self, action_uri: str) -> str | None:
        """The terminal state seen for this action, or None."""
        ref = object_ref(action_uri)
        if ref is None:
            return None
        with self._lock:
            found = self._states.get(ref.uuid)
        if found is None or self._clock() - found[1] > self.remember:
            return None
        return found[0]

    def wait(self, action_uri: str, timeout: float,
             stopping: threading.Event | None = None) -> str | None:
        """Wait for the action to end; its terminal state, or None at the timeout or stop."""
        ref = object_ref(action_uri)
        if ref is None:
            return None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._states.get(ref.uuid)
                if found is not None:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0 or (stopping is not None and stopping.is_set()):
                    return None
                self._waiting += 1
                try:
                    self._cond.wait(min(left, 0.2))
                finally:
                    self._waiting -= 1
