"""Delivery of actions: one bounded lane and worker per target, the spool behind durable kinds.

Durable kinds (webhook, alertmanager, dockercloud) are accepted once committed to the spool;
the lane's in-memory backlog is only a cache of it. When a backlog is full the job stays in
the spool and the lane "spills": later jobs of that target go to the spool only, and the
worker refills from it in order, so one dead endpoint never blocks the caller or loses work.
Non-durable kinds (log, audit) block the caller when their backlog is full.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import requests
import tenacity

from eventd.actions.base import ActionContext, ActionJob, ActionKind
from eventd.delivery.guards import ActionSkipped, CircuitBreaker
from eventd.delivery.retry import Interrupted, RetryPolicy, retrying
from eventd.errors import ActionError, PermanentActionError, RetryableActionError, StoreError
from eventd.ops.internal import report_internal_error
from eventd.stores.base import Store

logger = logging.getLogger(__name__)

_BATCH = 512  # most jobs an in-memory lane's worker takes at once


class _Lane:
    """One delivery target: its backlog, its workers, and whether the spool holds more of it."""

    def __init__(self, target: str, durable: bool, size: int) -> None:
        self.target = target
        self.durable = durable
        self.size = size
        self.cond = threading.Condition()
        self.backlog: deque[ActionJob] = deque()
        self.known: set[str] = set()  # ids in the backlog or running
        self.spilled = False  # the spool holds jobs of this lane that are not in the backlog
        self.threads: list[threading.Thread] = []


class Dispatcher:
    """Runs accepted action jobs on per-target lanes with retries, guards and dead letters."""

    def __init__(self, context: ActionContext, store: Store, kinds: Mapping[str, ActionKind], *,
                 queue_size: int = 1000, deadline: float = 600.0,
                 deadlines: Mapping[str, float] | None = None, max_wait: float = 60.0,
                 initial_wait: float = 1.0, workers_per_target: int = 1,
                 breaker: CircuitBreaker | None = None,
                 sleep: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.context = context
        self.store = store
        self.kinds = dict(kinds)
        self.metrics = context.metrics
        self.queue_size = max(1, queue_size)
        self.workers_per_target = max(1, workers_per_target)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._policies = {kind: RetryPolicy(deadline=(deadlines or {}).get(kind, deadline),
                                            max_wait=max_wait, initial_wait=initial_wait)
                          for kind in set(self.kinds) | set(deadlines or {})}
        self._default_policy = RetryPolicy(deadline=deadline, max_wait=max_wait,
                                           initial_wait=initial_wait)
        self._sleep_fn = sleep
        self._clock = clock
        self._stopping = context.stopping
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._lanes: dict[str, _Lane] = {}
        self._outstanding = 0  # accepted and not finished (delivered, skipped or dead-lettered)
        self._started = False
        self._closing = False
        self._close_deadline = float("inf")
        self._outcomes: dict[tuple[str, str], Any] = {}
        self.overflowed = 0  # durable jobs left in the spool because their lane was full

    # -- public API -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start workers and resume every job left in the spool by an earlier run."""
        pending = self.store.spool_pending()
        targets: dict[str, int] = {}
        for job in pending:
            targets[job.target] = targets.get(job.target, 0) + 1
        with self._lock:
            self._outstanding += len(pending)
            self._started = True
        self.metrics.spool_pending.set(self.store.spool_count())
        for target in targets:
            lane = self._lane(target, durable=True)
            with lane.cond:
                lane.spilled = True  # the worker reads them from the spool, in order
                lane.cond.notify_all()
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            self._start_workers(lane)
        if pending:
            logger.info("resuming %d spooled action(s) on %d target(s)", len(pending), len(targets))

    def submit_many(self, jobs: list[ActionJob]) -> None:
        """Accept several jobs; in-memory lanes take each lane's share under one lock."""
        by_lane: dict[str, list[ActionJob]] = {}
        for job in jobs:
            kind = self.kinds.get(job.kind)
            if kind is not None and not kind.durable and not self._closing:
                by_lane.setdefault(job.target, []).append(job)
            else:
                self.submit(job)
        for target, lane_jobs in by_lane.items():
            self._submit_blocking_many(self._lane(target, durable=False), lane_jobs)

    def _submit_blocking_many(self, lane: _Lane, jobs: list[ActionJob]) -> None:
        with lane.cond:
            for job in jobs:
                while len(lane.backlog) >= lane.size:
                    if self._closing:
                        return
                    lane.cond.notify_all()
                    lane.cond.wait(0.1)
                with self._lock:
                    self._outstanding += 1
                lane.backlog.append(job)
            lane.cond.notify_all()

    def submit(self, job: ActionJob) -> bool:
        """Accept a job: durable kinds are committed to the spool first. False if not accepted."""
        if not self._started:
            raise RuntimeError("Dispatcher.start() must be called before submit()")
        kind = self.kinds.get(job.kind)
        if kind is None:
            logger.error("no action kind %r for rule %s; action not accepted", job.kind, job.rule)
            return False
        if self._closing:
            logger.warning("%s action for rule %s arrived during shutdown; not accepted",
                           job.kind, job.rule)
            return False
        if kind.durable:
            return self._submit_durable(job)
        return self._submit_blocking(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every accepted job is delivered, skipped or dead-lettered."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Stop within `timeout` (interrupting retry waits); returns how many jobs are left.

        Sets `context.stopping`. Durable jobs left stay in the spool; non-durable lanes
        (audit, log) are drained until the deadline, and what remains is counted as dropped.
        """
        self._close_deadline = time.monotonic() + timeout
        self._closing = True
        self._stopping.set()
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            with lane.cond:
                lane.cond.notify_all()
        for lane in lanes:
            for thread in lane.threads:
                thread.join(max(0.0, self._close_deadline - time.monotonic()))
        for lane in lanes:
            if not lane.durable:
                with lane.cond:
                    lost = list(lane.backlog)
                    lane.backlog.clear()
                for job in lost:
                    self.metrics.dropped.labels(kind=job.kind, reason="shutdown").inc()
                if lost:
                    logger.error("%d %s action(s) not run before the shutdown deadline",
                                 len(lost), lost[0].kind)
        with self._lock:
            left = self._outstanding
        if left:
            logger.info("dispatcher stopped; %d action(s) left for the next start", left)
        return left

    # -- accepting ------------------------------------------------------------------------------
    def _submit_durable(self, job: ActionJob) -> bool:
        if not self.store.spool_add(job):
            return True  # already accepted and pending
        self.metrics.spool_pending.inc()
        with self._lock:
            self._outstanding += 1
        lane = self._lane(job.target, durable=True)
        with lane.cond:
            if job.id in lane.known:
                return True
            if lane.spilled or len(lane.backlog) >= lane.size:
                if not lane.spilled:
                    logger.warning("queue for %s is full (%d); further actions for it wait in "
                                   "the spool", lane.target, lane.size)
                lane.spilled = True
                self.overflowed += 1
            else:
                lane.backlog.append(job)
                lane.known.add(job.id)
            lane.cond.notify_all()
        return True

    def _submit_blocking(self, job: ActionJob) -> bool:
        lane = self._lane(job.target, durable=False)
        with lane.cond:
            while len(lane.backlog) >= lane.size:
                if self._closing:
                    return False
                lane.cond.wait(0.1)
            with self._lock:
                self._outstanding += 1
            lane.backlog.append(job)
            if len(lane.backlog) == 1:  # only an empty lane has a worker waiting for work
                lane.cond.notify_all()
        return True

    def _lane(self, target: str, durable: bool) -> _Lane:
        with self._lock:
            lane = self._lanes.get(target)
            if lane is not None:
                return lane
            lane = _Lane(target, durable, self.queue_size)
            self._lanes[target] = lane
            started = self._started
        if started:
            self._start_workers(lane)
        return lane

    def _start_workers(self, lane: _Lane) -> None:
        with lane.cond:
            if lane.threads:
                return
            for index in range(self.workers_per_target):
                thread = threading.Thread(target=self._work, args=(lane,), daemon=True,
                                          name=f"dispatch-{lane.target}-{index}")
                lane.threads.append(thread)
                thread.start()

    # -- working --------------------------------------------------------------------------------
    def _work(self, lane: _Lane) -> None:
        while True:
            job = self._next(lane)
            if job is None:
                return
            jobs = [job]
            if not lane.durable:
                # In-memory lanes (audit, log) take what is queued in one go: one lock round
                # per batch instead of per job, which is what two threads under one GIL need.
                with lane.cond:
                    while lane.backlog and len(jobs) < _BATCH:
                        jobs.append(lane.backlog.popleft())
                    lane.cond.notify_all()
            for job in jobs:
                try:
                    self._deliver(lane, job)
                except Exception as exc:  # never let one job kill the lane
                    report_internal_error("dispatch", exc, self.metrics)
            with lane.cond:
                for job in jobs:
                    lane.known.discard(job.id)
                empty = not lane.backlog
                if empty:  # someone may be waiting for this lane to drain
                    lane.cond.notify_all()
            if empty:
                self._flush(job.kind)

    def _next(self, lane: _Lane) -> ActionJob | None:
        with lane.cond:
            while True:
                if self._closing and (lane.durable or time.monotonic() >= self._close_deadline):
                    return None
                if lane.backlog:
                    full = len(lane.backlog) >= lane.size
                    job = lane.backlog.popleft()
                    lane.known.add(job.id)
                    if full:  # a submitter may be waiting for room
                        lane.cond.notify_all()
                    return job
                if lane.spilled:
                    self._refill(lane)
                    if lane.backlog:
                        continue
                if self._closing:
                    return None
                lane.cond.wait(0.5)

    def _refill(self, lane: _Lane) -> None:
        """Load the lane's oldest spooled jobs (caller holds lane.cond)."""
        limit = lane.size + len(lane.known)
        try:
            jobs = self.store.spool_pending(target=lane.target, limit=limit)
        except StoreError as exc:
            logger.error("could not read the spool for %s (%s); trying again", lane.target, exc)
            lane.cond.wait(1.0)
            return
        fresh = [job for job in jobs if job.id not in lane.known]
        lane.spilled = len(jobs) >= limit or len(fresh) > lane.size
        for job in fresh[: lane.size]:
            lane.backlog.append(job)
            lane.known.add(job.id)

    def _flush(self, kind_name: str) -> None:
        flush = getattr(self.kinds.get(kind_name), "flush", None)
        if flush is not None:
            try:
                flush()
            except Exception as exc:
                report_internal_error("dispatch", exc, self.metrics)

    def _deliver(self, lane: _Lane, job: ActionJob) -> None:
        kind = self.kinds.get(job.kind)
        if kind is None:
            self._dead(lane, job, f"no action kind {job.kind!r} is configured", permanent=True)
            return
        try:  # the first attempt without tenacity's overhead (audit runs ~100k jobs/s)
            result = self._attempt(lane, kind, job, check_stopping=False)
        except (PermanentActionError, ActionSkipped) as exc:
            self._settle(lane, job, exc)
            return
        except Exception as exc:
            self._retry(lane, kind, job, exc)
            return
        self._succeeded(lane, job, result)

    def _retry(self, lane: _Lane, kind: ActionKind, job: ActionJob, first: Exception) -> None:
        pending: list[Exception] = [first]

        def attempt() -> str:
            if pending:
                raise pending.pop()  # the failure of the first attempt, fed to the policy
            return self._attempt(lane, kind, job, check_stopping=True)

        policy = self._policies.get(job.kind, self._default_policy)
        retry = retrying(policy, created_at=job.created_at, stopping=self._stopping,
                         clock=self._clock, sleep=self._sleep_fn,
                         before_sleep=lambda state: self._before_sleep(lane, job, state))
        try:
            result = retry(attempt)
        except Interrupted:
            self._left(job)
        except (PermanentActionError, ActionSkipped) as exc:
            self._settle(lane, job, exc)
        except tenacity.RetryError as exc:
            if self._stopping.is_set():
                self._left(job)
                return
            last = exc.last_attempt.exception()
            age = self._clock() - job.created_at
            self._dead(lane, job, f"gave up after {job.attempts} attempt(s) in {age:.0f} s: "
                                  f"{_short(last)}", permanent=False)
        else:
            self._succeeded(lane, job, result)

    def _attempt(self, lane: _Lane, kind: ActionKind, job: ActionJob, check_stopping: bool) -> str:
        if check_stopping and self._stopping.is_set():
            raise Interrupted()
        self._await_breaker(lane)
        job.attempts += 1
        started = time.perf_counter()
        try:
            result = kind.run(job)
        except (ActionSkipped, PermanentActionError) as exc:
            if isinstance(exc, PermanentActionError):
                self._count_error(job.kind, exc)
            self.breaker.success(lane.target)  # the target answered: it is alive
            raise
        except RetryableActionError as exc:
            self._count_error(job.kind, exc)
            self.breaker.failure(lane.target)
            raise
        except Exception as exc:
            self.metrics.action_errors.labels(kind=job.kind, reason="internal").inc()
            report_internal_error("action", exc, self.metrics)
            self.breaker.failure(lane.target)
            raise RetryableActionError(f"internal error ({type(exc).__name__})") from exc
        finally:
            self.metrics.action_duration.labels(kind=job.kind).observe(
                time.perf_counter() - started)
        self.breaker.success(lane.target)
        return result

    def _await_breaker(self, lane: _Lane) -> None:
        while True:
            wait = self.breaker.wait_time(lane.target)
            if wait <= 0:
                return
            if self._stopping.is_set():
                raise Interrupted()
            self._sleep(wait)

    def _sleep(self, seconds: float) -> None:
        if self._sleep_fn is not None:
            self._sleep_fn(seconds)
        else:
            self._stopping.wait(seconds)

    def _before_sleep(self, lane: _Lane, job: ActionJob, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        self._count("retry", job.kind)
        if lane.durable:
            self._store_call(lambda: self.store.spool_update_attempts(job.id, job.attempts))
        logger.warning("%s for rule %s to %s failed (%s); retry %d in %.1f s", job.kind,
                       job.rule, self._where(job), _short(error), job.attempts + 1,
                       state.upcoming_sleep)

    # -- outcomes -------------------------------------------------------------------------------
    def _settle(self, lane: _Lane, job: ActionJob, exc: Exception) -> None:
        if isinstance(exc, ActionSkipped):
            self._count("skipped", job.kind)
            logger.debug("%s for rule %s skipped: %s", job.kind, job.rule, exc)
            self._done(lane, job)
            return
        self._count("failed", job.kind)
        self._dead(lane, job, _short(exc), permanent=True)

    def _succeeded(self, lane: _Lane, job: ActionJob, result: str) -> None:
        self._count("success", job.kind)
        if job.attempts > 1:
            logger.info("%s for rule %s to %s succeeded on attempt %d: %s", job.kind, job.rule,
                        self._where(job), job.attempts, result)
        else:
            logger.debug("%s for rule %s: %s", job.kind, job.rule, result)
        self._done(lane, job)

    def _done(self, lane: _Lane, job: ActionJob) -> None:
        if lane.durable:
            self._store_call(lambda: self.store.spool_done(job.id))
            self.metrics.spool_pending.dec()
        self._finished()

    def _dead(self, lane: _Lane, job: ActionJob, reason: str, permanent: bool) -> None:
        self._store_call(lambda: self.store.deadletter_add(job, reason))
        if lane.durable:
            self.metrics.spool_pending.dec()
        self.metrics.deadletter.inc()
        self._count("deadletter", job.kind)
        logger.error("%s for rule %s to %s %s: %s; moved to dead letters (id %s)", job.kind,
                     job.rule, self._where(job), "failed" if permanent else "gave up", reason,
                     job.id)
        self._finished()

    def _left(self, job: ActionJob) -> None:
        logger.info("%s for rule %s interrupted by shutdown; it stays in the spool",
                    job.kind, job.rule)

    def _finished(self) -> None:
        with self._idle:
            self._outstanding -= 1
            if self._outstanding <= 0:
                self._idle.notify_all()

    def _store_call(self, call: Callable[[], None]) -> None:
        try:
            call()
        except (StoreError, ValueError) as exc:  # closed after a timed-out shutdown
            logger.warning("could not record an action's outcome (%s); it may run again "
                           "(same Idempotency-Key)", exc)

    def _count(self, outcome: str, kind: str) -> None:
        child = self._outcomes.get((kind, outcome))
        if child is None:
            child = self.metrics.actions.labels(kind=kind, outcome=outcome)
            self._outcomes[(kind, outcome)] = child
        child.inc()

    def _count_error(self, kind: str, exc: BaseException) -> None:
        self.metrics.action_errors.labels(kind=kind, reason=error_reason(exc)).inc()

    def _where(self, job: ActionJob) -> str:
        describe = getattr(self.kinds.get(job.kind), "describe", None)
        if describe is not None:
            try:
                return str(describe(job))
            except Exception:
                pass
        return job.target


def error_reason(exc: BaseException | None) -> str:
    """A bounded label for a failure: http_429, http_5xx, http_4xx, timeout, connection..."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return "http_429" if status == 429 else f"http_{status // 100}xx"
    cause = exc.__cause__ if exc is not None else None
    if isinstance(cause, requests.Timeout):
        return "timeout"
    if isinstance(cause, requests.ConnectionError):
        return "connection"
    if isinstance(cause, OSError):
        return "os_error"
    return "error" if isinstance(exc, ActionError) else "internal"


def _short(exc: BaseException | None) -> str:
    """What went wrong, in a few words safe to log (ActionErrors never hold a URL's path)."""
    if exc is None:
        return "unknown error"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    return str(exc)[:200] or type(exc).__name__
