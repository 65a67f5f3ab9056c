"""The Redis store's connection side: clients, errors turned into StoreError and counted,
reachability, calls named for retries, leases, and the delivery lease of an `exclusive` open.

The roles themselves are in the package's `RedisStore`, which builds on `RedisClient`.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis
from tenacity import RetryCallState

from eventd.backoff import Backoff
from eventd.errors import StateDirError, StoreError
from eventd.stores.redis import scripts
from eventd.stores.redis.connect import RETRIES, Location, clients, unreachable

__all__ = ["LANE_LEASE_RENEW", "LANE_LEASE_TTL", "WAIT_MS", "NotReplicated", "RedisClient",
           "converted", "converted_as"]

logger = logging.getLogger(__name__)

#: how long a delivery lease outlives its holder's last renewal, and how often it is renewed
LANE_LEASE_TTL = 15.0
LANE_LEASE_RENEW = 5.0
#: behind Sentinel, how long `spool_add` waits for a replica to confirm the job
WAIT_MS = 1000
#: behind Sentinel, the waits between a call's tries (redis-py's were 0.1 s, then 0.2 s)
RETRY_BACKOFF = Backoff(initial=0.1, maximum=0.5)
#: behind Sentinel, how often an idle store asks which server is the primary (off the calls)
PRIMARY_CHECK = 1.0


class NotReplicated(redis.RedisError):
    """No replica confirmed an accepting write in time (it may be lost in a failover)."""


C = TypeVar("C", bound="RedisClient")
P = ParamSpec("P")
R = TypeVar("R")


def converted(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
    """Turn redis-py's errors into StoreError(op=<method name>), counted, at the boundary."""
    return converted_as(method.__name__)(method)


def converted_as(op: str) -> Callable[[Callable[Concatenate[C, P], R]],
                                      Callable[Concatenate[C, P], R]]:
    """`converted`, counting the errors under `op` (a variant of an operation counts as it)."""
    def decorate(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
        return _converted(method, op)
    return decorate


def _converted(method: Callable[Concatenate[C, P], R], op: str) -> Callable[Concatenate[C, P], R]:

    @functools.wraps(method)
    def wrapper(self: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._closed:
            raise StoreError(f"redis store {self.location.safe}: {op} after close", op=op)
        try:
            result = self._attempts(lambda: method(self, *args, **kwargs))
        except redis.RedisError as exc:
            self._failed(op, exc)
            self._bad_data_seen(op, exc)
            gone = unreachable(self.location, exc, op)
            if gone is not None:
                raise gone from exc
            raise StoreError(f"redis store {self.location.safe}: {op.lstrip('_')} failed: "
                             f"{self._scrub(exc)}", op=op) from exc
        if not self._up:
            self._set_up(True)
        if self._bad_data:
            self._bad_data.pop(op, None)
        return result
    return wrapper


#: seconds one operation may keep failing on what a key holds before `on_bad_data` is told
BAD_DATA_GRACE = 10.0
#: what Redis says when a key holds another type or a value a script cannot use
_DATA_ERRORS = ("WRONGTYPE", "not an integer", "not a valid float", "user_script")


def is_data_error(exc: BaseException) -> bool:
    """Whether Redis refused a command because of what a key holds (not an outage, not a
    read-only replica during a failover): waiting does not cure it."""
    return isinstance(exc, redis.ResponseError) and not isinstance(exc, redis.ReadOnlyError) \
        and any(marker in str(exc) for marker in _DATA_ERRORS)


class RedisClient:
    """One Redis (or Sentinel-managed primary) as a store sees it."""

    def __init__(self, location: Location, cluster: str = "eventd") -> None:
        self.location = location
        self.cluster = cluster
        self.prefix = f"{cluster}:"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: op -> since when it fails on what a key holds (cleared by its next success)
        self._bad_data: dict[str, float] = {}
        #: told once, with one line, when an op has failed so for BAD_DATA_GRACE seconds
        self.on_bad_data: Callable[[str], object] | None = None
        # redis-py's reply types are a union for every decode mode: replies are read as Any
        # here (decode_responses=True: str) and checked by the contract suite.
        db, health, self._sentinel = clients(location, f"eventd-{cluster}-{os.getpid()}")
        self._db: Any = db
        self._health: Any = health
        self._scripts = {name: self._db.register_script(getattr(scripts, name)) for name in (
            "SPOOL_ADD", "SPOOL_DONE", "SPOOL_UPDATE", "DEADLETTER_ADD", "DEADLETTER_TAKE",
            "THROTTLE_ACQUIRE", "LIMIT_ACQUIRE", "LEASE_ACQUIRE", "LEASE_RELEASE")}
        self._replicas = 1 if self._sentinel is not None else 0
        self._alone = False  # behind Sentinel with no replica alive: accepting unreplicated
        self._alone_since = 0.0
        self._closed = False
        #: whether Redis answers; None until the first call (whose error, if any, says it)
        self._up: bool | None = None
        self._state_lock = threading.Lock()
        self._on_error: Callable[[str], None] | None = None
        self._on_state: Callable[[bool], None] | None = None
        #: job id -> the spool_add call whose answer was lost (its next try is that call)
        self._unsure_adds: dict[str, str] = {}
        self._unsure_throttles: dict[str, str] = {}  # key -> `now` of a call whose answer was lost
        self._marks_written = 0
        self._calls = 0
        self._delivery_stop = threading.Event()
        self._delivery_thread: threading.Thread | None = None
        self._closing = threading.Event()  # ends a call's retries (and the primary's watch)
        self._watch_thread: threading.Thread | None = None
        if self._sentinel is not None:
            self._watch_thread = threading.Thread(target=self._watch_primary, daemon=True,
                                                  name="store-sentinel")
            self._watch_thread.start()

    def _attempts(self, call: Callable[[], R]) -> R:
        """One store call. Behind Sentinel, redis-py retries nothing: its retry reconnects to
        the address that failed, which may be a primary Sentinel names no longer (a restarted
        old primary is a second one until Sentinel demotes it, and a write there is lost).
        A transport error is tried again here, up to RETRIES times, after asking Sentinel which
        server is the primary (which drops the idle connections to another); the pool makes
        the next connection by asking Sentinel too. A repeated call whose first answer was
        lost says what the first did (`spool_add`, `throttle_acquire`)."""
        if self._sentinel is None:
            return call()
        retrying = RETRY_BACKOFF.retrying(
            attempts=RETRIES + 1, stopping=self._closing,
            retry_on=(redis.ConnectionError, redis.TimeoutError), before_sleep=self._follow_primary)
        return retrying(call)

    def _follow_primary(self, _state: RetryCallState | None = None) -> None:
        """Ask Sentinel which server is the primary; if another than before, the pool drops
        its idle connections to the old one."""
        try:
            self._db.connection_pool.get_master_address()
        except redis.RedisError:  # Sentinel does not answer: the next try says so
            pass

    def _watch_primary(self) -> None:
        """Behind Sentinel, ask every PRIMARY_CHECK s which server is the primary, for both
        pools (calls and health check), as the cluster's `follow_primary` does each tick. A
        failover while the store is idle would otherwise leave its pooled connections on the
        old primary, which answers as one until Sentinel demotes it (~10 s): a write without
        WAIT (a lease, a throttle, a finished job) lands there and is thrown away with its
        demotion, and a read answers from the old data. On a thread of its own, never on a
        call's path."""
        while not self._closing.wait(PRIMARY_CHECK):
            for client in (self._db, self._health):
                try:
                    client.connection_pool.get_master_address()
                except redis.RedisError:  # Sentinel does not answer: the calls say so if needed
                    pass

    def _run(self, script: str, *args: str | int) -> Any:
        return self._scripts[script](args=[self.prefix, *args])

    def _call_token(self) -> str:
        """A name for one call, the same in each of redis-py's retries of it (and, for a
        `spool_add` whose answer was lost, in each later try of it: `spool_add_fenced`)."""
        with self._state_lock:
            self._calls += 1
            return f"{self.owner}:{self._calls}"

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- errors and reachability --------------------------------------------------------------
    def observe(self, on_error: Callable[[str], None], on_state: Callable[[bool], None]) -> None:
        """Report failed operations and changes of reachability (metrics)."""
        self._on_error, self._on_state = on_error, on_state
        on_state(self._up is not False)

    def _bad_data_seen(self, op: str, exc: BaseException) -> None:
        if not is_data_error(exc):
            self._bad_data.pop(op, None)
            return
        now = time.monotonic()
        since = self._bad_data.setdefault(op, now)
        callback = self.on_bad_data
        if callback is not None and now - since >= BAD_DATA_GRACE:
            self.on_bad_data = None
            callback(f"redis store {self.location.safe}: {op.lstrip('_')} has failed for "
                     f"{now - since:.0f} s on data no eventd wrote ({self._scrub(exc)}); "
                     f"delete the cluster's keys ({self.prefix}*) or use another --cluster")

    def _failed(self, op: str, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(op)
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            self._set_up(False)

    def _set_up(self, up: bool) -> None:
        with self._state_lock:
            if self._up == up:
                return
            first, self._up = self._up is None, up
        if first:  # nothing changed: whoever made the first call hears of its failure
            logger.debug("redis store %s is %s", self.location.safe,
                         "reachable" if up else "unreachable")
        elif up:
            logger.warning("redis store %s is reachable again", self.location.safe)
        else:
            logger.error("redis store %s is unreachable; accepting nothing until it is back",
                         self.location.safe)
        if self._on_state is not None:
            self._on_state(up)

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        password = self.location.password
        return text.replace(password, "***") if password else text

    @converted
    def ping(self) -> None:
        """Raise StoreError unless Redis answers."""
        self._db.ping()

    # -- spool ----------------------------------------------------------------------------------
    def _recheck_alone(self) -> bool:
        """Alone, ask Sentinel again once a second whether a replica is back (True if so)."""
        if time.monotonic() - self._alone_since < 1.0:
            return False
        return self._replica_alive()

    def _replica_alive(self) -> bool:
        """Whether Sentinel knows a replica that is up (else a lone primary is all there is)."""
        assert self._sentinel is not None
        self._alone_since = time.monotonic()
        alone = not self._sentinel.discover_slaves(self.location.service or "")
        if alone != self._alone:
            self._alone = alone
            if alone:
                logger.warning("redis store %s: no replica is up; accepted actions are kept by "
                               "the primary alone until one is back", self.location.safe)
            else:
                logger.warning("redis store %s: a replica is up again", self.location.safe)
        return not alone

    @converted
    def lease_acquire(self, name: str, owner: str, ttl: float) -> int:
        """Take or renew lease `name` for `owner`: its fencing token, or 0 if held by another."""
        return int(self._run("LEASE_ACQUIRE", name, owner, max(1, int(ttl * 1000))))

    @converted
    def lease_release(self, name: str, owner: str) -> None:
        """Give lease `name` up if `owner` holds it."""
        self._run("LEASE_RELEASE", name, owner)

    def _take_delivery(self) -> None:
        """Hold `lease:deliver` (this process delivers the spool) and keep renewing it."""
        if not self.lease_acquire("deliver", self.owner, LANE_LEASE_TTL):
            holder = self._db.hget(self._key("lease", "deliver"), "owner") or "another process"
            raise StateDirError(
                f"another eventd ({holder}) delivers the spool of cluster {self.cluster!r} on "
                f"{self.location.safe}; stop it first (its lease ends {LANE_LEASE_TTL:.0f} s "
                "after it stops)")
        self._delivery_thread = threading.Thread(target=self._renew_delivery, daemon=True,
                                                 name="store-lease")
        self._delivery_thread.start()

    def _renew_delivery(self) -> None:
        lost = False
        while not self._delivery_stop.wait(LANE_LEASE_RENEW):
            try:
                held = self.lease_acquire("deliver", self.owner, LANE_LEASE_TTL)
            except StoreError:
                continue  # counted and logged as unreachable; renewed once Redis is back
            if not held and not lost:
                logger.error("the delivery lease of cluster %r passed to another process while "
                             "Redis was unreachable; two processes may now deliver", self.cluster)
            lost = not held

    # -- health and lifecycle -------------------------------------------------------------------
    def healthy(self) -> bool:
        """Whether Redis answers a PING now (one try, at most one socket timeout)."""
        if self._closed:
            return False
        try:
            self._health.ping()
        except redis.RedisError:
            self._set_up(False)
            return False
        self._set_up(True)
        return True

    def close(self) -> None:
        """Give the delivery lease up and close the connections (idempotent)."""
        if self._closed:
            return
        self._closing.set()
        self._delivery_stop.set()
        if self._delivery_thread is not None:
            self._delivery_thread.join(timeout=LANE_LEASE_RENEW + 5.0)
            try:
                self.lease_release("deliver", self.owner)
            except StoreError as exc:
                logger.warning("could not give the delivery lease up (it ends by itself): %s", exc)
        self._closed = True
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=1.0)  # a Sentinel that hangs: it ends by itself
        for client in (self._db, self._health):
            try:
                client.close()
            except redis.RedisError:  # closing what is already gone
                pass


