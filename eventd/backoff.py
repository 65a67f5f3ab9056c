"""The one backoff policy: how long to wait after each failure in a row, on tenacity's strategies.

The stream's reconnects, a delivery target's probes and a backfill's retries all wait by it.
After the n-th failure in a row the ceiling is `initial * 2**(n-1)`, at most `maximum`
(tenacity's `wait_exponential`); the wait is drawn between `initial / 2` and that ceiling (full
jitter with a floor: replicas never retry in step, and never in a hot loop), or is the ceiling
itself where `jitter` is off.

Two ways to use it, both through tenacity's public API:
- `retrying()`: a `tenacity.Retrying` that runs the attempts (backfill), stopped by attempts or
  by a stop event, sleeping on that event;
- `Streak`: for a caller that waits its own way (the stream loop on its stop event, a delivery
  lane on its condition variable) and learns of failures one at a time. tenacity's own loop
  computes each step of the ladder: a `Retrying` whose attempts all fail and whose sleeps are
  recorded instead of slept. Nothing of tenacity outlives the call, so any thread may call.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_always,
    retry_if_exception_type,
    sleep_using_event,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from eventd.settings import DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX

#: a random number in [0, 1): the jitter's source, injectable so tests can pin it
Rng = Callable[[], float]
Wait = Callable[[RetryCallState], float]


@dataclass(frozen=True)
class Backoff:
    """Waits that double per failure in a row from `initial` up to `maximum`, with jitter."""

    initial: float = DEFAULT_BACKOFF_INITIAL
    maximum: float = DEFAULT_BACKOFF_MAX
    jitter: bool = True

    def ladder(self) -> wait_exponential:
        """The ceilings: `initial`, twice that... at most `maximum` (tenacity's strategy)."""
        return wait_exponential(multiplier=self.initial, max=self.maximum)

    def spread(self, ceiling: float, rng: Rng = random.random) -> float:
        """The wait under a ceiling: drawn between `initial / 2` and it, or it without jitter."""
        if not self.jitter:
            return ceiling
        low = min(self.initial / 2, ceiling)
        return low + (ceiling - low) * rng()

    def strategy(self, rng: Rng = random.random) -> Wait:
        """The whole policy as a tenacity wait strategy (the ladder, spread)."""
        ladder = self.ladder()
        return lambda state: self.spread(float(ladder(state)), rng)

    def ceiling(self, failures: int) -> float:
        """The ladder's step after `failures` failures in a row, as tenacity's loop computes it."""
        slept: list[float] = []
        retrying = Retrying(wait=self.ladder(), stop=stop_after_attempt(max(1, failures) + 1),
                            retry=retry_always, sleep=slept.append,
                            retry_error_callback=lambda state: None)
        for attempt in retrying:
            with attempt:  # each attempt counts as failed (retry_always)
                pass
        return slept[-1]

    def retrying(self, *, attempts: int, stopping: threading.Event,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...],
                 sleep: Callable[[float], None] | None = None,
                 before_sleep: Callable[[RetryCallState], None] | None = None,
                 rng: Rng = random.random) -> Retrying:
        """A Retrying that tries up to `attempts` times while `retry_on` is raised, waits by
        this policy on `stopping` (so a stop wakes it), and re-raises the last error.

        tenacity checks `stop` only after a failed attempt: an attempt that follows an
        interrupted sleep should check `stopping` first.
        """
        return Retrying(
            wait=self.strategy(rng),
            stop=stop_after_attempt(max(1, attempts)) | stop_when_event_set(stopping),
            retry=retry_if_exception_type(retry_on),
            sleep=sleep if sleep is not None else sleep_using_event(stopping),
            before_sleep=before_sleep, reraise=True)

    def streak(self, rng: Rng = random.random) -> Streak:
        """A new run of failures (after a success, or a healthy connection, start a new one)."""
        return Streak(self, rng)


class Streak:
    """Failures in a row of one thing (a connection, a delivery target), and the wait after each.

    The ladder is asked for its next step until it stops growing (at `maximum`), so a target
    that fails for a day costs no more per failure than one that failed twice.
    """

    def __init__(self, backoff: Backoff, rng: Rng = random.random) -> None:
        self.backoff = backoff
        self.failures = 0
        self._rng = rng
        self._ceiling = 0.0
        self._top = False  # the ladder reached its last step

    def failed(self, cap: float = math.inf) -> float:
        """Count one more failure; the wait before the next try (its ceiling at most `cap`)."""
        self.failures += 1
        if not self._top:
            ceiling = self.backoff.ceiling(self.failures)
            self._top = ceiling <= self._ceiling or ceiling >= self.backoff.maximum
            self._ceiling = ceiling
        return self.backoff.spread(min(self._ceiling, cap), self._rng)
