"""Per-target health: whether a delivery target is failing, since when, and the next probe.

A target's first failure starts its outage; each further failure of the probe grows the wait
(a `Streak` of the policy's backoff), never beyond how long the target has been down (a 5 s
blip is never waited out for a minute). The circuit "opens" (said once, at WARNING) only after the target
has failed for `open_after` seconds, so a few-second blip stays a few lines of retries. An
answer that means "alive, come back later" (429, 503 with Retry-After) is not a failure: it
neither starts nor prolongs an outage. Any success closes the circuit at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from eventd.backoff import Streak
from eventd.delivery.retry import DEFAULT_OPEN_AFTER, RetryPolicy

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass
class _Outage:
    since: float
    streak: Streak  # the failed probes so far, and the wait after each
    opened: bool = False


class CircuitBreaker:
    """Per target: consecutive failures, outage start, open after `open_after` seconds."""

    def __init__(self, policy: RetryPolicy | None = None, open_after: float = DEFAULT_OPEN_AFTER,
                 clock: Clock = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy if policy is not None else RetryPolicy()
        self.open_after = open_after
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._outages: dict[str, _Outage] = {}

    def is_open(self, target: str) -> bool:
        """Whether `target` has been failing for `open_after` seconds or more."""
        with self._lock:
            outage = self._outages.get(target)
            return outage is not None and outage.opened

    def failing(self, target: str) -> bool:
        """Whether the last attempt on `target` failed (an outage is in progress)."""
        with self._lock:
            return target in self._outages

    def failing_targets(self) -> list[str]:
        """Every target in an outage now, sorted."""
        with self._lock:
            return sorted(self._outages)

    def failure(self, target: str) -> float:
        """Count a failed attempt; return how long to wait before probing `target` again."""
        now = self._clock()
        with self._lock:
            outage = self._outages.get(target)
            if outage is None:
                outage = self._outages[target] = _Outage(
                    since=now, streak=self.policy.backoff.streak(self._rng))
            down_for = now - outage.since
            wait = outage.streak.failed(cap=max(self.policy.initial_wait, down_for))
            failures = outage.streak.failures
            opening = not outage.opened and down_for >= self.open_after
            if opening:
                outage.opened = True
        if opening:
            logger.warning("circuit open for %s: failing for %.0f s (%d attempts); one request "
                           "probes it, at most every %.0f s, the rest of its queue waits",
                           target, down_for, failures, self.policy.max_wait)
        return wait

    def told(self, target: str, retry_after: float | None) -> float:
        """The target answered "come back later": not a failure. The wait before trying again."""
        if retry_after is None:  # the first step of the backoff
            return self.policy.backoff.streak(self._rng).failed()
        return self.policy.told_wait(retry_after)

    def success(self, target: str) -> None:
        """The target answered: the outage (if any) is over."""
        if target not in self._outages:  # the usual case, without the lock: only the
            return                       # target's own worker opens or closes its outage
        with self._lock:
            outage = self._outages.pop(target, None)
        if outage is not None and outage.opened:
            logger.info("circuit closed for %s: it answered again after %.0f s",
                        target, self._clock() - outage.since)

    def forget(self, target: str) -> None:
        """Drop what is known of a target whose lane was closed."""
        with self._lock:
            self._outages.pop(target, None)
