"""The embedded store: one SQLite file in the state directory (WAL), for one process.

An action is *accepted* once `spool_add` has committed it; it leaves the spool only when it
succeeded or moved to dead letters (in the same transaction), so a SIGKILL at any moment
loses nothing and at worst repeats one attempt (with the same Idempotency-Key).
Every `sqlite3.Error` leaves this module as a `StoreError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec, TypeVar

import orjson

from eventd.errors import StateDirError, StoreError
from eventd.files import private_dir, private_file
from eventd.records import ActionJob, DeadLetter, UndecodableRecord, job_from_json, quarantined_job
from eventd.stores.base import SnapshotPieces, Store
from eventd.stores.lock import DirLock

if TYPE_CHECKING:
    from eventd.settings import Settings

__all__ = ["DB_NAME", "DeadLetter", "SqliteStore", "Store"]

logger = logging.getLogger(__name__)

DB_NAME = "eventd.sqlite3"
#: WAL frames (pages written) past which the checkpointer makes the WAL start over, about
#: 40 MB: more than a second of writes at any steady rate, when the WAL restarts by itself
#: after each passive round (forcing it there stalled the writers: webhook p99 5 -> 80 ms)
WAL_RESTART_FRAMES = 10_000
#: datetimes and dataclasses as `str()`, as `json.dumps(default=str)` writes them
_DUMP = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_CHUNK_MAX = 256  # rows in one statement (1,024 parameters: SQLite takes 32,766)
_THROTTLE_PRUNE_EVERY = 1000  # acquisitions between two deletions of expired throttle keys

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
CREATE TABLE IF NOT EXISTS throttle (key TEXT PRIMARY KEY, at REAL NOT NULL, until REAL);
CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS group_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS group_events_key ON group_events (key, seq);
CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, ends_at REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_key ON history (key, seq);
CREATE INDEX IF NOT EXISTS history_at ON history (at);
CREATE TABLE IF NOT EXISTS parked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL
);
"""

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _converted(method: Callable[Concatenate[SqliteStore, P], R],
               ) -> Callable[Concatenate[SqliteStore, P], R]:
    """Turn the driver's errors into StoreError(op=<method name>) at the store boundary."""
    op = method.__name__

    @functools.wraps(method)
    def wrapper(self: SqliteStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"spool database {self.path}: {op} failed: {exc}", op=op) from exc
    return wrapper


def _params(count: int) -> str:
    """`?, ?, ...`: `count` parameters."""
    return ", ".join("?" * count)


def _chunks(items: list[T]) -> list[list[T]]:
    """`items` in slices of `_CHUNK_MAX`, the last one padded to a power of two with copies
    of its last item (a duplicate changes nothing in an `IN (...)` or an INSERT OR IGNORE):
    a statement per slice, and a few distinct statements for the cache."""
    chunks = [items[at:at + _CHUNK_MAX] for at in range(0, len(items), _CHUNK_MAX)]
    if chunks:
        last = chunks[-1]
        last.extend([last[-1]] * ((1 << (len(last) - 1).bit_length()) - len(last)))
    return chunks


def _dump(job: ActionJob) -> str:
    """The job's record: orjson where it can (a few times faster than the json module, on
    the engine's path), with `str()` of what JSON cannot hold as the json module writes it;
    a non-string key, an integer past 64 bits or a lone surrogate go through the json module.
    Both read back alike (orjson writes NaN as null, as every kind sends it anyway)."""
    record = job.to_dict()
    try:
        return orjson.dumps(record, default=str, option=_DUMP).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(record, separators=(",", ":"), default=str)


def _load(data: str, attempts: int | None = None) -> ActionJob:
    return job_from_json(data, attempts)


def _letter(job_id: str, data: object, reason: object, at: object) -> DeadLetter:
    """A dead letter as stored, or one that says its record is undecodable (shown, never run)."""
    try:
        return DeadLetter(_load(data), str(reason), float(at))  # type: ignore[arg-type]
    except (UndecodableRecord, TypeError, ValueError) as exc:
        why = str(exc) if isinstance(exc, UndecodableRecord) else type(exc).__name__
        return DeadLetter(quarantined_job(job_id, "", data, why), f"undecodable dead letter: {why}",
                          0.0)


class SqliteStore:
    """Every store role in `<state_dir>/eventd.sqlite3` (WAL; one connection under a lock).

    `synchronous="FULL"` makes every accepted action survive a power loss too; `"NORMAL"`
    (WAL) still survives any process crash, and is faster. `exclusive=True` first takes the
    state directory's lock (StateDirError if another eventd holds it).
    """

    name: ClassVar[str] = "sqlite"

    @classmethod
    def open(cls, settings: Settings, *, exclusive: bool = False) -> SqliteStore:
        """The store of `settings.state_dir`, with the spool durability they ask for."""
        return cls(settings.state_dir, synchronous=settings.spool_sync, exclusive=exclusive)

    @classmethod
    def exists(cls, settings: Settings) -> bool:
        """Whether the state directory holds a spool database (StateDirError if it is a file)."""
        state_dir = Path(settings.state_dir)
        if state_dir.exists() and not state_dir.is_dir():
            raise StateDirError(f"state directory {state_dir} is not a directory", path=state_dir)
        return (state_dir / DB_NAME).exists()

    def __init__(self, state_dir: Path, *, synchronous: str = "FULL",
                 exclusive: bool = False) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.state_dir = private_dir(Path(state_dir))
        self.path = self.state_dir / DB_NAME
        self._on_error: Callable[[str], None] | None = None
        self._dirlock = DirLock(self.state_dir)
        if exclusive:
            self._dirlock.acquire()
        try:
            self._open(synchronous.upper())
        except BaseException:
            self._dirlock.release()
            raise

    @_converted
    def _open(self, synchronous: str) -> None:
        # SQLite gives the -wal and -shm files the database file's mode: make that one 0600
        # before SQLite creates it, and mend files an older eventd left readable.
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.path}{suffix}")
            if suffix == "" or path.exists():
                private_file(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        # SQLite's automatic checkpoint runs inside whichever commit crosses the threshold
        # and fsyncs the database there: a 5-170 ms stall on the engine's path, measured.
        # A thread with its own connection checkpoints instead, next to the writers.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute("PRAGMA cache_size=-512")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(throttle)")}
        if "until" not in columns:  # a state directory from before throttle keys expired
            self._db.execute("ALTER TABLE throttle ADD COLUMN until REAL")
        # The lanes' page-ins read here: in WAL a reader never waits for the writer, so a
        # lane does not wait behind the engine's spool writes to read its next jobs.
        self._reader = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
        self._reader.execute("PRAGMA query_only=1")
        self._reader.execute("PRAGMA cache_size=-512")
        self._read_lock = threading.Lock()
        self._closed = False
        self._throttle_acquired = 0
        now = time.time()
        self._marks: dict[str, float] = {
            key: until for key, until in self._db.execute(
                "SELECT key, until FROM marks WHERE until > ?", (now,))}
        self._checkpointing = threading.Event()
        self._wal_restart_wanted = False  # set by the checkpointer, acted on by a writer
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                              name="spool-checkpoint")
        self._checkpointer.start()

    # -- spool ----------------------------------------------------------------------------------
    @_converted
    def spool_add(self, job: ActionJob) -> bool:
        """Accept a job durably (committed on return); False if that id is already spooled."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO spool (id, target, attempts, data) VALUES (?, ?, ?, ?)",
                (job.id, job.target, job.attempts, _dump(job)))
            self._after_commit()
            return cursor.rowcount == 1

    @_converted
    def spool_done(self, job_id: str) -> None:
        """Forget a job that succeeded (or was skipped on purpose)."""
        with self._lock:
            self._db.execute("DELETE FROM spool WHERE id = ?", (job_id,))
            self._after_commit()

    @_converted
    def spool_add_many(self, jobs: list[ActionJob]) -> list[bool]:
        """Accept several jobs in one transaction; for each, whether it was new."""
        # Encoded before the lock: the lane deleting what it delivered waits for this one.
        rows = [(job.id, job.target, job.attempts, _dump(job)) for job in jobs]
        added = []
        fresh: list[tuple[str, str, int, str]] = []
        with self._lock:
            # Two statements for a batch (ids already there, the rows), not one per job:
            # every statement gives the GIL away, and whichever thread takes it keeps it for
            # up to the switch interval. One INSERT is a transaction of its own; more take
            # an explicit one, so that a batch is accepted whole or not at all.
            seen = self._spooled([row[0] for row in rows])
            for row in rows:
                new = row[0] not in seen
                added.append(new)
                if new:
                    seen.add(row[0])
                    fresh.append(row)
            chunks = _chunks(fresh)
            with self._transaction() if len(chunks) > 1 else _autocommit(self._after_commit):
                for chunk in chunks:
                    self._db.execute(
                        "INSERT OR IGNORE INTO spool (id, target, attempts, data) VALUES "
                        + ", ".join(("(?, ?, ?, ?)",) * len(chunk)),
                        [value for row in chunk for value in row])
        return added

    def _spooled(self, job_ids: list[str]) -> set[str]:
        """Which of these ids the spool holds (caller holds the lock)."""
        there: set[str] = set()
        for chunk in _chunks(job_ids):
            there.update(job_id for (job_id,) in self._db.execute(
                f"SELECT id FROM spool WHERE id IN ({_params(len(chunk))})", chunk))
        return there

    @_converted
    def spool_done_many(self, job_ids: list[str]) -> None:
        """Forget several finished jobs in one transaction (the batches a lane delivered):
        a statement per slice of `_chunks`, not one per job."""
        chunks = _chunks(list(job_ids))
        with self._lock, self._transaction() if len(chunks) > 1 \
                else _autocommit(self._after_commit):
            for chunk in chunks:
                self._db.execute(f"DELETE FROM spool WHERE id IN ({_params(len(chunk))})", chunk)

    @_converted
    def spool_update_attempts(self, job_id: str, attempts: int) -> None:
        """Remember how many attempts a job has had (shown in dead letters)."""
        with self._lock:
            self._db.execute("UPDATE spool SET attempts = ? WHERE id = ?", (attempts, job_id))

    @_converted
    def spool_update(self, job: ActionJob) -> None:
        """Save a spooled job's attempts and context; nothing if it is not spooled."""
        with self._lock:
            self._db.execute("UPDATE spool SET attempts = ?, data = ? WHERE id = ?",
                             (job.attempts, _dump(job), job.id))

    @_converted
    def spool_pending(self, target: str | None = None,
                      limit: int | None = None) -> list[ActionJob]:
        """Accepted jobs not yet finished, oldest first (optionally one target's, at most `limit`)."""
        return [job for _, job in self._page(target, 0, limit) if job is not None]

    @_converted
    def spool_window(self, target: str, limit: int,
                     known: Container[str]) -> tuple[list[ActionJob], int]:
        """A lane's page-in: the oldest `limit` rows of `target`'s queue, decoded but for
        those whose id is in `known` (the lane holds them already, running or queued); the
        jobs, and how many rows were read and left out (known, or undecodable and moved to
        dead letters), so that a page cut short that way does not look like the last."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT id, data, attempts FROM spool WHERE target = ? ORDER BY seq "
                "LIMIT ?", (target, int(limit))).fetchall()
        jobs: list[ActionJob] = []
        held = 0
        for job_id, data, attempts in rows:
            if job_id in known:
                held += 1
                continue
            try:
                job = _load(data, attempts)
                if job.id != job_id:
                    raise UndecodableRecord("its id is not its row's")
            except UndecodableRecord as exc:
                self._quarantine(str(job_id), target, data, str(exc))
                held += 1
                continue
            jobs.append(job)
        return jobs, held

    def spool_iter(self, target: str | None = None, page: int = 500) -> Iterator[ActionJob]:
        """Every spooled job (of one target), oldest first, `page` rows per query."""
        after = 0
        while True:
            rows = self._page(target, after, max(1, page))
            for _, job in rows:
                if job is not None:
                    yield job
            if len(rows) < page:
                return
            after = rows[-1][0]

    @_converted
    def _page(self, target: str | None, after: int,
              limit: int | None) -> list[tuple[int, ActionJob | None]]:
        """The rows after `after`, each with its job, or None for one quarantined now (kept in
        the page so that a page cut short by quarantines does not look like the last one)."""
        sql = "SELECT seq, data, attempts FROM spool WHERE seq > ?"
        args: list[object] = [after]
        if target is not None:
            sql += " AND target = ?"
            args.append(target)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        sql = sql.replace("SELECT seq, data", "SELECT seq, id, target, data")
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        jobs: list[tuple[int, ActionJob | None]] = []
        for seq, job_id, queue, data, attempts in rows:
            try:
                job = _load(data, attempts)
                if job.id != job_id:
                    raise UndecodableRecord("its id is not its row's")
            except UndecodableRecord as exc:
                self._quarantine(str(job_id), str(queue), data, str(exc))
                jobs.append((seq, None))
                continue
            jobs.append((seq, job))
        return jobs

    def _quarantine(self, job_id: str, target: str, data: object, reason: str) -> None:
        """Move an undecodable spool row to dead letters (the reason and the record cut short,
        said once in the log, counted as eventd_store_errors_total{op="spool_decode"}) so that
        the lane reading it goes on with the next job."""
        logger.warning("spool record %r is undecodable (%s): moved to dead letters",
                       job_id[:80], reason)
        self.deadletter_add(quarantined_job(job_id, target, data, reason),
                            f"undecodable spool record: {reason}")
        if self._on_error is not None:
            self._on_error("spool_decode")

    def observe(self, on_error: Callable[[str], None], on_state: Callable[[bool], None]) -> None:
        """Report records found undecodable (eventd_store_errors_total{op}); always reachable."""
        self._on_error = on_error
        on_state(True)

    @_converted
    def spool_targets(self) -> dict[str, int]:
        """Jobs waiting per target, the target with the oldest job first."""
        with self._lock:
            rows = self._db.execute("SELECT target, COUNT(*) FROM spool GROUP BY target "
                                    "ORDER BY MIN(seq)").fetchall()
        return {target: int(count) for target, count in rows}

    @_converted
    def spool_count(self) -> int:
        """How many accepted jobs are not finished yet."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    # -- dead letters ---------------------------------------------------------------------------
    @_converted
    def deadletter_add(self, job: ActionJob, reason: str, at: float | None = None) -> None:
        """Move a job to dead letters; removes it from the spool in the same transaction."""
        when = time.time() if at is None else at
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO deadletter (id, reason, at, data) VALUES (?, ?, ?, ?)",
                (job.id, reason, when, _dump(job)))
            self._db.execute("DELETE FROM spool WHERE id = ?", (job.id,))

    @_converted
    def deadletter_list(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, data, reason, at FROM deadletter ORDER BY seq").fetchall()
        return [_letter(job_id, data, reason, at) for job_id, data, reason, at in rows]

    @_converted
    def deadletter_count(self) -> int:
        """How many dead letters there are."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM deadletter").fetchone()[0])

    @_converted
    def deadletter_take(self, ids: Iterable[str] | None = None) -> list[ActionJob]:
        """Move dead letters (all, or these ids) back to the spool, in one transaction.

        Each job restarts with attempts=0 and created_at=now, so its retry deadline starts
        again. Returns the jobs moved; a daemon delivers them on its next start.
        """
        wanted = None if ids is None else set(ids)
        now = time.time()
        moved: list[ActionJob] = []
        with self._lock, self._transaction():
            rows = self._db.execute("SELECT id, data FROM deadletter ORDER BY seq").fetchall()
            for job_id, data in rows:
                if wanted is not None and job_id not in wanted:
                    continue
                job = _letter(job_id, data, "", 0.0).job
                job.attempts = 0
                job.created_at = now
                self._db.execute(
                    "INSERT OR REPLACE INTO spool (id, target, attempts, data) VALUES (?, ?, 0, ?)",
                    (job.id, job.target, _dump(job)))
                self._db.execute("DELETE FROM deadletter WHERE id = ?", (job_id,))
                moved.append(job)
        return moved

    @_converted
    def deadletter_purge(self, ids: Iterable[str] | None = None) -> int:
        """Delete dead letters (all, or these ids); returns how many."""
        with self._lock, self._transaction():
            if ids is None:
                return int(self._db.execute("DELETE FROM deadletter").rowcount)
            return sum(int(self._db.execute("DELETE FROM deadletter WHERE id = ?",
                                            (job_id,)).rowcount) for job_id in set(ids))

    # -- throttles ------------------------------------------------------------------------------
    @_converted
    def throttle_acquire(self, key: str, window: float, now: float) -> bool:
        """True (and remember `now`) unless `key` was acquired less than `window` seconds ago."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT at FROM throttle WHERE key = ?", (key,)).fetchone()
            if row is not None and now - float(row[0]) < window:
                return False
            self._db.execute("INSERT OR REPLACE INTO throttle (key, at, until) VALUES (?, ?, ?)",
                             (key, now, now + window))
            self._throttle_acquired += 1
            if self._throttle_acquired % _THROTTLE_PRUNE_EVERY == 0:
                # Expired keys would otherwise pile up, one per distinct throttle key ever seen.
                self._db.execute("DELETE FROM throttle WHERE until < ? OR (until IS NULL AND at < ?)",
                                 (now, now - 86400.0))
            return True

    @_converted
    def throttle_count(self) -> int:
        """How many throttle keys are kept (expired ones are pruned as new ones arrive)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM throttle").fetchone()[0])

    # -- loop-guard marks (read from memory, written through) ---------------------------------
    @_converted
    def mark(self, key: str, until: float) -> None:
        """Mark `key` until the POSIX time `until` (kept across a restart)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO marks (key, until) VALUES (?, ?)",
                             (key, until))
            self._marks[key] = until
            if len(self._marks) > 1000:
                now = time.time()
                self._marks = {k: u for k, u in self._marks.items() if u > now}
                self._db.execute("DELETE FROM marks WHERE until <= ?", (now,))

    def marked(self, keys: Iterable[str], now: float) -> bool:
        """Whether any of `keys` is marked at `now` (no query: marks are cached)."""
        marks = self._marks
        if not marks:
            return False
        return any(marks.get(key, 0.0) > now for key in keys)

    def marks_active(self, now: float) -> dict[str, float]:
        """Every key marked at `now`, with its `until` (no query: marks are cached)."""
        with self._lock:
            return {key: until for key, until in self._marks.items() if until > now}

    # -- firing alerts, open groups ---------------------------------------------------------------
    @_converted
    def alert_put(self, key: str, record: dict[str, Any]) -> None:
        """Keep (or replace) a firing alert (committed on return)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO alerts (key, data) VALUES (?, ?)",
                             (key, json.dumps(record, separators=(",", ":"), default=str)))

    @_converted
    def alert_take(self, key: str) -> dict[str, Any] | None:
        """Forget a firing alert; its record."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT data FROM alerts WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM alerts WHERE key = ?", (key,))
        return dict(json.loads(row[0]))

    @_converted
    def alert_list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every firing alert."""
        with self._lock:
            rows = self._db.execute("SELECT key, data FROM alerts").fetchall()
        return [(str(key), dict(json.loads(data))) for key, data in rows]

    @_converted
    def group_add(self, key: str, meta: dict[str, Any], event: dict[str, Any]) -> int:
        """Append an event to a group, opening it with `meta`; the group's size."""
        with self._lock, self._transaction():
            self._db.execute("INSERT OR IGNORE INTO groups (key, meta) VALUES (?, ?)",
                             (key, json.dumps(meta, default=str)))
            self._db.execute("INSERT INTO group_events (key, data) VALUES (?, ?)",
                             (key, json.dumps(event, separators=(",", ":"), default=str)))
            self._db.execute("UPDATE groups SET size = size + 1 WHERE key = ?", (key,))
            row = self._db.execute("SELECT size FROM groups WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    @_converted
    def group_list(self) -> list[tuple[str, dict[str, Any], int]]:
        """Every open group, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT key, meta, size FROM groups ORDER BY seq").fetchall()
        return [(str(key), dict(json.loads(meta)), int(size)) for key, meta, size in rows]

    @_converted
    def group_get(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A group's meta and events."""
        with self._lock:
            row = self._db.execute("SELECT meta FROM groups WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            events = [dict(json.loads(data)) for (data,) in self._db.execute(
                "SELECT data FROM group_events WHERE key = ? ORDER BY seq", (key,))]
        return dict(json.loads(row[0])), events

    @_converted
    def group_take(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Close a group: its meta and events, deleted in one transaction."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT meta FROM groups WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            events = [dict(json.loads(data)) for (data,) in self._db.execute(
                "SELECT data FROM group_events WHERE key = ? ORDER BY seq", (key,))]
            self._db.execute("DELETE FROM group_events WHERE key = ?", (key,))
            self._db.execute("DELETE FROM groups WHERE key = ?", (key,))
        return dict(json.loads(row[0])), events

    # -- silences -------------------------------------------------------------------------------
    @_converted
    def history_add(self, key: str, record: dict[str, Any], keep: int, ttl: float,
                    now: float) -> None:
        """Append to an object's recent events; drop what is past `keep` (this object) or
        older than `ttl` (every object), in one transaction."""
        data = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock, self._transaction():
            self._db.execute("INSERT INTO history (key, at, data) VALUES (?, ?, ?)",
                             (key, float(record.get("at", now)), data))
            self._db.execute("DELETE FROM history WHERE at < ?", (now - ttl,))
            self._db.execute(
                "DELETE FROM history WHERE key = ? AND seq NOT IN "
                "(SELECT seq FROM history WHERE key = ? ORDER BY seq DESC LIMIT ?)",
                (key, key, max(0, keep)))

    @_converted
    def history_get(self, key: str, since: float) -> list[dict[str, Any]]:
        """An object's kept events at or after `since`, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM history WHERE key = ? AND at >= ? "
                                    "ORDER BY seq", (key, since)).fetchall()
        return [dict(json.loads(row[0])) for row in rows]

    # -- events waiting for logs ----------------------------------------------------------------
    @_converted
    def parked_add(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Keep events waiting for logs, in one transaction (committed on return)."""
        rows = [(key, json.dumps(event, separators=(",", ":"), default=str))
                for key, event in items]
        with self._lock, self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO parked (key, data) VALUES (?, ?)", rows)

    @_converted
    def parked_done(self, keys: list[str]) -> None:
        """Forget events whose actions are spooled."""
        with self._lock, self._transaction():
            self._db.executemany("DELETE FROM parked WHERE key = ?", [(key,) for key in keys])

    @_converted
    def parked_list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every event still waiting, oldest first. The state directory is data: a row that is
        not a JSON object (a hand edit, a torn disk) is dropped with one warning, so that the
        start which processes this table first is not stopped by it."""
        with self._lock:
            rows = self._db.execute("SELECT key, data FROM parked ORDER BY seq").fetchall()
        kept: list[tuple[str, dict[str, Any]]] = []
        bad: list[str] = []
        for key, data in rows:
            try:
                record = json.loads(data)
            except (TypeError, ValueError):
                record = None
            if isinstance(record, dict):
                kept.append((str(key), record))
            else:
                bad.append(str(key))
        if bad:
            logger.warning("%d event(s) waiting for logs in %s are not an event (not a JSON "
                           "object) and are dropped: %s", len(bad), self.path,
                           ", ".join(repr(key[:40]) for key in bad[:5]))
            with self._lock, self._transaction():
                self._db.executemany("DELETE FROM parked WHERE key = ?", [(k,) for k in bad])
        return kept

    @_converted
    def silence_put(self, record: dict[str, Any]) -> None:
        """Keep (or replace) a silence (committed on return)."""
        ends = record.get("ends_at")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO silences (id, ends_at, data) VALUES (?, ?, ?)",
                             (str(record["id"]), float(ends) if isinstance(ends, (int, float))
                              else 0.0, json.dumps(record, separators=(",", ":"), default=str)))

    @_converted
    def silence_list(self) -> list[dict[str, Any]]:
        """Every silence kept."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM silences").fetchall()
        return [dict(json.loads(data)) for (data,) in rows]

    @_converted
    def silence_prune(self, ended_before: float) -> int:
        """Forget silences that ended before `ended_before`."""
        with self._lock:
            return int(self._db.execute("DELETE FROM silences WHERE ends_at < ?",
                                        (ended_before,)).rowcount)

    # -- de-dup snapshot --------------------------------------------------------------------------
    @_converted
    def dedupe_load(self) -> bytes:
        """The saved de-dup snapshot (an older eventd's uuid table read as a JSON list)."""
        with self._lock:
            row = self._db.execute("SELECT data FROM snapshot WHERE name = 'dedupe'").fetchone()
            if row is not None:
                data = row[0]
                if isinstance(data, bytes):
                    return data
                # Not a snapshot eventd wrote: an empty window rather than a failed start.
                logger.warning("the de-dup snapshot in %s is undecodable (a %s, not bytes); "
                               "starting with an empty de-dup window", self.path,
                               type(data).__name__)
                if self._on_error is not None:
                    self._on_error("dedupe_decode")
                return b""
            legacy = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dedupe'").fetchone()
            if legacy is None:
                return b""
            return orjson.dumps([uuid for (uuid,) in self._db.execute(
                "SELECT uuid FROM dedupe ORDER BY seq")])

    @_converted
    def dedupe_save(self, data: bytes | SnapshotPieces) -> None:
        """Replace the saved snapshot (one row: a full 50k window is 400 kB, a few ms).

        The row is made as a zeroblob of the snapshot's size and filled, piece by piece,
        through SQLite's incremental blob I/O: a bound blob is copied by SQLite, and copied
        again into the record it builds, two transient 400 kB blocks every 2 s."""
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO snapshot (name, data) VALUES ('dedupe', zeroblob(?))",
                (len(data),))
            if data:
                (row,) = self._db.execute(
                    "SELECT rowid FROM snapshot WHERE name = 'dedupe'").fetchone()
                with self._db.blobopen("snapshot", "data", row) as blob:
                    for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) \
                            else data.chunks():
                        blob.write(chunk)
            self._db.execute("DROP TABLE IF EXISTS dedupe")
        with self._lock:
            # the snapshot's ~100 pages would stay in the page cache until the spool's own
            # pages pushed them out: 0.4 MiB of the streaming peak for nothing read again
            self._db.execute("PRAGMA shrink_memory")

    # -- health and lifecycle ---------------------------------------------------------------------
    def healthy(self) -> bool:
        """Open, and able to take the write lock now (a read-only or gone disk is not)."""
        if self._closed or not os.access(self.state_dir, os.W_OK):
            return False
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        """Checkpoint and close the database, then release the state directory (idempotent)."""
        self._checkpointing.set()
        self._checkpointer.join(timeout=5.0)
        with self._lock:
            if self._closed:
                return
            with self._read_lock:
                self._reader.close()
            try:
                # Only the holder of the state directory empties the WAL: a `deadletter list`
                # beside a running daemon must neither wait for its writers nor stall them.
                mode = "TRUNCATE" if self._dirlock.held else "PASSIVE"
                self._db.execute(f"PRAGMA wal_checkpoint({mode})")
            except sqlite3.Error as exc:
                logger.warning("spool checkpoint at close failed: %s", exc)
            finally:
                self._closed = True
                self._db.close()
                self._dirlock.release()

    def _checkpoint_loop(self, interval: float = 1.0) -> None:
        """Copy the WAL into the database every second without blocking the writers, and
        see that the WAL starts over.

        SQLite restarts the WAL from its beginning only when a writer finds every frame
        already copied. A PASSIVE checkpoint never gets there while writes keep coming (a
        spool filling at thousands of jobs a second while a target is down): the WAL grew
        to 2 GB in 300k events, and its mmapped index (-shm) by 4 MiB of RSS. So when the
        WAL holds more than `WAL_RESTART_FRAMES` after a passive round, the next writer
        runs a TRUNCATE checkpoint after its commit (`_after_commit`): a short pause, the
        passive round having copied nearly every frame. From this thread, that checkpoint
        starved: SQLite's busy handler polls, and a writer that never pauses always won.
        """
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            logger.error("spool checkpoints disabled: %s", exc)
            return
        try:
            while not self._checkpointing.wait(interval):
                try:
                    _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # busy or I/O trouble: the next round tries again
                    logger.warning("spool checkpoint failed: %s", exc)
                    continue
                if frames > WAL_RESTART_FRAMES:
                    self._wal_restart_wanted = True
        finally:
            db.close()

    def _after_commit(self) -> None:
        """Start the WAL over if the checkpointer asked (holding the lock, no transaction).

        Called after every transaction and after the spool's one-statement writes, the
        writes that come by the thousand."""
        if not self._wal_restart_wanted:
            return
        self._wal_restart_wanted = False
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            logger.warning("spool checkpoint failed: %s", exc)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._after_commit)


@contextlib.contextmanager
def _autocommit(after_commit: Callable[[], None]) -> Iterator[None]:
    """One statement, its own transaction: then what a transaction's end does."""
    yield
    after_commit()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection, after_commit: Callable[[], None]) -> None:
        self._db = db
        self._after_commit = after_commit

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self._db.execute("ROLLBACK")
            return
        self._db.execute("COMMIT")
        self._after_commit()


def _conforms(store: SqliteStore) -> Store:
    return store  # mypy checks here that SqliteStore fulfils every role
