"""Wait for the store instead of dropping work: the accepting path's calls, retried.

While a store is unreachable (Redis down, a Sentinel failover), an action must be neither
dropped nor acted on without being stored. The engine's calls that accept work
(`spool_add` through the dispatcher, `throttle_acquire`) therefore wait here and try again,
holding the event they belong to; the engine's queue fills, the stream reader stops reading
(backpressure), and everything resumes by itself when the store answers again.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from eventd.errors import StoreError
from eventd.stores.base import Throttles

log = logging.getLogger(__name__)

R = TypeVar("R")

FIRST_WAIT = 0.1
MAX_WAIT = 2.0


def until_stored(call: Callable[[], R], stopping: threading.Event, op: str) -> R:
    """`call()` until it stops raising StoreError, waiting 0.1 s doubling to 2 s between tries;
    the last StoreError once `stopping` is set (nothing can be stored during a stop). While it
    waits, `waiting_for(stopping)` says since when (the first failure)."""
    try:
        return call()
    except StoreError as exc:
        if stopping.is_set():
            raise
        first = exc
    return _wait_and_retry(call, stopping, op, first)


def _wait_and_retry(call: Callable[[], R], stopping: threading.Event, op: str,
                    first: StoreError) -> R:
    """The waiting part of `until_stored`, off the path of a call that succeeds at once."""
    since = time.monotonic()
    log.error("store: %s failed (%s); holding this event and trying again until the "
              "store answers", op, first)
    token = object()
    with _waits_lock:
        _waits.setdefault(stopping, {})[token] = since
    try:
        wait = FIRST_WAIT
        while True:
            stopping.wait(wait)
            wait = min(MAX_WAIT, wait * 2)
            try:
                result = call()
            except StoreError:
                if stopping.is_set():
                    raise
                continue
            log.warning("store: %s succeeded after %.1f s of waiting", op,
                        time.monotonic() - since)
            return result
    finally:
        with _waits_lock:
            _waits.get(stopping, {}).pop(token, None)


#: per `stopping` event (one a daemon), since when each caller now held in `until_stored` has
#: waited: a cluster replica whose engine waits on the store takes no free stream
_waits: weakref.WeakKeyDictionary[threading.Event, dict[object, float]] = \
    weakref.WeakKeyDictionary()
_waits_lock = threading.Lock()


def waiting_for(stopping: threading.Event) -> float:
    """Seconds the longest caller of `until_stored` with this `stopping` event has been held
    waiting for the store (0: none is)."""
    with _waits_lock:
        started = min(_waits.get(stopping, {}).values(), default=None)
    return 0.0 if started is None else time.monotonic() - started


class WaitingThrottles:
    """The engine's view of the store: `throttle_acquire` waits for the store (see above)."""

    def __init__(self, store: Throttles, stopping: threading.Event) -> None:
        self._store = store
        self._stopping = stopping

    def throttle_acquire(self, key: str, window: float, now: float) -> bool:
        """The store's answer, once it gives one; False if the daemon stops first."""
        try:
            return until_stored(lambda: self._store.throttle_acquire(key, window, now),
                                self._stopping, "throttle_acquire")
        except StoreError:
            log.warning("stopping while the store is unreachable: a throttled action not taken")
            return False
