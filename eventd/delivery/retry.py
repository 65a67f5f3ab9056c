"""The retry policy of every delivery target: how long to wait before the next attempt.

Waits are per target, not per job (see `breaker.py`): while a target fails, one request
probes it at intervals that grow by the one backoff policy (`eventd.backoff`: full jitter from
about `initial` up to `max_wait`), never longer than the target has been down; a server that
says "come back at T" (429, or 503 with Retry-After) is waited for exactly that long, capped.
A job is dead-lettered once its next try would start after `deadline` seconds from its
acceptance (so a job resumed after a restart does not get a fresh 10 minutes).
"""

from __future__ import annotations

from dataclasses import dataclass

from eventd.backoff import Backoff
from eventd.settings import DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX

DEFAULT_DEADLINE = 600.0
DEFAULT_MAX_WAIT = DEFAULT_BACKOFF_MAX
DEFAULT_INITIAL_WAIT = DEFAULT_BACKOFF_INITIAL
#: A target is "open" (logged once, probed quietly) after failing for this long.
DEFAULT_OPEN_AFTER = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a job may be retried, and how the waits between a target's probes grow."""

    deadline: float = DEFAULT_DEADLINE
    max_wait: float = DEFAULT_MAX_WAIT
    initial_wait: float = DEFAULT_INITIAL_WAIT

    @property
    def backoff(self) -> Backoff:
        """The probes' waits: the backoff policy from `initial_wait` to `max_wait`."""
        return Backoff(self.initial_wait, self.max_wait)

    def told_wait(self, retry_after: float) -> float:
        """The wait a server asked for ("come back at T"), capped at `max_wait`."""
        return max(0.0, min(float(retry_after), self.max_wait))

    def gives_up(self, created_at: float, now: float, wait: float) -> bool:
        """Whether a job accepted at `created_at` would start its next try past the deadline."""
        return now + wait >= created_at + self.deadline
