"""The Redis store: every role in one Redis (standalone, TLS or Sentinel), shared by replicas.

Every key starts with `<cluster>:` (`--cluster`, default `eventd`), so several clusters share
one Redis. What lives where:

    seq                 INCR: the order of everything spooled or dead-lettered
    spool               HASH  job id -> job (JSON);  spool:att  id -> attempts
    spool:order         ZSET  id by seq (all targets);  spool:t:<target>  ZSET id by seq
    spool:target        HASH  id -> target;  spool:targets  SET of targets with jobs waiting
    spool:by            HASH  id -> the call that accepted it (a retried call hears "accepted")
    spool:gone          ZSET  id of a job finished in the last 10 min, by when: not accepted again
                        (an add retried after an unconfirmed write, both sides of a split brain)
    spool:late          HASH  "<lease key>|<target>" -> the last job accepted for a stream handed
                        over after another replica took it: the holder's jobs go behind it
    spool:refused       ZSET  a spool_add call refused (lease lost) in the last 10 min, by when:
                        a copy of it landing later (sent again after a partition) is refused
    dead, dead:order    HASH  id -> {job, reason, at};  ZSET id by seq
    throttle            HASH  key -> "acquired at|by call";  throttle:until  ZSET key by expiry
    marks               ZSET  loop-guard key by "until"
    dedupe              STRING the de-dup window's snapshot (eventd.dedupe's bytes, base64)
    seen:<uuid>         STRING the shared de-dup check (SET NX EX)
    limit:<key>         ZSET  job id by call time (the per-target REST limit), expires
    lease:<name>        HASH  {owner, token}, PEXPIRE ttl; lease-tokens INCR (fencing)
    alerts, groups...   firing alerts and open digest groups (eventd.alerts): see `alerts`
    silences...         silences (eventd.silences): see `silences`

Why ordered sets and leases rather than Streams with a consumer group: delivery must keep
each target's order (a webhook receiver sees events in the order they happened), and a
consumer group hands consecutive entries of one stream to different consumers, so order
would still need one owner per target. An ordered set per target gives `spool_pending(target)`
and paging by seq directly, a job leaves by id in O(log n) (XDEL would need the entry id), and
ownership is a lease: a replica delivers a target while it holds `lease:lane:<target>`
(`lease_acquire`; the cluster half's dispatcher takes it per lane). A dead holder's lease
ends `ttl` s after its last renewal (`LANE_LEASE_TTL`, 15 s, renewed every 5 s: the bound
after which another replica claims its entries), then another replica takes the target and
resumes at its oldest job; at worst one attempt repeats, with the same Idempotency-Key. Until
that lands, an `exclusive` open takes `lease:deliver` (the whole spool, same ttl and renewal),
as SQLite takes the state directory: one deliverer per cluster.

Behind Sentinel (`redis+sentinel://`), `spool_add` returns only once a replica has the job
too (WAIT 1, at most `WAIT_MS`; else StoreError and the engine tries again), since Redis
replicates asynchronously and a failover keeps only what the promoted replica had (measured:
without WAIT a failover under a writer lost thousands of accepted jobs). When Sentinel knows
no replica that is up (the last one died), a lone primary accepts alone, and says so in the log.
The store asks Sentinel which server is the primary every `PRIMARY_CHECK` s (a thread of its
own, as the cluster's coordinator does each tick): a failover while it makes no call leaves
no pooled connection on the old primary, which answers as one until Sentinel demotes it.

Each multi-key step runs as one Lua script (atomic for every replica): accept, finish,
dead-letter, take back, throttle (two replicas never both acquire a key in its window), the
REST limit, leases. Every redis-py error leaves as `StoreError(op=<method>)`; a call whose
answer was lost (the connection dropped after Redis ran it) is recognised when repeated, so a
retried `spool_add` or `throttle_acquire` says what the first one did. Times are the caller's
POSIX seconds, as for every store: replicas' clocks should agree (NTP) within a second.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

import redis

from eventd.errors import LeaseLost
from eventd.records import ActionJob, UndecodableRecord, job_from_json, quarantined_job
from eventd.stores.base import (
    CallLimits,
    DeadLetter,
    Leases,
    Observed,
    SharedDedupe,
    SnapshotPieces,
    Store,
)
from eventd.stores.redis.alerts import AlertRoles
from eventd.stores.redis.client import WAIT_MS, NotReplicated, converted, converted_as
from eventd.stores.redis.connect import parse
from eventd.stores.redis.silences import SilenceRoles

if TYPE_CHECKING:
    from eventd.settings import Settings

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

_MARK_PRUNE_EVERY = 100


def _dump(job: ActionJob) -> str:
    return json.dumps(job.to_dict(), separators=(",", ":"), default=str)


def _load(data: str, attempts: str | int | None = None) -> ActionJob:
    return job_from_json(data, attempts)


def _letter(job_id: str, data: str) -> DeadLetter:
    """A dead letter as stored, or one that says its record is undecodable (shown, never run)."""
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise UndecodableRecord("not an object")
        at = float(record.get("at", 0.0))
        return DeadLetter(job_from_json(json.dumps(record.get("job"))), str(record["reason"]), at)
    except (UndecodableRecord, ValueError, TypeError, KeyError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, UndecodableRecord) else type(exc).__name__
        return DeadLetter(quarantined_job(job_id, "", data, reason),
                          f"undecodable dead letter: {reason}", 0.0)


def _num(value: float) -> str:
    return repr(float(value))


class RedisStore(AlertRoles, SilenceRoles):
    """Every store role, plus leases, the shared REST limit and de-dup check, in Redis."""

    name: ClassVar[str] = "redis"

    @classmethod
    def open(cls, settings: Settings, *, exclusive: bool = False) -> RedisStore:
        """Connect to the store `settings.store` names (StoreError if it does not answer);
        `exclusive` also takes the cluster's delivery lease (StateDirError if held)."""
        location = parse(settings.store, getattr(settings, "store_password", None))
        store = cls(location, getattr(settings, "cluster", "eventd"))
        try:
            store.ping()
            if exclusive:
                store._take_delivery()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def exists(cls, settings: Settings) -> bool:
        """Whether this cluster has any state in Redis (StoreError if Redis does not answer)."""
        store = cls(parse(settings.store, getattr(settings, "store_password", None)),
                    getattr(settings, "cluster", "eventd"))
        try:
            return store._exists()
        finally:
            store.close()

    def spool_add(self, job: ActionJob, lease: tuple[str, ...] | None = None) -> bool:
        """Accept a job durably (in Redis on return); False if that id is already spooled, or
        finished in the last `GONE_SECONDS` (an add repeated after an unconfirmed write).
        `lease`: (key, `<replica>:`) of a cluster replica's job of a leased namespace: if
        another replica holds that lease where the write lands, LeaseLost, nothing written;
        (key, `<replica>:`, "<token>"), that replica's last token of it: refused only if the
        other's token is larger (a newer holder; a smaller one is an older holding a failover
        brought back); (key, `<replica>:`, "any") for a stream that replica handed over:
        accepted whoever holds it (see `spool_add_fenced`)."""
        return self.spool_add_fenced(job, lease)[0]

    @converted_as("spool_add")
    def spool_add_fenced(self, job: ActionJob,
                         lease: tuple[str, ...] | None = None) -> tuple[bool, bool]:
        """`spool_add`, and whether the job is behind a late one: a job of its namespace and
        target that the replica which handed the stream over accepted after the holder took
        it (events its engine still held), still spooled. Such a job must go out through the
        spool, after the late one, not at once."""
        # A try whose answer was lost may still land (its request was sent again by the
        # kernel once a partition healed): every later try of the job is the same call, so
        # that whichever copy lands first decides and the others hear the same answer.
        call = self._unsure_adds.get(job.id) or self._call_token()
        try:
            added = self._spool_add(job, lease, call)
        except redis.RedisError:
            self._unsure_adds[job.id] = call
            raise
        unsure = self._unsure_adds.pop(job.id, None) is not None
        if added == 3:
            raise LeaseLost(f"job {job.id} not accepted: the lease {lease[0] if lease else ''} "
                            "is another replica's now")
        if added == 2:  # finished lately (this call's earlier try accepted it, or another's)
            return False, False
        if unsure:
            return True, added == 4  # the earlier call (answer lost) or this one accepted it
        return bool(added), added == 4

    def _spool_add(self, job: ActionJob, lease: tuple[str, ...] | None, call: str) -> int:
        """The script's answer: 1 added (by this call), 0 spooled already, 2 finished lately,
        3 refused (another replica holds the `lease`, or this call was refused before), 4
        added behind a late job."""
        args: list[str | int] = [self.prefix, job.id, job.target, _dump(job), job.attempts,
                                 call, *(lease or ())]
        if not self._replicas or (self._alone and not self._recheck_alone()):
            return int(self._scripts["SPOOL_ADD"](args=args))
        # Behind Sentinel, a job is accepted once a replica has it too: a failover promotes
        # a replica, and what only the old primary had would be gone.
        pipe = self._db.pipeline(transaction=False)
        self._scripts["SPOOL_ADD"](args=args, client=pipe)
        pipe.execute_command("WAIT", self._replicas, WAIT_MS)
        added, acked = pipe.execute()
        if int(acked) < self._replicas:
            # A primary Sentinel no longer names (after a failover it stays one until Sentinel
            # demotes it, ~10 s) has no replica: asking Sentinel drops the connections to it,
            # so the next try goes to the one it names
            self._follow_primary()
            if self._replica_alive():
                raise NotReplicated(f"no replica confirmed the write within {WAIT_MS} ms")
        return int(added)

    @converted
    def spool_done(self, job_id: str) -> None:
        """Forget a finished job."""
        self._run("SPOOL_DONE", job_id)

    @converted
    def spool_update_attempts(self, job_id: str, attempts: int) -> None:
        """Remember how many attempts a job has had."""
        self._run("SPOOL_UPDATE", job_id, attempts, "")

    @converted
    def spool_update(self, job: ActionJob) -> None:
        """Save a spooled job's attempts and context; nothing if it is not spooled."""
        self._run("SPOOL_UPDATE", job.id, job.attempts, _dump(job))

    def _order(self, target: str | None) -> str:
        return self._key("spool", "t", target) if target is not None else self._key("spool", "order")

    def _jobs(self, ids: Sequence[str]) -> list[ActionJob]:
        if not ids:
            return []
        pipe = self._db.pipeline(transaction=False)
        pipe.hmget(self._key("spool"), list(ids))
        pipe.hmget(self._key("spool", "att"), list(ids))
        datas, attempts = pipe.execute()
        jobs = []
        for job_id, data, att in zip(ids, datas, attempts, strict=True):
            if data is None:
                continue
            try:
                job = _load(data, att)
                if job.id != job_id:
                    raise UndecodableRecord("its id is not its key's")
            except UndecodableRecord as exc:
                self._quarantine(job_id, data, str(exc))
                continue
            jobs.append(job)
        return jobs

    def _quarantine(self, job_id: str, data: object, reason: str) -> None:
        """Move an undecodable spool record to dead letters (the reason and the record cut
        short, said once in the log, counted as eventd_store_errors_total{op="spool_decode"})
        so that the lane reading it goes on with the next job."""
        target = self._db.hget(self._key("spool", "target"), job_id)
        job = quarantined_job(job_id, str(target or ""), data, reason)
        logger.warning("spool record %r is undecodable (%s): moved to dead letters",
                       job_id[:80], reason)
        self._run("DEADLETTER_ADD", job_id, json.dumps(
            {"job": job.to_dict(), "reason": f"undecodable spool record: {reason}",
             "at": time.time()}, separators=(",", ":")))
        if self._on_error is not None:
            self._on_error("spool_decode")

    @converted
    def spool_pending(self, target: str | None = None,
                      limit: int | None = None) -> list[ActionJob]:
        """The oldest spooled jobs (of one target), at most `limit`; fewer only when the
        spool holds no more. The ids and the jobs are two reads: a job another replica
        finishes between them is gone from the second, so the next ids are read in its
        place: a lane takes a short page for the spool's end, nothing left unread, and
        sends the jobs accepted next at once (chaos seed 1, t+514.2: r1 read the 1028
        oldest ids of a target ~1100 deep, r2 and r3 finished some meanwhile, and the 19
        jobs past those ids went out after newer ones)."""
        if limit is None:
            return self._jobs(self._db.zrange(self._order(target), 0, -1))
        jobs: list[ActionJob] = []
        after = "-inf"
        while len(jobs) < limit:
            want = limit - len(jobs)
            rows = self._db.zrangebyscore(self._order(target), after, "+inf", start=0,
                                          num=want, withscores=True)
            jobs.extend(self._jobs([job_id for job_id, _ in rows]))
            if len(rows) < want:
                break
            after = f"({rows[-1][1]:.0f}"
        return jobs

    def spool_iter(self, target: str | None = None, page: int = 500) -> Iterator[ActionJob]:
        """Every spooled job (of one target), oldest first, `page` at a time by seq."""
        after = "-inf"
        while True:
            rows = self._page(target, after, max(1, page))
            yield from self._jobs_page([job_id for job_id, _ in rows])
            if len(rows) < page:
                return
            after = f"({rows[-1][1]:.0f}"

    @converted
    def _page(self, target: str | None, after: str, page: int) -> list[tuple[str, float]]:
        return list(self._db.zrangebyscore(self._order(target), after, "+inf", start=0, num=page,
                                           withscores=True))

    @converted
    def _jobs_page(self, ids: list[str]) -> list[ActionJob]:
        return self._jobs(ids)

    @converted
    def spool_targets(self) -> dict[str, int]:
        """Jobs waiting per target, the target with the oldest job first."""
        targets = sorted(self._db.smembers(self._key("spool", "targets")))
        pipe = self._db.pipeline(transaction=False)
        for target in targets:
            pipe.zrange(self._order(target), 0, 0, withscores=True)
            pipe.zcard(self._order(target))
        answers = pipe.execute()
        found = [(first[0][1], target, count) for target, first, count
                 in zip(targets, answers[0::2], answers[1::2], strict=True) if first and count]
        return {target: int(count) for _, target, count in sorted(found)}

    @converted
    def spool_count(self) -> int:
        """How many jobs are spooled."""
        return int(self._db.hlen(self._key("spool")))

    # -- dead letters ---------------------------------------------------------------------------
    @converted
    def deadletter_add(self, job: ActionJob, reason: str, at: float | None = None) -> None:
        """Move a job to dead letters; it leaves the spool in the same step."""
        record = json.dumps({"job": job.to_dict(), "reason": reason,
                             "at": time.time() if at is None else at},
                            separators=(",", ":"), default=str)
        self._run("DEADLETTER_ADD", job.id, record)

    def _letters(self) -> list[DeadLetter]:
        ids = self._db.zrange(self._key("dead", "order"), 0, -1)
        if not ids:
            return []
        letters = []
        for job_id, data in zip(ids, self._db.hmget(self._key("dead"), ids), strict=True):
            if data is not None:
                letters.append(_letter(job_id, data))
        return letters

    @converted
    def deadletter_list(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        return self._letters()

    @converted
    def deadletter_count(self) -> int:
        """How many dead letters there are."""
        return int(self._db.hlen(self._key("dead")))

    @converted
    def deadletter_take(self, ids: Iterable[str] | None = None) -> list[ActionJob]:
        """Move dead letters back to the spool with attempts=0 and a fresh deadline; each move
        is atomic, so two processes taking the same letter move it once."""
        wanted = None if ids is None else set(ids)
        now = time.time()
        moved: list[ActionJob] = []
        for letter in self._letters():
            job = letter.job
            if wanted is not None and job.id not in wanted:
                continue
            job.attempts = 0
            job.created_at = now
            if self._run("DEADLETTER_TAKE", job.id, job.target, _dump(job), 0):
                moved.append(job)
        return moved

    @converted
    def deadletter_purge(self, ids: Iterable[str] | None = None) -> int:
        """Delete dead letters (all, or these ids); how many were deleted."""
        dead, order = self._key("dead"), self._key("dead", "order")
        pipe = self._db.pipeline(transaction=True)
        if ids is None:
            pipe.hlen(dead)
            pipe.delete(dead, order)
            return int(pipe.execute()[0])
        chosen = sorted(set(ids))
        for job_id in chosen:
            pipe.hdel(dead, job_id)
            pipe.zrem(order, job_id)
        return sum(int(n) for n in pipe.execute()[0::2]) if chosen else 0

    # -- throttles, the REST limit, marks -------------------------------------------------------
    @converted
    def throttle_acquire(self, key: str, window: float, now: float) -> bool:
        """True (and remember `now`) unless `key` was acquired less than `window` s before; one
        script, so two replicas never both acquire a key within its window."""
        stamp = _num(now)
        unsure = self._unsure_throttles.pop(key, None) == stamp
        try:
            return bool(self._run("THROTTLE_ACQUIRE", key, _num(window), stamp,
                                  "1" if unsure else "0", self._call_token()))
        except redis.RedisError:
            self._unsure_throttles[key] = stamp
            if len(self._unsure_throttles) > 1000:
                self._unsure_throttles.clear()
            raise

    @converted
    def throttle_count(self) -> int:
        """How many throttle keys are kept (expired ones are pruned as new ones are acquired)."""
        return int(self._db.hlen(self._key("throttle")))

    @converted
    def limit_acquire(self, key: str, job_id: str, max_calls: int, per: float,
                      now: float) -> bool:
        """The REST limit across replicas: True if `job_id` may call `key` now (and count it)."""
        return bool(self._run("LIMIT_ACQUIRE", key, job_id, int(max_calls), _num(per), _num(now)))

    @converted
    def mark(self, key: str, until: float) -> None:
        """Mark `key` until the POSIX time `until` (expired marks are pruned now and then)."""
        pipe = self._db.pipeline(transaction=False)
        pipe.zadd(self._key("marks"), {key: until})
        self._marks_written += 1
        if self._marks_written % _MARK_PRUNE_EVERY == 0:
            pipe.zremrangebyscore(self._key("marks"), "-inf", time.time())
        pipe.execute()

    @converted
    def marked(self, keys: Iterable[str], now: float) -> bool:
        """Whether any of `keys` is marked at `now` (one ZMSCORE)."""
        wanted = list(keys)
        if not wanted:
            return False
        scores = self._db.zmscore(self._key("marks"), wanted)
        return any(score is not None and score > now for score in scores)

    @converted
    def marks_active(self, now: float) -> dict[str, float]:
        """Every key marked at `now`, with its `until` (one ZRANGEBYSCORE: a replica's loop
        guard reads them all about once a second instead of asking per event)."""
        pairs = self._db.zrangebyscore(self._key("marks"), f"({_num(now)}", "+inf", withscores=True)
        return {str(key): float(until) for key, until in pairs}

    # -- de-dup ---------------------------------------------------------------------------------
    @converted
    def dedupe_load(self) -> bytes:
        """The saved de-dup snapshot (empty if none; an older eventd's JSON list as it is)."""
        try:
            text = self._db.get(self._key("dedupe"))
            if not text:
                return b""
            return text.encode() if text.startswith("[") else base64.b64decode(text, validate=True)
        except (ValueError, redis.ResponseError) as exc:  # binascii.Error, UnicodeError too
            # Not a snapshot eventd wrote (not text, not base64, another type of key): start
            # with an empty window rather than fail every start; said, and counted.
            logger.warning("the de-dup snapshot in %s is undecodable (%s); starting with an "
                           "empty de-dup window", self._key("dedupe"), type(exc).__name__)
            if self._on_error is not None:
                self._on_error("dedupe_decode")
            return b""

    @converted
    def dedupe_save(self, data: bytes | SnapshotPieces) -> None:
        """Replace the saved snapshot (one SET of base64, since replies are decoded as text:
        a full 50k window is 530 kB)."""
        self._db.set(self._key("dedupe"), base64.b64encode(bytes(data)).decode("ascii"))

    @converted
    def seen_first(self, uuid: str, ttl: float) -> bool:
        """True for the first replica to see `uuid` within `ttl` s (SET NX PX)."""
        return bool(self._db.set(self._key("seen", uuid), "1", nx=True,
                                 px=max(1, int(ttl * 1000))))

    @converted
    def _exists(self) -> bool:
        return bool(self._db.exists(self._key("seq"), self._key("dedupe"),
                                    self._key("throttle"), self._key("marks")))


def _conforms(store: RedisStore) -> tuple[Store, CallLimits, Leases, SharedDedupe, Observed]:
    return store, store, store, store, store  # mypy checks every role here
