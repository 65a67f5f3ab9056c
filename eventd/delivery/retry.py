"""The retry policy of every delivery target: how long to wait before the next attempt.

Waits are per target, not per job (see `breaker.py`): while a target fails, one request
probes it at intervals that grow with full jitter from about `initial` to `max_wait`; a
server that says "come back at T" (429, or 503 with Retry-After) is waited for exactly
that long, capped. A job is dead-lettered once its next try would start after `deadline`
seconds from its acceptance (so a job resumed after a restart does not get a fresh 10 minutes).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_DEADLINE = 600.0
DEFAULT_MAX_WAIT = 60.0
DEFAULT_INITIAL_WAIT = 1.0
#: A target is "open" (logged once, probed quietly) after failing for this long.
DEFAULT_OPEN_AFTER = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a job may be retried, and how the waits between a target's probes grow."""

    deadline: float = DEFAULT_DEADLINE
    max_wait: float = DEFAULT_MAX_WAIT
    initial_wait: float = DEFAULT_INITIAL_WAIT

    def probe_wait(self, failures: int, down_for: float = float("inf"),
                   rng: Callable[[], float] = random.random) -> float:
        """Full jitter up to a ceiling that doubles per failure from `initial`, and never
        exceeds how long the target has been down (a 5 s blip is never waited out for a
        minute), nor `max_wait`."""
        ceiling = min(self.max_wait, self.initial_wait * 2.0 ** max(0, failures - 1),
                      max(self.initial_wait, down_for))
        floor = min(self.initial_wait / 2, ceiling)
        return floor + (ceiling - floor) * rng()

    def told_wait(self, retry_after: float) -> float:
        """The wait a server asked for ("come back at T"), capped at `max_wait`."""
        return max(0.0, min(float(retry_after), self.max_wait))

    def gives_up(self, created_at: float, now: float, wait: float) -> bool:
        """Whether a job accepted at `created_at` would start its next try past the deadline."""
        return now + wait >= created_at + self.deadline
