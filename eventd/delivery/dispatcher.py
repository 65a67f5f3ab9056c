"""Delivery of actions: admission into per-target lanes, one worker per lane, and outcomes.

Durable kinds (webhook, alertmanager, dockercloud) are accepted once committed to the spool;
a lane's in-memory window is only a cache of it (`lanes.py`). Non-durable kinds (log, audit)
block the caller when their lane is full. Each lane's worker delivers its jobs in order;
while its target fails, the job at the head is the one probe and the rest wait behind it,
and the moment a probe succeeds the lane drains at full speed (`breaker.py`, `retry.py`).
A kind that leaves something to follow (`wait: true`) is followed beside the lane, by a
bounded number of threads, so it holds nothing else back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

from eventd.actions.base import ActionContext, ActionKind, FollowInterrupted, FollowUp
from eventd.clients.http import describe_failure
from eventd.delivery.attempts import Attempt, Attempts, Fence, Verdict
from eventd.delivery.breaker import CircuitBreaker
from eventd.delivery.gate import Gate, Policy
from eventd.delivery.lanes import Departures, Lane, Lanes
from eventd.delivery.retry import (
    DEFAULT_DEADLINE,
    DEFAULT_INITIAL_WAIT,
    DEFAULT_MAX_WAIT,
    RetryPolicy,
)
from eventd.errors import LeaseLost, PermanentActionError, StoreError
from eventd.hooks import hooks
from eventd.ops.internal import report_internal_error
from eventd.records import ActionJob
from eventd.stores.backpressure import until_stored
from eventd.stores.base import Store

logger = logging.getLogger(__name__)

_BATCH = 512  # most jobs an in-memory lane's worker takes at once
DEFAULT_WINDOW = 256  # jobs a durable lane keeps in memory; the rest stay in the spool
DEFAULT_MAX_LANES = 256  # distinct targets with a lane; idle ones beyond are closed, LRU
DEFAULT_MAX_FOLLOWING = 8  # Docker Cloud actions followed at once, beside the REST lane
#: jobs a durable lane keeps in memory while its target fails: the others wait in the spool
#: (each in-memory job holds its event, ~2 KiB) and are paged in when it answers again
_FAILING_WINDOW = 16
_FENCED_SCAN = 4  # windows of a target's spool a fenced lane reads to find its own jobs


class Dispatcher:
    """Runs accepted action jobs on per-target lanes with retries, guards and dead letters."""

    def __init__(self, context: ActionContext, store: Store, kinds: Mapping[str, ActionKind], *,
                 queue_size: int = DEFAULT_WINDOW, deadline: float = DEFAULT_DEADLINE,
                 deadlines: Mapping[str, float] | None = None,
                 max_wait: float = DEFAULT_MAX_WAIT, initial_wait: float = DEFAULT_INITIAL_WAIT,
                 breaker: CircuitBreaker | None = None,
                 sleep: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 max_lanes: int = DEFAULT_MAX_LANES,
                 max_following: int = DEFAULT_MAX_FOLLOWING, gate: Gate | None = None) -> None:
        """`gate`: the pipeline's, with the job key and the loaded rules; without one, a gate
        with the settings' policy that neither signs jobs nor knows rules (tests, benches)."""
        self.context = context
        self.store = store
        self.kinds = dict(kinds)
        self.metrics = context.metrics
        self.queue_size = max(1, queue_size)
        policy = RetryPolicy(deadline=deadline, max_wait=max_wait, initial_wait=initial_wait)
        self.breaker = breaker if breaker is not None else CircuitBreaker(policy, clock=clock)
        self._policies = {kind: RetryPolicy(deadline=limit, max_wait=max_wait,
                                            initial_wait=initial_wait)
                          for kind, limit in (deadlines or {}).items()}
        self._default_policy = policy
        rest = context.rest
        self.gate = gate if gate is not None else Gate(Policy.from_settings(
            context.settings, user=rest.account if rest is not None else None,
            rest_host=rest.rest_host if rest is not None else None), self.metrics)
        self._attempts = Attempts(self.metrics, self.gate)
        #: in a cluster: which jobs are this replica's to send now, and under which token
        self._fence: Fence | None = None
        self._lease: Callable[[ActionJob], tuple[str, ...] | None] | None = None
        self._sleep_fn = sleep
        self._clock = clock
        self._stopping = context.stopping
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._lanes = Lanes(self.queue_size, max_lanes, on_retire=self.breaker.forget)
        self._departures = Departures(self._forget_departed, self._finished_many)
        self._outstanding = 0  # accepted and not finished (delivered, skipped or dead-lettered)
        self._started = False
        self._closing = False
        self._close_deadline = float("inf")
        self._following = threading.BoundedSemaphore(max(1, max_following))
        self._followers: set[threading.Thread] = set()
        self.overflowed = 0  # durable jobs left in the spool because their lane was full

    # -- public API -----------------------------------------------------------------------------
    def start(self, resume: bool = True) -> None:
        """Start workers and resume every job left in the spool by an earlier run (`resume`
        False: a replica of a cluster, which resumes a spool when it takes a stream over)."""
        counts = self.store.spool_targets() if resume else {}
        pending = sum(counts.values())
        with self._lock:
            self._outstanding += pending
            self._started = True
        self.metrics.spool_pending.set(pending)
        for target in counts:
            lane = self._lane(target, durable=True, start=False)
            with lane.cond:
                lane.spilled = True  # the worker pages them in from the spool, in order
        for lane in self._lanes.all():
            self._start_worker(lane)
        if pending:
            logger.info("resuming %d spooled action(s) on %d target(s)", pending, len(counts))

    def use_fence(self, fence: Fence, sweep: float | None = None,
                  lease: Callable[[ActionJob], tuple[str, ...] | None] | None = None) -> None:
        """Send only the jobs `fence` says are this replica's now, each with its lease's
        fencing token (a cluster's replica: set before the first lease is taken). Jobs of
        namespaces other replicas hold are neither paged in nor sent: left in the spool.
        `sweep`: look at the shared spool this often for jobs of the leases held here that
        another replica accepted late (its store write landed after this one took over).
        `lease`: what the store checks where a job is accepted (the key and value its
        namespace's lease must still hold; LeaseLost: not held here, the job is dropped)."""
        self._fence = fence
        self._lease = lease
        self._attempts.fence = fence
        if sweep is not None and sweep > 0:
            thread = threading.Thread(target=self._sweep, args=(sweep,), daemon=True,
                                      name="dispatch-sweep")
            thread.start()

    def _sweep(self, every: float) -> None:
        while not self._stopping.wait(every):
            if self._closing:
                return
            try:
                self.resume(quiet=True)
            except StoreError:
                continue  # unreachable now: the next sweep looks again
            except Exception as exc:  # noqa: BLE001 - the sweep must keep running
                report_internal_error("dispatch", exc, self.metrics)

    def quiesce(self, scope: str, timeout: float) -> bool:
        """Wait until no request sent under a lease of `scope` (`<cluster>/<ns>:`) is on its
        way (before that lease is freed); False at the timeout."""
        return self._attempts.quiesce(scope, timeout)

    def abort(self, scope: str) -> int:
        """Reset the requests on their way under a lease of `scope` (`<cluster>/<ns>:`), which
        ended here: their jobs stay in the spool for the lease's next holder."""
        return self._attempts.abort(scope)

    def resume(self, quiet: bool = False) -> int:
        """Deliver what another process left in a shared spool (a replica that died, a lease
        taken over): every target with spooled jobs pages them in, oldest first; a job this
        process holds already is not taken twice, and with a fence only the jobs of the
        namespaces this replica holds are taken. How many jobs the spool holds."""
        counts = self.store.spool_targets()
        for target in counts:
            lane = self._lane(target, durable=True)
            with lane.cond:
                lane.spilled = True
                lane.spills += 1
                lane.cond.notify_all()
        if counts and not quiet:
            logger.info("taking over %d spooled action(s) on %d target(s)",
                        sum(counts.values()), len(counts))
        return sum(counts.values())

    def submit_many(self, jobs: list[ActionJob]) -> None:
        """Accept several jobs; in-memory lanes take each lane's share under one lock."""
        by_lane: dict[str, list[ActionJob]] = {}
        spooled: list[ActionJob] = []
        many = getattr(self.store, "spool_add_many", None)
        for job in jobs:
            kind = self.kinds.get(job.kind)
            if kind is not None and not _durable(kind, job) and not self._closing:
                by_lane.setdefault(job.target, []).append(job)
            elif kind is not None and many is not None and self._started and not self._closing \
                    and self._lease is None:
                spooled.append(job)
            else:
                self.submit(job)
        if spooled:
            self._submit_durable_many(spooled, many)
        for target, lane_jobs in by_lane.items():
            self._submit_blocking(target, lane_jobs)

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
        if _durable(kind, job):
            return self._submit_durable(job)
        return self._submit_blocking(job.target, [job])

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every accepted job is delivered, skipped or dead-lettered."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    def down_targets(self) -> list[str]:
        """The queues whose target is failing now (what /readyz names)."""
        return self.breaker.failing_targets()

    def lane_count(self) -> int:
        """How many lanes (targets) are open."""
        return len(self._lanes)

    def close(self, timeout: float = 10.0) -> int:
        """Stop within `timeout` (interrupting waits); returns how many jobs are left.

        Sets `context.stopping`. Durable jobs left stay in the spool; non-durable lanes
        (audit, log) are drained until the deadline, and what remains is counted as dropped.
        """
        self._close_deadline = time.monotonic() + timeout
        self._closing = True
        self._stopping.set()
        lanes = self._lanes.all()
        with self._lock:
            followers = list(self._followers)
        for lane in lanes:
            with lane.cond:
                lane.cond.notify_all()
        for thread in [lane.thread for lane in lanes if lane.thread is not None] + followers:
            thread.join(max(0.0, self._close_deadline - time.monotonic()))
        self._departures.close(self._close_deadline - time.monotonic())
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
    def _submit_durable_many(self, jobs: list[ActionJob], many: Any) -> None:
        """Accept several durable jobs in one transaction of the store (`spool_add_many`)."""
        for job in jobs:
            self.gate.sign(job)
        try:
            added = until_stored(lambda: many(jobs), self._stopping, "spool_add")
        except StoreError as exc:
            logger.error("%d actions not accepted: stopping while the store is unreachable "
                         "(%s)", len(jobs), exc)
            return
        for job, new in zip(jobs, added, strict=True):
            if new:
                self._accepted(job)

    def _submit_durable(self, job: ActionJob) -> bool:
        self.gate.sign(job)  # what the store gives back runs only if this MAC still holds
        lease = self._lease
        behind = False
        try:  # an unreachable store holds the caller (backpressure) rather than lose the job
            if lease is None:
                added = until_stored(lambda: self.store.spool_add(job), self._stopping,
                                     "spool_add")
            else:  # each try asks the lease anew: held up past it, the job is not ours
                store = cast(Any, self.store)
                fenced = getattr(store, "spool_add_fenced", None)
                if fenced is None:
                    added = until_stored(lambda: store.spool_add(job, lease=lease(job)),
                                         self._stopping, "spool_add")
                else:
                    added, behind = until_stored(lambda: fenced(job, lease=lease(job)),
                                                 self._stopping, "spool_add")
        except StoreError as exc:
            logger.error("%s action for rule %s not accepted: stopping while the store is "
                         "unreachable (%s)", job.kind, job.rule, exc)
            return False
        except LeaseLost as exc:
            # Its namespace's stream is another replica's now (this one was cut off from the
            # store while it held it): that one's gap, announced, covers this event.
            self.metrics.dropped.labels(kind=job.kind, reason="lease_lost").inc()
            logger.warning("%s action for rule %s not accepted: %s; the event is in the gap "
                           "the stream's new holder announced", job.kind, job.rule, exc)
            return False
        if not added:
            return True  # already accepted and pending
        self._accepted(job, behind)
        return True

    def _accepted(self, job: ActionJob, behind: bool = False) -> None:
        """A job just committed to the spool: counted, and queued on its lane (or left in
        the spool when the lane's window is full, or when it is `behind` a job of its
        namespace accepted late by the replica that handed the stream over: the lane pages
        them in, in the spool's order, instead of sending this one first)."""
        self.metrics.spool_pending.inc()
        if logger.isEnabledFor(logging.DEBUG):  # a stage of bench/docker_latency.py's breakdown
            logger.debug("%s job %s of event %s spooled", job.kind, job.id,
                         job.event.get("uuid", "?"))
        with self._lock:
            self._outstanding += 1
        while True:
            lane = self._lane(job.target, durable=True)
            with lane.cond:
                if lane.retired:
                    continue
                lane.last_used = time.monotonic()
                if job.id in lane.known:
                    return
                if lane.spilled or behind or len(lane.backlog) >= lane.size:
                    if not lane.spilled and not behind and not lane.left:
                        logger.info("queue for %s holds %d actions; further ones wait in the "
                                    "spool and are paged in as it drains", lane.target, lane.size)
                    lane.spilled = True
                    lane.spills += 1
                    self.overflowed += not behind and not lane.left
                    left = self._fence is not None and self._fence(job) is None
                    if left:  # its lease is not held here: the holder's, as if sent and left
                        lane.left.add(job.id)
                else:
                    lane.backlog.append(job)
                    lane.known.add(job.id)
                    lane.cond.notify_all()
                    return
                lane.cond.notify_all()
            if left:
                self._finished()
            return

    def _submit_blocking(self, target: str, jobs: list[ActionJob]) -> bool:
        while True:
            lane = self._lane(target, durable=False)
            with lane.cond:
                if lane.retired:
                    continue
                lane.last_used = time.monotonic()
                for job in jobs:
                    while len(lane.backlog) >= lane.size:
                        if self._closing:
                            return False
                        lane.cond.notify_all()
                        lane.cond.wait(0.1)
                    with self._lock:
                        self._outstanding += 1
                    lane.backlog.append(job)
                lane.cond.notify_all()
                return True

    def _lane(self, target: str, durable: bool, start: bool = True) -> Lane:
        lane, created = self._lanes.get(target, durable)
        if created and start and self._started:
            self._start_worker(lane)
        return lane

    def _start_worker(self, lane: Lane) -> None:
        with lane.cond:
            if lane.thread is not None:
                return
            lane.thread = threading.Thread(
                target=self.metrics.workers.run, args=("dispatch", lambda: self._work(lane)),
                daemon=True, name=f"dispatch-{lane.target[:60]}")
            lane.thread.start()

    # -- working --------------------------------------------------------------------------------
    def _work(self, lane: Lane) -> None:
        wait = 0.0  # until the lane's target may be tried again
        while True:
            job = self._next(lane)
            if job is None:
                return
            jobs = [job]
            kind = self.kinds.get(job.kind)
            size = _batch_size(kind, job)
            if not lane.durable or size > 1:
                # In-memory lanes (audit, log) take what is queued in one go: one lock round
                # per batch instead of per job, which is what two threads under one GIL need.
                # A kind that sends batches (postgres) gets its queue's waiting jobs at once.
                with lane.cond:
                    while lane.backlog and len(jobs) < max(size, 1 if lane.durable else _BATCH):
                        jobs.append(lane.take())
                    lane.cond.notify_all()
            following: set[str] = set()
            if size > 1 and kind is not None:
                try:
                    wait = self._deliver_batch(lane, kind, jobs, wait)
                except Exception as exc:  # never let one batch kill the lane
                    report_internal_error("dispatch", exc, self.metrics)
                jobs_done: list[ActionJob] = []
            else:
                jobs_done = jobs
            for job in jobs_done:
                try:
                    wait = self._deliver(lane, job, wait, following)
                except Exception as exc:  # never let one job kill the lane
                    report_internal_error("dispatch", exc, self.metrics)
            with lane.cond:
                for job in jobs:
                    if job.id not in following and job.id not in lane.leaving:
                        lane.known.discard(job.id)
                empty = not lane.backlog
                if empty:  # someone may be waiting for this lane to drain
                    lane.cond.notify_all()
            if empty:
                self._flush(job.kind)

    def _next(self, lane: Lane) -> ActionJob | None:
        with lane.cond:
            while True:
                if self._closing and (lane.durable or time.monotonic() >= self._close_deadline):
                    return None
                if lane.backlog:
                    return lane.take()
                if lane.spilled:
                    if self._page_in(lane) or lane.backlog:
                        continue
                if self._closing or (lane.retired and not lane.backlog):
                    return None
                lane.cond.wait(0.5)

    def _page_in(self, lane: Lane) -> bool:
        """Load the lane's oldest spooled jobs (caller holds lane.cond); with a fence, only
        this replica's, looking past other replicas' jobs up to a few windows deep. True:
        jobs were accepted for the lane while it read, look again now."""
        limit = lane.size + len(lane.known)
        fence = self._fence
        scan = limit if fence is None else limit * _FENCED_SCAN
        window = getattr(self.store, "spool_window", None)
        if window is not None:
            # Read without holding the lane: the engine accepting jobs for it must not wait
            # for a page-in. While the lane is spilled nothing joins its backlog; a job
            # accepted meanwhile (`spills` moved) may be past what was read: look again.
            known, spills = set(lane.known), lane.spills
            lane.cond.release()
            try:
                jobs, held = window(lane.target, scan, known)  # held jobs: not decoded again
            except StoreError as exc:
                failed: StoreError | None = exc
            else:
                failed = None
            finally:
                lane.cond.acquire()
            moved = lane.spills != spills
        else:
            moved = False
            try:
                jobs, held = self.store.spool_pending(target=lane.target, limit=scan), 0
            except StoreError as exc:
                failed = exc
            else:
                failed = None
        if failed is not None:
            logger.error("could not read the spool for %s (%s); trying again", lane.target,
                         failed)
            lane.cond.wait(1.0)
            return False
        if fence is None:
            lane.page_in(jobs, limit, held)
        else:
            mine = [job for job in jobs if fence(job) is not None]
            lane.page_in(mine, limit, held)
            if len(jobs) + held >= scan:  # more beyond what was read (the worker waits)
                lane.spilled = True
            if lane.left:
                _still_left(lane, jobs, mine, truncated=len(jobs) + held >= scan)
        if moved:
            lane.spilled = True
        return moved

    def _flush(self, kind_name: str) -> None:
        kind = self.kinds.get(kind_name)
        if kind is not None:
            try:
                kind.flush()
            except Exception as exc:
                report_internal_error("dispatch", exc, self.metrics)

    def _policy(self, kind: str) -> RetryPolicy:
        return self._policies.get(kind, self._default_policy)

    def _deliver(self, lane: Lane, job: ActionJob, wait: float, following: set[str]) -> float:
        """Run `job` until it is finished or left to the next start; returns the lane's wait.

        `wait` is the target's: how long to wait before this job may be tried. While the
        target fails this job is its probe; a job whose deadline passes while waiting its
        turn is dead-lettered without another attempt.
        """
        kind = self.kinds.get(job.kind)
        if kind is None:
            self._dead(lane, job, f"no action kind {job.kind!r} is configured", permanent=True)
            return wait
        policy = self._policy(job.kind)
        while True:
            if wait > 0:
                if policy.gives_up(job.created_at, self._clock(), wait):
                    self._give_up(lane, job, lane.last_error)
                    return wait
                self._sleep(wait)
                wait = 0.0
                if self._stopping.is_set():
                    self._left(job)
                    return 0.0
            if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
                logger.debug("%s job %s of event %s: attempt starts", job.kind, job.id,
                             job.event.get("uuid", "?"))
            attempt = self._attempts.run(kind, job, lane.durable)
            verdict = attempt.verdict
            if verdict is Verdict.LEFT:
                self._leave(lane, job)
                return 0.0
            if verdict is Verdict.FAILED:
                wait = self.breaker.failure(lane.target)
            elif verdict is Verdict.TOLD:
                wait = self.breaker.told(lane.target, attempt.retry_after)
            else:
                if verdict is not Verdict.GATED:  # a refusal at the gate asked nobody
                    self.breaker.success(lane.target)  # the target answered: it is alive
                self._settle(lane, job, attempt, following)
                return 0.0
            lane.last_error = describe_failure(attempt.error)
            if policy.gives_up(job.created_at, self._clock(), wait):
                self._give_up(lane, job, lane.last_error)
                return wait
            self._retrying(lane, job, attempt, wait)

    def _deliver_batch(self, lane: Lane, kind: ActionKind, jobs: list[ActionJob],
                       wait: float) -> float:
        """Run `jobs` (one queue's, in order) as batches until each is finished or left to
        the next start; returns the lane's wait. Each job keeps its own outcome; those that
        failed with the target are tried again together, the rest are settled at once."""
        policy = self._policy(kind.name)
        pending = jobs
        while pending:
            if wait > 0:
                keep = []
                for job in pending:
                    if policy.gives_up(job.created_at, self._clock(), wait):
                        self._give_up(lane, job, lane.last_error)
                    else:
                        keep.append(job)
                pending = keep
                if not pending:
                    return wait
                self._sleep(wait)
                wait = 0.0
                if self._stopping.is_set():
                    for job in pending:
                        self._left(job)
                    return 0.0
            attempts = self._attempts.run_batch(kind, pending, lane.durable)
            finished: list[str] = []
            failed: list[tuple[ActionJob, Attempt]] = []
            answered = False
            delivered: list[tuple[ActionJob, Attempt]] = []
            for job, attempt in zip(pending, attempts, strict=True):
                if attempt.verdict is Verdict.LEFT:
                    self._leave(lane, job)
                    continue
                if attempt.verdict in (Verdict.FAILED, Verdict.TOLD):
                    failed.append((job, attempt))
                    continue
                answered = answered or attempt.verdict is not Verdict.GATED
                if attempt.verdict is Verdict.DONE:
                    delivered.append((job, attempt))
                self._settle(lane, job, attempt, set(), quiet=True, done=finished)
            if finished:  # deleted from the spool beside the lane, a transaction for all
                if lane.durable and self._fence is None:
                    self._departures.put(lane, finished)
                else:
                    self._spool_done_many(finished)
                    self._finished_many(len(finished))
                finished = []
            if delivered:  # one line per batch: a line per row would be the log's bulk
                first, done = delivered[0]
                retried = max(job.attempts for job, _ in delivered)
                logger.info("%s: %d action(s) delivered to %s%s: %s", first.kind,
                            len(delivered), self._where(first),
                            f" (after {retried} attempts)" if retried > 1 else "", done.result)
            if not failed:
                if answered:
                    self.breaker.success(lane.target)
                return 0.0
            head, attempt = failed[0]
            if attempt.verdict is Verdict.TOLD:
                wait = self.breaker.told(lane.target, attempt.retry_after)
            else:
                wait = self.breaker.failure(lane.target)
            lane.last_error = describe_failure(attempt.error)
            pending = []
            for job, _ in failed:
                if policy.gives_up(job.created_at, self._clock(), wait):
                    self._give_up(lane, job, lane.last_error)
                else:
                    pending.append(job)
            if pending:
                self._retrying(lane, pending[0], attempt, wait, len(pending))
                if lane.durable:
                    for job in pending[1:]:
                        self._store_attempts(job)
        return wait

    def _store_attempts(self, job: ActionJob) -> None:
        self._store_call(lambda: self.store.spool_update_attempts(job.id, job.attempts))

    def _retrying(self, lane: Lane, job: ActionJob, attempt: Attempt, wait: float,
                  count: int = 1) -> None:
        for _ in range(count):
            self._count("retry", job.kind)
        if lane.durable:
            self._store_call(lambda: self.store.spool_update_attempts(job.id, job.attempts))
            self._shrink(lane)
        if count > 1:
            logger.log(logging.DEBUG if self.breaker.is_open(lane.target) else logging.WARNING,
                       "%d %s actions to %s failed (%s); retry %d in %.1f s", count, job.kind,
                       self._where(job), lane.last_error, job.attempts + 1, wait)
        elif attempt.verdict is Verdict.TOLD:
            logger.info("%s for rule %s to %s: the server asked to come back later (%s); "
                        "retry %d in %.1f s", job.kind, job.rule, self._where(job),
                        lane.last_error, job.attempts + 1, wait)
        elif self.breaker.is_open(lane.target):
            logger.debug("%s for rule %s to %s failed (%s); probe %d in %.1f s", job.kind,
                         job.rule, self._where(job), lane.last_error, job.attempts + 1, wait)
        else:
            logger.warning("%s for rule %s to %s failed (%s); retry %d in %.1f s", job.kind,
                           job.rule, self._where(job), lane.last_error, job.attempts + 1, wait)

    def _shrink(self, lane: Lane) -> None:
        """While a durable lane's target fails, only its head is tried (one probe at a time):
        keep its next `_FAILING_WINDOW` jobs in memory and leave the newer ones to the spool
        alone, which already holds them; they are paged in, in order, once it answers."""
        with lane.cond:
            if len(lane.backlog) <= _FAILING_WINDOW:
                return
            while len(lane.backlog) > _FAILING_WINDOW:
                lane.known.discard(lane.backlog.pop().id)
            lane.spilled = True

    def _sleep(self, seconds: float) -> None:
        if self._sleep_fn is not None:
            self._sleep_fn(seconds)
        else:
            self._stopping.wait(seconds)

    # -- following ------------------------------------------------------------------------------
    def _follow(self, lane: Lane, job: ActionJob, follow_up: FollowUp,
                following: set[str]) -> None:
        """Save what to follow with the job, then follow it on a bounded side thread."""
        job.context.update(follow_up.progress)
        if lane.durable:
            self._store_call(lambda: self.store.spool_update(job))
        while not self._following.acquire(timeout=0.5):  # bounded: the lane waits for a slot
            if self._stopping.is_set():
                self._left(job)
                return
        following.add(job.id)
        logger.info("%s for rule %s: %s", job.kind, job.rule, follow_up.description)
        thread = threading.Thread(target=self._run_follow_up, args=(lane, job, follow_up),
                                  daemon=True, name=f"follow-{job.id[:8]}")
        with self._lock:
            self._followers.add(thread)
        thread.start()

    def _run_follow_up(self, lane: Lane, job: ActionJob, follow_up: FollowUp) -> None:
        try:
            result = follow_up.follow(self._stopping)
        except FollowInterrupted:
            self._left(job)
        except PermanentActionError as exc:
            self._count("failed", job.kind)
            self._dead(lane, job, describe_failure(exc), permanent=True)
        except Exception as exc:
            report_internal_error("dispatch", exc, self.metrics)
            self._left(job)  # it stays in the spool with what it was following
        else:
            self._succeeded(lane, job, result)
        finally:
            self._following.release()
            with lane.cond:
                lane.known.discard(job.id)
            with self._lock:
                self._followers.discard(threading.current_thread())

    # -- outcomes -------------------------------------------------------------------------------
    def _settle(self, lane: Lane, job: ActionJob, attempt: Attempt, following: set[str],
                quiet: bool = False, done: list[str] | None = None) -> None:
        verdict = attempt.verdict
        if verdict is Verdict.DONE:
            self._succeeded(lane, job, attempt.result, quiet, done)
        elif verdict is Verdict.FOLLOW:
            assert attempt.follow_up is not None
            self._follow(lane, job, attempt.follow_up, following)
        elif verdict is Verdict.SKIPPED:
            self._count("skipped", job.kind)
            logger.info("%s for rule %s skipped: %s", job.kind, job.rule, attempt.error)
            self._done(lane, job)
        else:
            self._count("failed", job.kind)
            self._dead(lane, job, describe_failure(attempt.error), permanent=True)

    def _succeeded(self, lane: Lane, job: ActionJob, result: str, quiet: bool = False,
                   done: list[str] | None = None) -> None:
        self._count("success", job.kind)
        if quiet:  # a batch: its line is logged once for all
            logger.debug("%s for rule %s: %s", job.kind, job.rule, result)
        elif job.attempts > 1:
            logger.info("%s for rule %s to %s succeeded on attempt %d: %s", job.kind, job.rule,
                        self._where(job), job.attempts, result)
        elif lane.durable:
            logger.info("%s for rule %s: %s", job.kind, job.rule, result)
        else:  # log and audit: one line per event would double the log
            logger.debug("%s for rule %s: %s", job.kind, job.rule, result)
        hooks.on_delivered(job, result)
        if done is not None and lane.durable:
            done.append(job.id)  # left the spool with its batch (the caller finishes it)
            self.metrics.spool_pending.dec()
            return
        self._done(lane, job)

    def _done(self, lane: Lane, job: ActionJob) -> None:
        if lane.durable:
            self._store_call(lambda: self.store.spool_done(job.id))
            self.metrics.spool_pending.dec()
            if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
                logger.debug("%s job %s of event %s left the spool", job.kind, job.id,
                             job.event.get("uuid", "?"))
        self._finished()

    def _spool_done_many(self, ids: list[str]) -> None:
        """Forget a batch's finished jobs: one transaction where the store offers it."""
        many: Callable[[list[str]], None] | None = getattr(self.store, "spool_done_many", None)
        if many is not None:
            self._store_call(lambda: many(ids))
            return
        for job_id in ids:
            self._forget(job_id)

    def _forget_departed(self, ids: list[str]) -> None:
        try:
            self._spool_done_many(ids)
        except Exception as exc:  # noqa: BLE001 - the departures' thread must keep running
            report_internal_error("dispatch", exc, self.metrics)

    def _forget(self, job_id: str) -> None:
        self._store_call(lambda: self.store.spool_done(job_id))

    def _give_up(self, lane: Lane, job: ActionJob, last_error: str) -> None:
        age = self._clock() - job.created_at
        self._dead(lane, job, f"gave up after {job.attempts} attempt(s) in {age:.0f} s: "
                              f"{last_error or 'unknown error'}", permanent=False)

    def _dead(self, lane: Lane, job: ActionJob, reason: str, permanent: bool) -> None:
        self._store_call(lambda: self.store.deadletter_add(job, reason))
        if lane.durable:
            self.metrics.spool_pending.dec()
        self.metrics.deadletter.inc()
        self._count("deadletter", job.kind)
        logger.error("%s for rule %s to %s %s: %s; moved to dead letters (id %s)", job.kind,
                     job.rule, self._where(job), "failed" if permanent else "gave up", reason,
                     job.id)
        hooks.on_dead_lettered(job, reason)
        self._finished()

    def _leave(self, lane: Lane, job: ActionJob) -> None:
        """Not ours to send any more (the lease of its namespace moved): it stays in the
        spool, where the lease's holder pages it in; nothing was sent, or what was sent was
        reset when the lease ended (Attempts.abort). The lane stays spilled while it is
        there: a job accepted next (this replica's lease back, chaos seed 1: 49 jobs) goes
        through the spool after it, not out at once before it. So do the jobs of the same
        lease behind it in the lane's window (the fence says the same of them): they are
        left too, and paged in again after it (make chaos on 2ffd87c, t+100: r3's request
        for the oldest of r2's leftover jobs was reset as a partition cut its lease short, r3
        held the lease again at once, and the 7 jobs behind it went out before it)."""
        self._count("left", job.kind)
        logger.debug("%s for rule %s left in the spool: its namespace's lease is another "
                     "replica's", job.kind, job.rule)
        fence = self._fence
        with lane.cond:
            lane.left.add(job.id)
            lane.spilled = True
            behind: list[ActionJob] = []
            if fence is not None and lane.durable and lane.backlog:
                lease, kept = fence(job), deque[ActionJob]()
                for other in lane.backlog:
                    (behind if fence(other) == lease else kept).append(other)
                lane.backlog = kept
                for other in behind:
                    lane.known.discard(other.id)
                    lane.left.add(other.id)
        for other in behind:
            self._count("left", other.kind)
        self._finished_many(1 + len(behind))  # still pending in the spool (whoever
        # delivers them counts them done)

    def _left(self, job: ActionJob) -> None:
        logger.info("%s for rule %s interrupted by shutdown; it stays in the spool",
                    job.kind, job.rule)

    def _finished(self) -> None:
        self._finished_many(1)

    def _finished_many(self, count: int) -> None:
        with self._idle:
            # Never below 0: jobs taken over from a shared spool were not counted here.
            self._outstanding = max(0, self._outstanding - count)
            if self._outstanding <= 0:
                self._idle.notify_all()

    def _store_call(self, call: Callable[[], None]) -> None:
        try:
            call()
        except StoreError as exc:  # e.g. closed after a timed-out shutdown
            logger.warning("could not record an action's outcome (%s); it may run again "
                           "(same Idempotency-Key)", exc)

    def _count(self, outcome: str, kind: str) -> None:
        # this thread's own Counter (eventd.ops.metrics.Tally): no lock per job
        self.metrics.actions.mine()[(kind, outcome)] += 1

    def _where(self, job: ActionJob) -> str:
        kind = self.kinds.get(job.kind)
        if kind is None:
            return job.target
        try:
            return kind.describe(job)
        except Exception as exc:
            report_internal_error("dispatch", exc, self.metrics)
            return job.target


def _durable(kind: ActionKind, job: ActionJob) -> bool:
    """Whether `job` goes through the spool: the kind's word, or its options' (an audit
    trail in a PostgreSQL table is spooled, an audit file is not)."""
    durable_for = getattr(kind, "durable_for", None)
    return bool(durable_for(job.options)) if durable_for is not None else kind.durable


def _batch_size(kind: ActionKind | None, job: ActionJob) -> int:
    """How many of a queue's jobs the kind takes in one `send_batch` (1: one at a time)."""
    batch_size = getattr(kind, "batch_size", None)
    if batch_size is None:
        return 1
    try:
        return max(1, int(batch_size(job.options)))
    except Exception:  # noqa: BLE001 - a kind that cannot say sends one at a time
        return 1


def _still_left(lane: Lane, read: list[ActionJob], mine: list[ActionJob],
                truncated: bool) -> None:
    """After a fenced page-in (caller holds lane.cond): the lane's left jobs that are still
    in the spool and not paged in now; while there are some, the lane stays spilled."""
    seen = {job.id for job in read}
    paged = {job.id for job in mine}
    lane.left = {job_id for job_id in lane.left
                 if job_id not in paged and (truncated or job_id in seen)}
    if lane.left:
        lane.spilled = True
