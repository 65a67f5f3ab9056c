"""Lanes: one per delivery target, holding a bounded window of its jobs in memory.

Durable lanes are a cache of the spool: when the window is full the lane "spills" (later
jobs stay in the spool only) and the worker pages the rest in, in order, so memory does not
grow with the spool's depth. In-memory lanes (log, audit) block their caller when full.
What a durable lane finished leaves the spool through `Departures`, beside the lane.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from eventd.records import ActionJob


class Lane:
    """One delivery target: its window of jobs, its worker, and whether the spool holds more."""

    def __init__(self, target: str, durable: bool, size: int) -> None:
        self.target = target
        self.durable = durable
        self.size = size
        self.cond = threading.Condition()
        self.backlog: deque[ActionJob] = deque()
        self.known: set[str] = set()  # ids in the backlog, running, or being followed
        self.leaving: set[str] = set()  # finished, known until their spool rows are gone
        self.spilled = False  # the spool holds jobs of this lane that are not in the backlog
        #: jobs left in the spool (their lease was not held here when their turn came): until
        #: they are paged in here or gone from the spool, the lane stays spilled, so that a
        #: newer job goes out after them, through the spool, not at once
        self.left: set[str] = set()
        self.spills = 0  # jobs left in the spool only (or spool takeovers) so far
        self.thread: threading.Thread | None = None
        self.retired = False  # closed to keep the number of lanes bounded; its worker exits
        self.last_used = time.monotonic()
        self.last_error = ""  # the latest failure, for dead letters given up without an attempt

    def idle(self) -> bool:
        """Nothing queued, running, followed or left in the spool (caller holds `cond`)."""
        return not self.backlog and not self.known and not self.spilled

    def take(self) -> ActionJob:
        """The next job in order (caller holds `cond`, backlog not empty)."""
        full = len(self.backlog) >= self.size
        job = self.backlog.popleft()
        self.known.add(job.id)
        if full:  # a submitter may be waiting for room
            self.cond.notify_all()
        return job

    def page_in(self, jobs: list[ActionJob], limit: int, held: int = 0) -> None:
        """Add the oldest spooled jobs read for this lane (`limit` rows were asked for;
        `held` of those the store read and left out: the lane holds them already, or they
        were undecodable and went to dead letters)."""
        fresh = [job for job in jobs if job.id not in self.known]
        self.spilled = len(jobs) + held >= limit or len(fresh) > self.size
        for job in fresh[: self.size]:
            self.backlog.append(job)
            self.known.add(job.id)


class Lanes:
    """Every target's lane, at most `max_lanes` of them: beyond that, idle lanes are closed,
    least recently used first (targets rendered from event data must not grow threads without
    bound). A busy lane is never closed, so the cap can be exceeded while all are busy."""

    def __init__(self, size: int, max_lanes: int, on_retire: Callable[[str], None]) -> None:
        self.size = size
        self.max_lanes = max(1, max_lanes)
        self._on_retire = on_retire
        self._lock = threading.Lock()
        self._lanes: dict[str, Lane] = {}

    def get(self, target: str, durable: bool) -> tuple[Lane, bool]:
        """The lane of `target`, and whether it was just made."""
        with self._lock:
            lane = self._lanes.get(target)
            if lane is not None:
                return lane, False
            lane = self._lanes[target] = Lane(target, durable, self.size)
            if len(self._lanes) > self.max_lanes:
                self._retire_idle()
        return lane, True

    def all(self) -> list[Lane]:
        """Every open lane."""
        with self._lock:
            return list(self._lanes.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._lanes)

    def _retire_idle(self) -> None:
        """Close the least recently used idle lanes beyond `max_lanes` (caller holds _lock)."""
        excess = len(self._lanes) - self.max_lanes
        for lane in sorted(self._lanes.values(), key=lambda lane: lane.last_used):
            if excess <= 0:
                break
            # Never wait for a lane's lock while holding _lock (submitters take them the
            # other way round): a busy lane is simply not idle.
            if not lane.cond.acquire(blocking=False):
                continue
            try:
                if not lane.idle() or lane.thread is None:
                    continue
                lane.retired = True
                lane.cond.notify_all()
            finally:
                lane.cond.release()
            del self._lanes[lane.target]
            self._on_retire(lane.target)
            excess -= 1


class Departures:
    """Finished jobs on their way out of the spool, deleted by a thread of their own.

    A lane hands its batch's finished ids over and goes on with the next batch while SQLite
    deletes them (it gives the GIL away while it writes), so the lane's target is not kept
    waiting for the spool's disk work. Each id stays in its lane's `known` until its row
    is gone, so no page-in takes the job again; whatever arrives while a delete runs goes
    in the next one, one transaction for all. `forget` deletes (and says nothing of a
    failure), `finished` is told once per job afterwards.
    """

    def __init__(self, forget: Callable[[list[str]], None], finished: Callable[[int], None],
                 most: int = 4096) -> None:
        self._forget = forget
        self._finished = finished
        self._most = most  # ids waiting past which a lane handing more over waits
        self._cond = threading.Condition()
        self._waiting: list[tuple[Lane, list[str]]] = []
        self._count = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def put(self, lane: Lane, ids: list[str]) -> None:
        """Delete `ids` (finished on `lane`, each in `lane.known`) from the spool soon."""
        with lane.cond:
            lane.leaving.update(ids)
        with self._cond:
            while self._count >= self._most and not self._closing:
                self._cond.wait(0.1)
            self._waiting.append((lane, ids))
            self._count += len(ids)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="spool-done")
                self._thread.start()
            self._cond.notify_all()

    def close(self, timeout: float) -> None:
        """Delete what is waiting, within `timeout`, and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    return
                waiting, self._waiting = self._waiting, []
                self._count = 0
                self._cond.notify_all()
            self._forget([job_id for _, ids in waiting for job_id in ids])
            for lane, ids in waiting:
                with lane.cond:
                    lane.leaving.difference_update(ids)
                    lane.known.difference_update(ids)
                    lane.cond.notify_all()
                self._finished(len(ids))
