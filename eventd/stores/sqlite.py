"""Durable state in one SQLite file: the action spool, dead letters, throttles and the dedupe window.

An action is *accepted* once `spool_add` has committed it; it leaves the spool only when it
succeeded or moved to dead letters (in the same transaction), so a SIGKILL at any moment
loses nothing and at worst repeats one attempt (with the same Idempotency-Key).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from eventd.actions.base import ActionJob
from eventd.dedupe import DedupeWindow

logger = logging.getLogger(__name__)

DB_NAME = "eventd.sqlite3"
DEFAULT_DEDUPE_WINDOW = 50_000  # remembers the last 25k to 50k event uuids

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_target ON spool (target, seq);
CREATE TABLE IF NOT EXISTS deadletter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS throttle (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dedupe (seq INTEGER PRIMARY KEY, uuid TEXT NOT NULL);
"""


@dataclass(frozen=True)
class DeadLetter:
    """An action that will not be retried on its own: the job, why, and when (POSIX time)."""

    job: ActionJob
    reason: str
    at: float


class Store(Protocol):
    """What the dispatcher, the engine and the dead-letter CLI need from durable state."""

    def dedupe_check_and_add(self, uuid: str) -> bool: ...
    def spool_add(self, job: ActionJob) -> bool: ...
    def spool_done(self, job_id: str) -> None: ...
    def spool_pending(self, target: str | None = None,
                      limit: int | None = None) -> list[ActionJob]: ...
    def spool_count(self) -> int: ...
    def spool_update_attempts(self, job_id: str, attempts: int) -> None: ...
    def deadletter_add(self, job: ActionJob, reason: str) -> None: ...
    def deadletter_list(self) -> list[DeadLetter]: ...
    def deadletter_take(self, ids: Iterable[str] | None = None) -> list[ActionJob]: ...
    def deadletter_purge(self, ids: Iterable[str] | None = None) -> int: ...
    def throttle_acquire(self, key: str, window: float, now: float) -> bool: ...
    def dedupe_seen(self, uuid: str) -> bool: ...
    def dedupe_add(self, uuid: str) -> None: ...
    def close(self) -> None: ...


def _dump(job: ActionJob) -> str:
    return json.dumps(job.to_dict(), separators=(",", ":"), default=str)


def _load(data: str, attempts: int | None = None) -> ActionJob:
    job = ActionJob.from_dict(json.loads(data))
    if attempts is not None:
        job.attempts = attempts
    return job


class SqliteStore:
    """The Store in `<state_dir>/eventd.sqlite3` (WAL; one connection shared under a lock).

    `synchronous="FULL"` makes every accepted action survive a power loss too; `"NORMAL"`
    (WAL) still survives any process crash, and is faster.
    """

    def __init__(self, state_dir: Path, *, dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
                 synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / DB_NAME
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # SQLite's automatic checkpoint runs inside whichever commit crosses the threshold
        # and fsyncs the database there: a 5-170 ms stall on the engine's path, measured.
        # A thread with its own connection checkpoints instead, next to the writers.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._closed = False
        self._checkpointing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                              name="spool-checkpoint")
        self._checkpointer.start()
        self._dedupe = DedupeWindow(dedupe_window, (
            row[0] for row in self._db.execute("SELECT uuid FROM dedupe ORDER BY seq")))

    # -- spool ----------------------------------------------------------------------------------
    def spool_add(self, job: ActionJob) -> bool:
        """Accept a job durably (committed on return); False if that id is already spooled."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO spool (id, target, attempts, data) VALUES (?, ?, ?, ?)",
                (job.id, job.target, job.attempts, _dump(job)))
            return cursor.rowcount == 1

    def spool_done(self, job_id: str) -> None:
        """Forget a job that succeeded (or was skipped on purpose)."""
        with self._lock:
            self._db.execute("DELETE FROM spool WHERE id = ?", (job_id,))

    def spool_pending(self, target: str | None = None,
                      limit: int | None = None) -> list[ActionJob]:
        """Accepted jobs not yet finished, oldest first (optionally one target's, at most `limit`)."""
        sql = "SELECT data, attempts FROM spool"
        args: list[object] = []
        if target is not None:
            sql += " WHERE target = ?"
            args.append(target)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_load(data, attempts) for data, attempts in rows]

    def spool_count(self) -> int:
        """How many accepted jobs are not finished yet."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    def spool_update_attempts(self, job_id: str, attempts: int) -> None:
        """Remember how many attempts a job has had (shown in dead letters)."""
        with self._lock:
            self._db.execute("UPDATE spool SET attempts = ? WHERE id = ?", (attempts, job_id))

    # -- dead letters ---------------------------------------------------------------------------
    def deadletter_add(self, job: ActionJob, reason: str, at: float | None = None) -> None:
        """Move a job to dead letters; removes it from the spool in the same transaction."""
        when = time.time() if at is None else at
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO deadletter (id, reason, at, data) VALUES (?, ?, ?, ?)",
                (job.id, reason, when, _dump(job)))
            self._db.execute("DELETE FROM spool WHERE id = ?", (job.id,))

    def deadletter_list(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT data, reason, at FROM deadletter ORDER BY seq").fetchall()
        return [DeadLetter(_load(data), reason, at) for data, reason, at in rows]

    def deadletter_take(self, ids: Iterable[str] | None = None) -> list[ActionJob]:
        """Move dead letters (all, or these ids) back to the spool, in one transaction.

        Each job restarts with attempts=0 and created_at=now, so its retry deadline starts
        again. Returns the jobs moved; a daemon delivers them on its next start.
        """
        wanted = None if ids is None else list(ids)
        now = time.time()
        moved: list[ActionJob] = []
        with self._lock, self._transaction():
            rows = self._db.execute("SELECT id, data FROM deadletter ORDER BY seq").fetchall()
            for job_id, data in rows:
                if wanted is not None and job_id not in wanted:
                    continue
                job = _load(data)
                job.attempts = 0
                job.created_at = now
                self._db.execute(
                    "INSERT OR REPLACE INTO spool (id, target, attempts, data) VALUES (?, ?, 0, ?)",
                    (job.id, job.target, _dump(job)))
                self._db.execute("DELETE FROM deadletter WHERE id = ?", (job_id,))
                moved.append(job)
        return moved

    def deadletter_purge(self, ids: Iterable[str] | None = None) -> int:
        """Delete dead letters (all, or these ids); returns how many."""
        with self._lock, self._transaction():
            if ids is None:
                return int(self._db.execute("DELETE FROM deadletter").rowcount)
            return sum(int(self._db.execute("DELETE FROM deadletter WHERE id = ?",
                                            (job_id,)).rowcount) for job_id in ids)

    # -- throttles ------------------------------------------------------------------------------
    def throttle_acquire(self, key: str, window: float, now: float) -> bool:
        """True (and remember `now`) unless `key` was acquired less than `window` seconds ago."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT at FROM throttle WHERE key = ?", (key,)).fetchone()
            if row is not None and now - float(row[0]) < window:
                return False
            self._db.execute("INSERT OR REPLACE INTO throttle (key, at) VALUES (?, ?)", (key, now))
            return True

    # -- dedupe window (in memory; saved at close, loaded at open) -----------------------------
    def dedupe_seen(self, uuid: str) -> bool:
        """Whether this event uuid is in the window."""
        return uuid in self._dedupe

    def dedupe_add(self, uuid: str) -> None:
        """Add an event uuid, evicting the oldest beyond the window."""
        self._dedupe.check_and_add(uuid)

    def dedupe_check_and_add(self, uuid: str) -> bool:
        """True if the uuid was seen already; otherwise remember it (one call per event)."""
        return self._dedupe.check_and_add(uuid)

    def _save_dedupe(self) -> None:
        uuids = self._dedupe.snapshot()
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM dedupe")
            self._db.executemany("INSERT INTO dedupe (seq, uuid) VALUES (?, ?)", enumerate(uuids))

    def close(self) -> None:
        """Save the dedupe window and close the database (idempotent)."""
        self._checkpointing.set()
        self._checkpointer.join(timeout=5.0)
        with self._lock:
            if self._closed:
                return
            try:
                self._save_dedupe()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._closed = True
                self._db.close()

    def _checkpoint_loop(self, interval: float = 1.0) -> None:
        """Copy the WAL into the database every second without blocking the writers."""
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            logger.error("spool checkpoints disabled: %s", exc)
            return
        try:
            while not self._checkpointing.wait(interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy or I/O trouble: the next round tries again
                    logger.warning("spool checkpoint failed: %s", exc)
        finally:
            db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
