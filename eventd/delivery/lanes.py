"""Lanes: one per delivery target, holding a bounded window of its jobs in memory.

Durable lanes are a cache of the spool: when the window is full the lane "spills" (later
jobs stay in the spool only) and the worker pages the rest in, in order, so memory does not
grow with the spool's depth. In-memory lanes (log, audit) block their caller when full.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from eventd.actions.base import ActionJob


class Lane:
    """One delivery target: its window of jobs, its worker, and whether the spool holds more."""

    def __init__(self, target: str, durable: bool, size: int) -> None:
        self.target = target
        self.durable = durable
        self.size = size
        self.cond = threading.Condition()
        self.backlog: deque[ActionJob] = deque()
        self.known: set[str] = set()  # ids in the backlog, running, or being followed
        self.spilled = False  # the spool holds jobs of this lane that are not in the backlog
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

    def page_in(self, jobs: list[ActionJob], limit: int) -> None:
        """Add the oldest spooled jobs read for this lane (`limit` were asked for)."""
        fresh = [job for job in jobs if job.id not in self.known]
        self.spilled = len(jobs) >= limit or len(fresh) > self.size
        for job in fresh[: self.size]:
            self.backlog.append(job)
            self.known.add(job.id)
