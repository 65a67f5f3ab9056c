"""One attempt of one job: through the gate, then the kind; timed, counted, and judged.

An attempt is `gate.check_job`, `kind.prepare`, `gate.admit`, `kind.send` (eventd.delivery.gate
says why); only `send` makes a request. Every way an attempt can end becomes one `Attempt`
verdict, so the dispatcher decides on verdicts instead of catching exceptions: done, follow
up, skipped, refused at the gate, refused for good, told to come back later (429, 503 with
Retry-After: the target is alive), or failed; and, in a cluster, left (the job's namespace
is no longer this replica's: it stays in the spool for the lease's holder).

Fencing (issue 25): in a cluster each request carries `Eventd-Fencing-Token: <cluster>/<ns>:
<token>`, the lease of the job's namespace, read where the request is made (not when the job
was accepted), so a replica that lost its lease (paused, cut off) never sends on it, and a
server that keeps the highest token seen refuses (409) a request that was already on its way.
A request still on its way when the lease ends here is reset (`abort`): TCP would deliver it
after a partition heals, under a lease that is another replica's by then; its job is LEFT
in the spool for the next holder, who sends it under its own token.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

from eventd.actions.base import ActionKind, Batching, FollowUp
from eventd.clients.http import Abortable, abort_requests, error_reason, is_told, requests_under
from eventd.delivery.gate import Gate
from eventd.errors import (
    ActionError,
    ActionSkipped,
    GateRefused,
    PermanentActionError,
    RetryableActionError,
)
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.outbound import FENCING_HEADER, BadAddress, Outbound
from eventd.records import ActionJob

_DONES = 64  # distinct DONE results kept built

#: a job -> the fencing header's value while this replica holds the lease of the job's
#: namespace; "" when no lease covers the job (sent unfenced); None when another replica's
Fence = Callable[[ActionJob], "str | None"]
#: the policies whose calls are HTTP requests (the header means something there)
_HTTP_POLICIES = frozenset({"http", "dockercloud"})


class Verdict(enum.Enum):
    """How an attempt ended."""

    DONE = "done"
    FOLLOW = "follow"  # the call was made; something is left to follow (a Docker Cloud action)
    SKIPPED = "skipped"  # decided not to run (rate limit)
    GATED = "gated"  # refused at the gate: no request was made
    REFUSED = "refused"  # permanent: a 4xx, a redirect, unsafe or invalid options
    TOLD = "told"  # alive, come back later: not a failure of the target
    FAILED = "failed"  # retryable failure of the target
    LEFT = "left"  # the job's namespace is another replica's now: left in the spool for it


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
    """Runs attempts through the gate and counts them (`eventd_action_duration_seconds`,
    `..._errors_total`; the gate counts its refusals)."""

    def __init__(self, metrics: Metrics, gate: Gate, fence: Fence | None = None) -> None:
        self.metrics = metrics
        self.gate = gate

        self.fence = fence
        self._inflight: dict[str, int] = {}  # fencing token -> requests on their way
        self._quiet = threading.Condition()
        self._dones: dict[str, Attempt] = {}

    def _duration(self, kind: str) -> Any:
        """eventd_action_duration_seconds' series of `kind` that this thread observes into."""
        return self.metrics.action_duration.mine(kind)

    def quiesce(self, scope: str, timeout: float) -> bool:
        """Wait until no request fenced by a token of `scope` (`<cluster>/<ns>:`) is on its
        way: a lease is freed only once what was sent under it has been answered. False at
        the timeout."""
        with self._quiet:
            return self._quiet.wait_for(
                lambda: not any(token.startswith(scope) for token in self._inflight), timeout)

    def abort(self, scope: str) -> int:
        """Reset the requests on their way under a token of `scope` (`<cluster>/<ns>:`): the
        lease ended here. Their attempts end LEFT (the job stays in the spool for the next
        holder). How many attempts were hit."""
        return abort_requests(scope)

    def _sending(self, token: str, change: int) -> None:
        if not token:
            return
        with self._quiet:
            left = self._inflight.get(token, 0) + change
            if left > 0:
                self._inflight[token] = left
            else:
                self._inflight.pop(token, None)
                self._quiet.notify_all()

    def run(self, kind: ActionKind, job: ActionJob, durable: bool | None = None) -> Attempt:
        """One attempt of `job`; never raises. `durable`: whether it came from the spool
        (the kind's default unless the job's options decide, as an audit table's do)."""
        durable = kind.durable if durable is None else durable
        token = self._token(job) if durable else ""  # a local kind (log, audit file): no lease
        if token is None:
            return Attempt(Verdict.LEFT)
        job.attempts += 1
        started = time.perf_counter()
        gate = self.gate
        self._sending(token, 1)
        scope: Abortable | None = None
        try:
            grant = gate.check_job(job, durable)
            try:
                outbound = fenced(kind.prepare(job), token)
            except BadAddress as exc:
                raise gate.unparsable(job, exc) from None
            gate.admit(job, outbound, grant)
            if token:  # reset if the lease ends while it is on its way (see abort)
                scope = requests_under(token, lambda: self._token(job) == token)
            returned = kind.send(job, outbound)
        except GateRefused as exc:
            return Attempt(Verdict.GATED, error=exc)
        except ActionSkipped as exc:
            return Attempt(Verdict.SKIPPED, error=exc)
        except PermanentActionError as exc:
            if scope is not None and scope.aborted:
                return Attempt(Verdict.LEFT, error=exc)
            fenced_off = self._fenced_off(job, token, exc)
            if fenced_off is not None:
                return fenced_off
            self._count_error(job.kind, exc)
            return Attempt(Verdict.REFUSED, error=exc)
        except RetryableActionError as exc:
            if scope is not None and scope.aborted:
                return Attempt(Verdict.LEFT, error=exc)
            self._count_error(job.kind, exc)
            return Attempt(Verdict.TOLD if is_told(exc) else Verdict.FAILED, error=exc)
        except Exception as exc:
            if scope is not None and scope.aborted:
                return Attempt(Verdict.LEFT, error=exc)
            self.metrics.action_errors.labels(kind=job.kind, reason="internal").inc()
            report_internal_error("action", exc, self.metrics)
            wrapped = RetryableActionError(f"internal error ({type(exc).__name__})")
            wrapped.__cause__ = exc
            return Attempt(Verdict.FAILED, error=wrapped)
        finally:
            if scope is not None:
                scope.end()
            self._sending(token, -1)
            self._duration(job.kind).observe(time.perf_counter() - started)
        if isinstance(returned, FollowUp):
            return Attempt(Verdict.FOLLOW, result=returned.description, follow_up=returned)
        return self._done(returned)

    def _done(self, returned: object) -> Attempt:
        """The DONE attempt for a result (frozen: the few results a kind returns, "written",
        "HTTP 200", are each built once)."""
        result = returned if type(returned) is str else str(returned)
        attempt = self._dones.get(result)
        if attempt is None:
            attempt = Attempt(Verdict.DONE, result=result)
            if len(self._dones) < _DONES:
                self._dones[result] = attempt
        return attempt

    def run_batch(self, kind: ActionKind, jobs: list[ActionJob], durable: bool) -> list[Attempt]:
        """One attempt of each job, the admitted ones sent together (`kind.send_batch`); the
        verdicts in order. Never raises."""
        started = time.perf_counter()
        gate = self.gate
        verdicts: list[Attempt | None] = [None] * len(jobs)
        admitted: list[tuple[int, ActionJob, Outbound]] = []
        tokens: dict[str, str] = {}
        for index, job in enumerate(jobs):
            token = self._token(job) if durable else ""
            if token is None:
                verdicts[index] = Attempt(Verdict.LEFT)
                continue
            tokens[job.id] = token
            job.attempts += 1
            try:
                grant = gate.check_job(job, durable)
                try:
                    outbound = fenced(kind.prepare(job), token)
                except BadAddress as exc:
                    raise gate.unparsable(job, exc) from None
                gate.admit(job, outbound, grant)
            except Exception as exc:  # noqa: BLE001 - judged like a send's failure
                verdicts[index] = self._judge(job, exc)
            else:
                admitted.append((index, job, outbound))
        if admitted:
            send_batch = cast(Batching, kind).send_batch
            results: list[str | ActionError]
            for _, job, _ in admitted:
                self._sending(tokens[job.id], 1)
            try:
                results = list(send_batch([(job, outbound) for _, job, outbound in admitted]))
                if len(results) != len(admitted):
                    raise RuntimeError(f"{kind.name}.send_batch returned {len(results)} results "
                                       f"for {len(admitted)} jobs")
            except ActionError as exc:  # the whole batch failed alike
                results = [exc] * len(admitted)
            except Exception as exc:  # noqa: BLE001 - counted once, as internal
                self.metrics.action_errors.labels(kind=kind.name, reason="internal").inc()
                report_internal_error("action", exc, self.metrics)
                wrapped = RetryableActionError(f"internal error ({type(exc).__name__})")
                wrapped.__cause__ = exc
                results = [wrapped] * len(admitted)
            finally:
                for _, job, _ in admitted:
                    self._sending(tokens[job.id], -1)
            for (index, job, _), result in zip(admitted, results, strict=True):
                fenced_off = self._fenced_off(job, tokens[job.id], result) \
                    if isinstance(result, BaseException) else None
                if fenced_off is not None:
                    verdicts[index] = fenced_off
                    continue
                verdicts[index] = self._judge(job, result) if isinstance(result, BaseException) \
                    else self._done(result)
        share = (time.perf_counter() - started) / len(jobs)
        duration = self._duration(kind.name)
        for _ in jobs:
            duration.observe(share)
        return [verdict for verdict in verdicts if verdict is not None]

    def _token(self, job: ActionJob) -> str | None:
        """The fencing header's value for `job` now ("" unfenced); None: not ours to send."""
        return "" if self.fence is None else self.fence(job)

    def _fenced_off(self, job: ActionJob, token: str, exc: BaseException) -> Attempt | None:
        """The verdict on a fenced request refused with 409, None for any other failure.
        The lease moved on: the server had seen the new holder's token, the job stays in the
        spool for it (LEFT). The lease still ours here: the server saw a higher token from a
        holder this replica does not know of (a Redis split brain) or the target refuses it
        for its own reasons; either way a retry with backoff (dead-lettered at the deadline),
        never a dead letter at once, which would lose the job to a passing split brain."""
        if not token or not isinstance(exc, ActionError) or exc.status_code != 409:
            return None
        assert self.fence is not None
        if self.fence(job) != token:
            return Attempt(Verdict.LEFT, error=exc)
        self._count_error(job.kind, exc)
        retry = RetryableActionError(str(exc), status_code=409, detail=exc.detail)
        retry.__cause__ = exc
        return Attempt(Verdict.FAILED, error=retry)

    def _judge(self, job: ActionJob, exc: BaseException) -> Attempt:
        """The verdict of an attempt that raised `exc`."""
        if isinstance(exc, GateRefused):
            return Attempt(Verdict.GATED, error=exc)
        if isinstance(exc, ActionSkipped):
            return Attempt(Verdict.SKIPPED, error=exc)
        if isinstance(exc, PermanentActionError):
            self._count_error(job.kind, exc)
            return Attempt(Verdict.REFUSED, error=exc)
        if isinstance(exc, RetryableActionError):
            self._count_error(job.kind, exc)
            return Attempt(Verdict.TOLD if is_told(exc) else Verdict.FAILED, error=exc)
        self.metrics.action_errors.labels(kind=job.kind, reason="internal").inc()
        report_internal_error("action", exc, self.metrics)
        wrapped = RetryableActionError(f"internal error ({type(exc).__name__})")
        wrapped.__cause__ = exc
        return Attempt(Verdict.FAILED, error=wrapped)

    def _count_error(self, kind: str, exc: BaseException) -> None:
        self.metrics.action_errors.labels(kind=kind, reason=error_reason(exc)).inc()


def fenced(outbound: Outbound, token: str) -> Outbound:
    """`outbound` with the fencing header on each of its HTTP calls (as it is when no token)."""
    if not token or outbound.policy not in _HTTP_POLICIES:
        return outbound
    header = (FENCING_HEADER, token)
    return replace(outbound, calls=tuple(replace(call, headers=(*call.headers, header))
                                         for call in outbound.calls))
