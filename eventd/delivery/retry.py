"""The retry policy of every action: tenacity strategies composed, interruptible by shutdown.

Exponential backoff with jitter (at most `max_wait` between tries), never shorter than a
server's Retry-After, until a deadline counted from when the job was created (so a job
resumed after a restart does not get a fresh 10 minutes). Permanent errors are not retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_not_exception_type,
    sleep_using_event,
    stop_when_event_set,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from eventd.delivery.guards import ActionSkipped
from eventd.errors import PermanentActionError

DEFAULT_DEADLINE = 600.0
DEFAULT_MAX_WAIT = 60.0
DEFAULT_INITIAL_WAIT = 1.0


class Interrupted(Exception):
    """Shutdown began before an attempt: the job stays in the spool for the next start."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often one job is retried."""

    deadline: float = DEFAULT_DEADLINE
    max_wait: float = DEFAULT_MAX_WAIT
    initial_wait: float = DEFAULT_INITIAL_WAIT


class stop_at_deadline(stop_base):
    """Stop when the next try would start after `created_at + deadline` (wall clock)."""

    def __init__(self, created_at: float, deadline: float, clock: Callable[[], float]) -> None:
        self.until = created_at + deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep >= self.until


class wait_backoff(wait_base):
    """Exponential backoff with jitter, but never less than the error's `retry_after`."""

    def __init__(self, initial: float, max_wait: float) -> None:
        self.backoff = wait_exponential_jitter(multiplier=initial, max=max_wait, jitter=initial)

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.backoff(retry_state))
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after > wait:
            return float(retry_after)
        return wait


def retrying(policy: RetryPolicy, *, created_at: float, stopping: threading.Event,
             clock: Callable[[], float] = time.time,
             sleep: Callable[[float], None] | None = None,
             before_sleep: Callable[[RetryCallState], Any] | None = None) -> Retrying:
    """A Retrying for one job. Stopped or past the deadline it raises tenacity.RetryError;
    a permanent error, a skip or an interruption propagates as itself."""
    return Retrying(
        retry=retry_if_not_exception_type((PermanentActionError, ActionSkipped, Interrupted)),
        stop=stop_when_event_set(stopping) | stop_at_deadline(created_at, policy.deadline, clock),
        wait=wait_backoff(policy.initial_wait, policy.max_wait),
        sleep=sleep if sleep is not None else sleep_using_event(stopping),
        before_sleep=before_sleep,
        reraise=False,
    )
