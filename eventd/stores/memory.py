"""A store in this process's memory: for `replay --dry-run` (which must write nothing) and tests.

It keeps what it is given for as long as the object lives, and nothing across a restart.
Jobs are kept as JSON, as the durable stores keep them, so a caller mutating a job it was
handed never changes what is stored.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from eventd.errors import StoreError
from eventd.records import ActionJob, DeadLetter
from eventd.stores.base import SnapshotPieces, Store

if TYPE_CHECKING:
    from eventd.settings import Settings

_THROTTLE_PRUNE_EVERY = 1000


def _dump(job: ActionJob) -> str:
    return json.dumps(job.to_dict(), separators=(",", ":"), default=str)


def _load(data: str) -> ActionJob:
    return ActionJob.from_dict(json.loads(data))


class MemoryStore:
    """Every store role in dicts, under one lock."""

    name: ClassVar[str] = "memory"

    @classmethod
    def open(cls, settings: Settings, *, exclusive: bool = False) -> MemoryStore:
        """A new, empty store (nothing is shared, so `exclusive` has nothing to guard)."""
        return cls()

    @classmethod
    def exists(cls, settings: Settings) -> bool:
        """Never: a new memory store starts empty."""
        return False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._spool: OrderedDict[str, tuple[str, str, int]] = OrderedDict()  # id -> (target, data, attempts)
        self._dead: OrderedDict[str, tuple[str, float, str]] = OrderedDict()  # id -> (reason, at, data)
        self._throttle: dict[str, tuple[float, float]] = {}  # key -> (acquired at, expires)
        self._throttle_acquired = 0
        self._marks: dict[str, float] = {}
        self._dedupe = b""
        self._alerts: dict[str, str] = {}
        self._groups: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()  # key -> (meta, events)
        self._silences: dict[str, str] = {}  # id -> record (JSON)
        self._history: dict[str, list[tuple[float, str]]] = {}  # key -> [(at, record)]
        self._parked: dict[str, str] = {}  # key -> event (JSON), oldest first
        self._closed = False

    def _check(self, op: str) -> None:
        if self._closed:
            raise StoreError(f"memory store: {op} after close", op=op)

    # -- spool ----------------------------------------------------------------------------------
    def spool_add(self, job: ActionJob) -> bool:
        """Accept a job; False if that id is already spooled."""
        with self._lock:
            self._check("spool_add")
            if job.id in self._spool:
                return False
            self._spool[job.id] = (job.target, _dump(job), job.attempts)
            return True

    def spool_done(self, job_id: str) -> None:
        """Forget a finished job."""
        with self._lock:
            self._check("spool_done")
            self._spool.pop(job_id, None)

    def spool_update_attempts(self, job_id: str, attempts: int) -> None:
        """Remember a job's attempts."""
        with self._lock:
            self._check("spool_update_attempts")
            entry = self._spool.get(job_id)
            if entry is not None:
                self._spool[job_id] = (entry[0], entry[1], attempts)

    def spool_update(self, job: ActionJob) -> None:
        """Save a spooled job's attempts and context; nothing if it is not spooled."""
        with self._lock:
            self._check("spool_update")
            entry = self._spool.get(job.id)
            if entry is not None:
                self._spool[job.id] = (entry[0], _dump(job), job.attempts)

    def spool_pending(self, target: str | None = None,
                      limit: int | None = None) -> list[ActionJob]:
        """The oldest spooled jobs (of one target), at most `limit`."""
        jobs: list[ActionJob] = []
        if limit is not None and limit <= 0:
            return jobs
        with self._lock:
            self._check("spool_pending")
            for job_target, data, attempts in self._spool.values():
                if target is not None and job_target != target:
                    continue
                job = _load(data)
                job.attempts = attempts
                jobs.append(job)
                if limit is not None and len(jobs) >= limit:
                    break
        return jobs

    def spool_iter(self, target: str | None = None, page: int = 500) -> Iterator[ActionJob]:
        """Every spooled job (of one target), oldest first."""
        with self._lock:
            self._check("spool_iter")
            ids = [job_id for job_id, (job_target, _, _) in self._spool.items()
                   if target is None or job_target == target]
        for job_id in ids:
            with self._lock:
                entry = self._spool.get(job_id)
            if entry is not None:
                job = _load(entry[1])
                job.attempts = entry[2]
                yield job

    def spool_targets(self) -> dict[str, int]:
        """Jobs waiting per target, the target with the oldest job first."""
        counts: dict[str, int] = {}
        with self._lock:
            self._check("spool_targets")
            for target, _, _ in self._spool.values():
                counts[target] = counts.get(target, 0) + 1
        return counts

    def spool_count(self) -> int:
        """How many jobs are spooled."""
        with self._lock:
            self._check("spool_count")
            return len(self._spool)

    # -- dead letters ---------------------------------------------------------------------------
    def deadletter_add(self, job: ActionJob, reason: str, at: float | None = None) -> None:
        """Move a job to dead letters, out of the spool."""
        with self._lock:
            self._check("deadletter_add")
            self._dead.pop(job.id, None)
            self._dead[job.id] = (reason, time.time() if at is None else at, _dump(job))
            self._spool.pop(job.id, None)

    def deadletter_list(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        with self._lock:
            self._check("deadletter_list")
            return [DeadLetter(_load(data), reason, at) for reason, at, data in self._dead.values()]

    def deadletter_count(self) -> int:
        """How many dead letters there are."""
        with self._lock:
            self._check("deadletter_count")
            return len(self._dead)

    def deadletter_take(self, ids: Iterable[str] | None = None) -> list[ActionJob]:
        """Move dead letters back to the spool with attempts=0 and a fresh deadline."""
        wanted = None if ids is None else set(ids)
        now = time.time()
        moved: list[ActionJob] = []
        with self._lock:
            self._check("deadletter_take")
            for job_id in list(self._dead):
                if wanted is not None and job_id not in wanted:
                    continue
                _, _, data = self._dead.pop(job_id)
                job = _load(data)
                job.attempts = 0
                job.created_at = now
                self._spool.pop(job.id, None)
                self._spool[job.id] = (job.target, _dump(job), 0)
                moved.append(job)
        return moved

    def deadletter_purge(self, ids: Iterable[str] | None = None) -> int:
        """Delete dead letters (all, or these ids); how many."""
        with self._lock:
            self._check("deadletter_purge")
            if ids is None:
                count = len(self._dead)
                self._dead.clear()
                return count
            return sum(1 for job_id in set(ids) if self._dead.pop(job_id, None) is not None)

    # -- throttles, marks ---------------------------------------------------------------------
    def throttle_acquire(self, key: str, window: float, now: float) -> bool:
        """True (and remember `now`) unless `key` was acquired less than `window` s before."""
        with self._lock:
            self._check("throttle_acquire")
            last = self._throttle.get(key)
            if last is not None and now - last[0] < window:
                return False
            self._throttle[key] = (now, now + window)
            self._throttle_acquired += 1
            if self._throttle_acquired % _THROTTLE_PRUNE_EVERY == 0:
                self._throttle = {k: v for k, v in self._throttle.items() if v[1] >= now}
            return True

    def throttle_count(self) -> int:
        """How many throttle keys are kept."""
        with self._lock:
            return len(self._throttle)

    def mark(self, key: str, until: float) -> None:
        """Mark `key` until `until`."""
        with self._lock:
            self._check("mark")
            self._marks[key] = until
            if len(self._marks) > 1000:
                now = time.time()
                self._marks = {k: u for k, u in self._marks.items() if u > now}

    def marked(self, keys: Iterable[str], now: float) -> bool:
        """Whether any of `keys` is marked at `now`."""
        marks = self._marks
        return bool(marks) and any(marks.get(key, 0.0) > now for key in keys)

    def marks_active(self, now: float) -> dict[str, float]:
        """Every key marked at `now`, with its `until`."""
        with self._lock:
            self._check("marks_active")
            return {key: until for key, until in self._marks.items() if until > now}

    # -- de-dup snapshot --------------------------------------------------------------------------
    def dedupe_load(self) -> bytes:
        """The saved de-dup snapshot."""
        with self._lock:
            self._check("dedupe_load")
            return self._dedupe

    def dedupe_save(self, data: bytes | SnapshotPieces) -> None:
        """Replace the saved de-dup snapshot."""
        with self._lock:
            self._check("dedupe_save")
            self._dedupe = bytes(data)

    # -- firing alerts, open groups ---------------------------------------------------------------
    def alert_put(self, key: str, record: dict[str, Any]) -> None:
        """Keep (or replace) a firing alert."""
        with self._lock:
            self._check("alert_put")
            self._alerts[key] = json.dumps(record, separators=(",", ":"), default=str)

    def alert_take(self, key: str) -> dict[str, Any] | None:
        """Forget a firing alert; its record."""
        with self._lock:
            self._check("alert_take")
            data = self._alerts.pop(key, None)
        return None if data is None else dict(json.loads(data))

    def alert_list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every firing alert."""
        with self._lock:
            self._check("alert_list")
            return [(key, dict(json.loads(data))) for key, data in self._alerts.items()]

    def group_add(self, key: str, meta: dict[str, Any], event: dict[str, Any]) -> int:
        """Append an event to a group, opening it with `meta`; the group's size."""
        with self._lock:
            self._check("group_add")
            entry = self._groups.get(key)
            if entry is None:
                entry = self._groups[key] = (json.dumps(meta, default=str), [])
            entry[1].append(json.dumps(event, separators=(",", ":"), default=str))
            return len(entry[1])

    def group_list(self) -> list[tuple[str, dict[str, Any], int]]:
        """Every open group, oldest first."""
        with self._lock:
            self._check("group_list")
            return [(key, dict(json.loads(meta)), len(events))
                    for key, (meta, events) in self._groups.items()]

    def group_get(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A group's meta and events."""
        with self._lock:
            self._check("group_get")
            entry = self._groups.get(key)
            if entry is not None:
                entry = (entry[0], list(entry[1]))
        if entry is None:
            return None
        return dict(json.loads(entry[0])), [dict(json.loads(e)) for e in entry[1]]

    def group_take(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Close a group: its meta and events."""
        with self._lock:
            self._check("group_take")
            entry = self._groups.pop(key, None)
        if entry is None:
            return None
        return dict(json.loads(entry[0])), [dict(json.loads(e)) for e in entry[1]]

    # -- silences -------------------------------------------------------------------------------
    def history_add(self, key: str, record: dict[str, Any], keep: int, ttl: float,
                    now: float) -> None:
        """Append to an object's recent events; drop the oldest past `keep` or `ttl`."""
        data = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock:
            kept = [(at, r) for at, r in self._history.get(key, []) if at >= now - ttl]
            kept.append((float(record.get("at", now)), data))
            self._history[key] = kept[-keep:] if keep > 0 else []
            if len(self._history) > 10_000:  # objects never seen again
                for old in [k for k, v in self._history.items() if not v or v[-1][0] < now - ttl]:
                    del self._history[old]

    def history_get(self, key: str, since: float) -> list[dict[str, Any]]:
        """An object's kept events at or after `since`, oldest first."""
        with self._lock:
            rows = list(self._history.get(key, []))
        return [dict(json.loads(r)) for at, r in rows if at >= since]

    def parked_add(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Keep events waiting for logs (until the process ends)."""
        with self._lock:
            self._check("parked_add")
            for key, event in items:
                self._parked.setdefault(key, json.dumps(event, separators=(",", ":"),
                                                        default=str))

    def parked_done(self, keys: list[str]) -> None:
        """Forget events whose actions are spooled."""
        with self._lock:
            for key in keys:
                self._parked.pop(key, None)

    def parked_list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every event still waiting, oldest first."""
        with self._lock:
            return [(key, dict(json.loads(data))) for key, data in self._parked.items()]

    def silence_put(self, record: dict[str, Any]) -> None:
        """Keep (or replace) a silence."""
        with self._lock:
            self._check("silence_put")
            self._silences[str(record["id"])] = json.dumps(record, separators=(",", ":"),
                                                           default=str)

    def silence_list(self) -> list[dict[str, Any]]:
        """Every silence kept."""
        with self._lock:
            self._check("silence_list")
            return [dict(json.loads(data)) for data in self._silences.values()]

    def silence_prune(self, ended_before: float) -> int:
        """Forget silences that ended before `ended_before`."""
        with self._lock:
            self._check("silence_prune")
            old = [key for key, data in self._silences.items()
                   if _ends_at(data) < ended_before]
            for key in old:
                del self._silences[key]
            return len(old)

    # -- health and lifecycle -------------------------------------------------------------------
    def healthy(self) -> bool:
        """Usable until closed."""
        return not self._closed

    def close(self) -> None:
        """Later calls raise StoreError; what was kept stays readable by nobody."""
        self._closed = True


def _ends_at(data: str) -> float:
    """A kept silence's end (a record without a usable one counts as ended long ago)."""
    value = json.loads(data).get("ends_at")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _conforms(store: MemoryStore) -> Store:
    return store  # mypy checks here that MemoryStore fulfils every role
