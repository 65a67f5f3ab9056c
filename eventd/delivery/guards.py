"""Guards that keep eventd from hurting what it automates: loops, call floods, dead endpoints.

- LoopGuard: remembers which objects eventd itself acted on, so the events those calls cause
  are recognised (a redeploy that triggers the rule that redeploys).
- TargetLimiter: at most N REST actions per target object per window, checked at run time.
- CircuitBreaker: after N consecutive failures of one delivery target, pause it for a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from eventd.errors import EventdError
from eventd.events import ObjectRef, object_ref

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class ActionSkipped(EventdError):
    """An action decided not to run (e.g. rate-limited); finished without a call, not retried."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # a bounded label: "rate_limited"


class LoopGuard:
    """Objects eventd called a REST action on within `window` seconds, by type+uuid."""

    def __init__(self, window: float = 300.0, clock: Clock = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._called: dict[ObjectRef, float] = {}

    def record(self, target_uri: str) -> None:
        """Note that eventd is about to act on `target_uri`."""
        ref = object_ref(target_uri)
        if ref is None:
            return
        now = self._clock()
        with self._lock:
            self._called[ref] = now
            if len(self._called) > 1000:
                self._prune(now)

    def is_self_caused(self, event: dict[str, Any]) -> bool:
        """Whether the event's object or one of its parents was acted on within the window."""
        with self._lock:
            if not self._called:
                return False
            now = self._clock()
            uris = [event.get("resource_uri")]
            parents = event.get("parents")
            if isinstance(parents, list):
                uris.extend(parents)
            for uri in uris:
                ref = object_ref(uri)
                if ref is None:
                    continue
                at = self._called.get(ref)
                if at is not None and now - at <= self.window:
                    return True
            return False

    def _prune(self, now: float) -> None:
        for ref in [r for r, at in self._called.items() if now - at > self.window]:
            del self._called[ref]


class TargetLimiter:
    """At most `max_calls` actions per target per `per` seconds; retries of one job count once."""

    def __init__(self, max_calls: int = 3, per: float = 600.0, clock: Clock = time.monotonic) -> None:
        self.max_calls = max_calls
        self.per = per
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[str, list[tuple[float, str]]] = {}  # target -> [(when, job id)]
        self._warned: dict[str, float] = {}  # target -> when the refusal was logged

    def acquire(self, target: str, job_id: str) -> bool:
        """True if this job may call `target` now (and count it); False over the limit."""
        key = self._key(target)
        now = self._clock()
        with self._lock:
            calls = [(at, jid) for at, jid in self._calls.get(key, []) if now - at < self.per]
            self._calls[key] = calls
            if any(jid == job_id for _, jid in calls):
                return True
            if len(calls) < self.max_calls:
                calls.append((now, job_id))
                return True
            warned = self._warned.get(key)
            first = warned is None or now - warned >= self.per
            if first:
                self._warned[key] = now
        if first:
            logger.warning("rate limit: %s already had %d action(s) in the last %.0f s; "
                           "skipping further actions on it until the window passes",
                           target, self.max_calls, self.per)
        return False

    @staticmethod
    def _key(target: str) -> str:
        ref = object_ref(target)
        return f"{ref.type}/{ref.uuid}" if ref is not None else target


class CircuitBreaker:
    """Per target: open after `threshold` consecutive failures, probe again after `cooldown`."""

    def __init__(self, threshold: int = 5, cooldown: float = 60.0,
                 clock: Clock = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._opened_at: dict[str, float] = {}

    def wait_time(self, target: str) -> float:
        """Seconds to wait before the next attempt on `target` (0: go, possibly as the probe)."""
        with self._lock:
            opened = self._opened_at.get(target)
            if opened is None:
                return 0.0
            return max(0.0, opened + self.cooldown - self._clock())

    def is_open(self, target: str) -> bool:
        """Whether `target` is paused after repeated failures."""
        with self._lock:
            return target in self._opened_at

    def failure(self, target: str) -> None:
        """Count a failed attempt; open (or re-open after a failed probe) at the threshold."""
        with self._lock:
            count = self._failures.get(target, 0) + 1
            self._failures[target] = count
            if count < self.threshold:
                return
            reopened = target in self._opened_at
            self._opened_at[target] = self._clock()
        if not reopened:
            logger.warning("circuit open for %s after %d consecutive failures; "
                           "pausing it, next probe in %.0f s", target, count, self.cooldown)
        else:
            logger.debug("probe of %s failed; next probe in %.0f s", target, self.cooldown)

    def success(self, target: str) -> None:
        """A success closes the circuit."""
        with self._lock:
            self._failures.pop(target, None)
            was_open = self._opened_at.pop(target, None) is not None
        if was_open:
            logger.info("circuit closed for %s: it answered again", target)
