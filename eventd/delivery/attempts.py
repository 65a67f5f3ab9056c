"""One attempt of one job: run the kind, time it, count it, and say what it means.

Every way an attempt can end becomes one `Attempt` verdict, so the dispatcher decides on
verdicts instead of catching exceptions: done, follow up, skipped, refused for good, told
to come back later (429, 503 with Retry-After: the target is alive), or failed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from eventd.actions.base import ActionJob, ActionKind, FollowUp
from eventd.delivery.http import error_reason, is_told
from eventd.errors import ActionError, ActionSkipped, PermanentActionError, RetryableActionError
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics


class Verdict(enum.Enum):
    """How an attempt ended."""

    DONE = "done"
    FOLLOW = "follow"  # the call was made; something is left to follow (a Docker Cloud action)
    SKIPPED = "skipped"  # decided not to run (rate limit)
    REFUSED = "refused"  # permanent: a 4xx, a redirect, unsafe or invalid options
    TOLD = "told"  # alive, come back later: not a failure of the target
    FAILED = "failed"  # retryable failure of the target


@dataclass(frozen=True)
class Attempt:
    """The verdict of one attempt, with what it returned or raised."""

    verdict: Verdict
    result: str = ""
    follow_up: FollowUp | None = None
    error: BaseException | None = None

    @property
    def retry_after(self) -> float | None:
        """What the server asked for, if it did."""
        return self.error.retry_after if isinstance(self.error, ActionError) else None


class Attempts:
    """Runs attempts and counts them (`eventd_action_duration_seconds`, `..._errors_total`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def run(self, kind: ActionKind, job: ActionJob) -> Attempt:
        """One attempt of `job`; never raises."""
        job.attempts += 1
        started = time.perf_counter()
        try:
            returned = kind.run(job)
        except ActionSkipped as exc:
            return Attempt(Verdict.SKIPPED, error=exc)
        except PermanentActionError as exc:
            self._count_error(job.kind, exc)
            return Attempt(Verdict.REFUSED, error=exc)
        except RetryableActionError as exc:
            self._count_error(job.kind, exc)
            return Attempt(Verdict.TOLD if is_told(exc) else Verdict.FAILED, error=exc)
        except Exception as exc:
            self.metrics.action_errors.labels(kind=job.kind, reason="internal").inc()
            report_internal_error("action", exc, self.metrics)
            wrapped = RetryableActionError(f"internal error ({type(exc).__name__})")
            wrapped.__cause__ = exc
            return Attempt(Verdict.FAILED, error=wrapped)
        finally:
            self.metrics.action_duration.labels(kind=job.kind).observe(
                time.perf_counter() - started)
        if isinstance(returned, FollowUp):
            return Attempt(Verdict.FOLLOW, result=returned.description, follow_up=returned)
        return Attempt(Verdict.DONE, result=str(returned))

    def _count_error(self, kind: str, exc: BaseException) -> None:
        self.metrics.action_errors.labels(kind=kind, reason=error_reason(exc)).inc()
