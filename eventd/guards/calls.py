"""The per-object call limit: at most N REST actions per target object per window.

Checked when a job runs (not when it is accepted), so jobs resumed from the spool respect it
too; the retries of one job count once. With a `shared` store (the Redis store's CallLimits)
the calls are counted there, so replicas together make at most N calls per object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from eventd.errors import RetryableActionError, StoreError
from eventd.events import object_ref
from eventd.stores.base import CallLimits

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class TargetLimiter:
    """At most `max_calls` actions per target per `per` seconds; retries of one job count once."""

    def __init__(self, max_calls: int = 3, per: float = 600.0, clock: Clock = time.monotonic,
                 *, shared: CallLimits | None = None, wall: Clock = time.time) -> None:
        self.max_calls = max_calls
        self.per = per
        self._clock = clock
        self._shared = shared
        self._wall = wall  # the shared store's times are POSIX seconds
        self._lock = threading.Lock()
        self._calls: dict[str, list[tuple[float, str]]] = {}  # target -> [(when, job id)]
        self._warned: dict[str, float] = {}  # target -> when the refusal was logged
        self._prune_at = 1000  # targets kept before those whose window passed are dropped

    def acquire(self, target: str, job_id: str) -> bool:
        """True if this job may call `target` now (and count it); False over the limit.

        RetryableActionError if the shared store cannot say: no call is made, the job is
        tried again (the store counts the failure in eventd_store_errors_total{op}).
        """
        key = self._key(target)
        if self._shared is not None:
            return self._acquire_shared(target, key, job_id)
        now = self._clock()
        with self._lock:
            calls = [(at, jid) for at, jid in self._calls.get(key, []) if now - at < self.per]
            self._calls[key] = calls
            if len(self._calls) > self._prune_at:
                self._prune(now)
            if any(jid == job_id for _, jid in calls):
                return True
            if len(calls) < self.max_calls:
                calls.append((now, job_id))
                return True
            warned = self._warned.get(key)
            first = warned is None or now - warned >= self.per
            if first:
                self._warned[key] = now
        if first:
            self._warn(target)
        return False

    def _acquire_shared(self, target: str, key: str, job_id: str) -> bool:
        assert self._shared is not None
        try:
            allowed = self._shared.limit_acquire(key, job_id, self.max_calls, self.per,
                                                 self._wall())
        except StoreError as exc:
            raise RetryableActionError(
                f"rate limit for {target} could not be read from the store ({exc}); "
                "no call made, trying again") from exc
        if allowed:
            return True
        now = self._clock()
        with self._lock:
            warned = self._warned.get(key)
            first = warned is None or now - warned >= self.per
            if first:
                self._warned[key] = now
                if len(self._warned) > self._prune_at:
                    self._warned = {k: at for k, at in self._warned.items()
                                    if now - at < self.per}
        if first:
            self._warn(target)
        return False

    def _warn(self, target: str) -> None:
        logger.warning("rate limit: %s already had %d action(s) in the last %.0f s; "
                       "skipping further actions on it until the window passes",
                       target, self.max_calls, self.per)

    def tracked(self) -> int:
        """How many targets are remembered."""
        with self._lock:
            return len(self._calls)

    def _prune(self, now: float) -> None:
        """Forget targets whose calls are all older than the window (caller holds the lock)."""
        for key in [k for k, calls in self._calls.items()
                    if not calls or now - calls[-1][0] >= self.per]:
            del self._calls[key]
            self._warned.pop(key, None)
        self._prune_at = max(1000, 2 * len(self._calls))

    @staticmethod
    def _key(target: str) -> str:
        ref = object_ref(target)
        return f"{ref.type}/{ref.uuid}" if ref is not None else target
