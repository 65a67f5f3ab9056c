"""The coordinator: which namespaces' streams this replica consumes, decided with the others.

One thread ticks every lease TTL / 3 (or at once when another replica announces a change on
the pub/sub channel): heartbeat, renew every lease held, save each stream's progress, give
back leases above this replica's quota, take free ones below it. A lease that cannot be
renewed in time (Redis unreachable) stops its consumer before the lease can have expired in
Redis, so two replicas never consume one stream. A graceful stop frees every lease (and says
so on the channel), so the others take over at once instead of after the TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from eventd.clients.dockercloud.namespaces import label
from eventd.cluster.connection import follow_primary
from eventd.cluster.keys import Keys
from eventd.cluster.leases import Lease, Leases
from eventd.cluster.membership import Mac, Membership, quota, signed_by
from eventd.cluster.metrics import ClusterMetrics
from eventd.cluster.progress import Tracker
from eventd.cluster.streams import Streams
from eventd.errors import StoreError
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.stores.redis.client import is_data_error

logger = logging.getLogger(__name__)

#: a lease is used for this share of its TTL after the renewal that set it was sent; the rest
#: is the margin within which the replica has stopped consuming before Redis frees the lease
VALID_SHARE = 0.8
#: ticks a namespace must be seen free before a replica at its quota takes it anyway
#: (replicas' views of who is alive differ for a moment; a stream must not stay unconsumed)
ORPHAN_TICKS = 2
#: a replica whose stream of a leased namespace stayed unconnected for this share of a TTL (cut
#: off from the stream server) hands it over, and takes no stream for CUT_OFF_TTLS TTLs (a
#: standby meanwhile)
UNCONNECTED_SHARE = 2 / 3
CUT_OFF_TTLS = 5
#: a replica whose reader of a leased stream has been held up in its sink this share of a TTL
#: (a store write no Redis replica confirms) hands the stream over the same way: nobody reads
#: it meanwhile, and the stream server drops the silent connection
HELD_SHARE = 1.0
#: ...if another replica's reader is not held up too: one held this share of a TTL says so in
#: its heartbeat (`stalled`), and a store stalled for every replica (a failover) moves nothing.
#: The same share of a TTL of its engine waiting on the store (`until_stored`) makes a replica
#: stand by: it takes no free stream while another replica can, whose engine is not held
STALLED_SHARE = 1 / 3


def _announces_gap(job: ActionJob) -> bool:
    """Whether the job's event is eventd's own stream marker (`connected` with the gap...)."""
    event = job.event
    return isinstance(event, dict) and event.get("type") == "eventd" \
        and event.get("action") == "stream"


def new_replica_id() -> str:
    """A replica id unique across hosts and restarts: host, pid and a random part."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Coordinator:
    """Holds leases on namespaces' streams for this replica and runs their consumers."""

    def __init__(self, client: redis.Redis, *, cluster: str, namespaces: tuple[str | None, ...],
                 ttl: float, streams: Streams, tracker: Tracker, metrics: Metrics,
                 cluster_metrics: ClusterMetrics, info: Callable[[], dict[str, Any]],
                 max_gap: float, replica_id: str | None = None,
                 on_takeover: Callable[[], object] | None = None,
                 on_fatal: Callable[[str], object] | None = None,
                 mac: Mac | None = None,
                 quiesce: Callable[[str, float], bool] | None = None,
                 abort: Callable[[str], object] | None = None,
                 store_waiting: Callable[[], float] | None = None) -> None:
        """`on_takeover` is called when this replica takes a stream another one held (dead or
        stopped): it delivers what that one left in the shared spool. `quiesce` waits until
        the requests sent under a lease are answered; `abort` resets those still on their
        way once the lease is no longer this replica's (the dispatcher's). `store_waiting`:
        seconds this replica's engine has been held waiting for the store (a write no Redis
        replica confirms): a stream taken then would not be read."""
        self.replica_id = replica_id or new_replica_id()
        self.ttl = ttl
        self.interval = ttl / 3
        self._client = client
        self._keys = Keys(cluster)
        self._names = {label(ns): ns for ns in namespaces}
        self._streams = streams
        self._tracker = tracker
        self._metrics = metrics
        self._cluster_metrics = cluster_metrics
        self._info = info
        self._max_gap = max_gap
        self._on_takeover = on_takeover
        #: called once (with one line) when the cluster's keys hold garbage for a lease TTL
        self._on_fatal = on_fatal
        self._bad_data_since: float | None = None
        #: waits until the requests sent under a lease's tokens are answered (the dispatcher)
        self._quiesce = quiesce
        #: resets the requests still on their way under a lease's tokens (the dispatcher)
        self._abort_requests = abort
        self._store_waiting = store_waiting
        self._engine_was_held = False  # said once per change (a log line)
        self._leases = Leases(client, self._keys, self.replica_id, ttl)
        #: signs this replica's heartbeat and checks the others' (None: neither, as before)
        self._mac = mac
        self._membership = Membership(client, self._keys, self.replica_id, ttl, mac)
        self._held: dict[str, Lease] = {}
        self._held_lock = threading.Lock()
        self._free_ticks: dict[str, int] = {}
        self._ignored: set[str] = set()  # replicas whose heartbeat was said to be ignored
        self._refused: set[str] = set()  # leases whose token a server refused as stale
        self._handed: set[str] = set()  # leases given back on purpose since last held here
        self._tokens: dict[str, int] = {}  # each lease's token in its last tenure here
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_ok: float | None = None
        #: when another replica's lease ends unless renewed: look then (its holder may be dead)
        self._watch_until: float | None = None
        self.reachable = False
        self._unreachable_logged = False
        #: the Redis primary seen last (Sentinel's address, the server's run id), and until
        #: when no free lease is taken after it changed (`_grace_all`), or, in this replica's
        #: first TTL, none whose last holder did not release it (see _watch_primary)
        self._primary: tuple[object, object] | None = None
        self._grace_until = 0.0
        self._grace_all = False
        self._held_back: set[str] = set()  # streams said to wait for the grace (a log line)
        #: until when this replica takes no stream: one it held could not connect for a TTL
        self._cut_off_until = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Join the cluster (a first tick now, so a lone replica consumes at once) and run."""
        self._tick()
        for name, target in (("cluster", self._loop), ("cluster-listen", self._listen),
                             ("cluster-expire", self._watch_leases)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        logger.info("cluster %s: replica %s started, lease TTL %.1f s, namespaces %s",
                    self._keys.cluster, self.replica_id, self.ttl, ", ".join(self._names))

    def stop(self, timeout: float) -> None:
        """Stop consuming, free every lease (saying where each stream was left), leave."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(max(0.1, min(2.0, deadline - time.monotonic())))
        running = self._streams.stop_all(max(0.5, min(1.5, deadline - time.monotonic())))
        with self._held_lock:
            held, self._held = dict(self._held), {}
            self._handed.update(held)
        if not self._quiet(list(held), max(0.1, min(2.0, deadline - time.monotonic()))):
            running = running | set(held)  # requests still on their way: let the leases expire
            self._abort(list(held))  # and reset them: they must not land after the expiry
        try:
            for name, lease in held.items():
                self._cluster_metrics.follow(name, "released")
                if name in running:  # its connection may still be open: let the lease expire
                    continue
                self._leases.release(name, lease.token, self._left_at(name))
            self._membership.leave()
            if held:
                logger.info("released the streams of %s for the other replicas", ", ".join(held))
        except redis.RedisError as exc:
            logger.warning("could not release the leases of %s (%s); the other replicas take "
                           "over when they expire (%.0f s)", ", ".join(held) or "no stream",
                           _describe(exc), self.ttl)

    def holds(self, name: str) -> bool:
        """Whether this replica holds (and may act on) the stream of `name` right now."""
        lease = self._held.get(name)
        return lease is not None and lease.valid(time.monotonic())

    def held(self) -> list[str]:
        """The namespaces this replica holds, sorted."""
        return sorted(self._held)

    def job_token(self, job: ActionJob) -> str | None:
        """The fencing header's value for a job of a leased namespace while this replica
        holds that lease (`<cluster>/<ns>:<token>`); None while it does not (the job is left
        in the spool for the holder); "" for a job of no leased namespace."""
        name = self._name_of(job)
        if name not in self._names:
            return ""
        return self._token(name)

    def job_lease(self, job: ActionJob) -> tuple[str, ...] | None:
        """The lease of a job's namespace as the store checks it where the job is accepted
        (key, `<replica>:`): refused if another replica holds it. A replica cut off from Redis
        while it held the stream holds its last events' jobs until Redis answers, and by then
        the stream may be another's, whose newer jobs they would follow (out of order); free,
        or this replica's again, they are accepted (nothing newer is ahead of them). For a
        namespace this replica handed over (rebalance, stop: the release said where the stream
        was left, the last events received), (key, `<replica>:`, "any"): its jobs are accepted
        whoever holds it next, and named late to that holder, whose newer jobs for the same
        target then go out after them (through the spool), not before. None for a job of no
        leased namespace, or of eventd's own gap marker (the announcement of a gap must land
        whoever holds the stream by then: refused, the events it covers would be lost
        unannounced). Once held here, also its last tenure's token: only a holder with a
        larger one is newer (a failover can bring an older holding back, its successor's take
        lost with the old primary: the test of a failover under a running cluster, loaded)."""
        name = self._name_of(job)
        if name not in self._names or _announces_gap(job):
            return None
        if name in self._handed and name not in self._held:
            return self._keys.lease(name), f"{self.replica_id}:", "any"
        token = self._tokens.get(name)
        if token is None:
            return self._keys.lease(name), f"{self.replica_id}:"
        return self._keys.lease(name), f"{self.replica_id}:", str(token)

    def _name_of(self, job: ActionJob) -> str:
        namespace = job.event.get("namespace") if isinstance(job.event, dict) else None
        return namespace if isinstance(namespace, str) and namespace in self._names \
            else label(None)

    def stream_token(self, name: str) -> Callable[[], str | None]:
        """The fencing header value a stream's handshake carries (None: lease not held)."""
        return lambda: self._token(name)

    def _token(self, name: str) -> str | None:
        lease = self._held.get(name)
        if lease is None or not lease.valid(time.monotonic()):
            return None
        return f"{self._keys.cluster}/{name}:{lease.token}"

    def fence(self, name: str) -> Callable[[], bool]:
        """The check a leased stream's sink makes before every batch."""
        return lambda: self.holds(name)

    def refused(self, name: str) -> None:
        """A server refused this replica's token for `name` as stale: a Redis failover handed
        out lower numbers than one it saw. The lease is given up (and freed) at once, so that
        the next holder, this replica or another, draws a higher token: else the stream would
        stay refused for as long as the lease is renewed."""
        self._refused.add(name)
        self._wake.set()

    def lease_lost(self, name: str) -> None:
        """A sink found its lease invalid: have the coordinator look now."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        next_tick = time.monotonic() + self.interval
        while not self._stop.is_set():
            now = time.monotonic()
            with self._held_lock:
                soonest = min((lease.valid_until for lease in self._held.values()), default=None)
            wait = next_tick - now
            for deadline in (soonest, self._watch_until, self._hand_over_due(now)):
                if deadline is not None:
                    wait = min(wait, deadline - now)
            if self._wake.wait(max(0.0, wait)):
                self._wake.clear()
            if self._stop.is_set():
                return
            self._expire(time.monotonic())
            self._give_up_refused()
            next_tick = time.monotonic() + self.interval
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - the coordinator must keep running
                report_internal_error("cluster", exc, self._metrics)

    def _hand_over_due(self, now: float) -> float | None:
        """When the first held stream without a connection will have been down for 2/3 TTL,
        or whose reader will have been held up in its sink for HELD_SHARE of a TTL (then the
        tick hands it over, not up to a tick interval later); None if none will."""
        with self._held_lock:
            held = list(self._held)
        limit = self.ttl * UNCONNECTED_SHARE
        due = [limit - down for down in map(self._streams.down_for, held) if 0 < down <= limit]
        stall = self.ttl * HELD_SHARE
        due += [stall - hold for hold in map(self._streams.held_for, held) if 0 < hold <= stall]
        return now + min(due) + 0.01 if due else None

    def _watch_leases(self) -> None:
        """Close each stream the moment its lease runs out here, even while the loop waits on
        Redis: a call's timeout can outlast the margin before Redis frees the lease, and the
        connection would stay open beside the next holder's. The loop drops the lease."""
        closed: set[int] = set()
        while not self._stop.is_set():
            now = time.monotonic()
            with self._held_lock:
                leases = list(self._held.values())
            ended = [lease for lease in leases if not lease.valid(now) and id(lease) not in closed]
            if ended:
                try:
                    self._streams.close([lease.namespace for lease in ended])
                    # A request sent under it must not reach its server from now on (TCP
                    # retransmitting it once a partition heals): reset, left for the next holder.
                    self._abort([lease.namespace for lease in ended])
                except Exception as exc:  # noqa: BLE001 - the watchdog must keep watching
                    report_internal_error("cluster", exc, self._metrics)
                self._wake.set()
            closed = {id(lease) for lease in leases if not lease.valid(now)}
            soonest = min((lease.valid_until for lease in leases if lease.valid(now)),
                          default=now + self.interval)
            self._stop.wait(max(0.005, min(self.interval, soonest - now + 0.001)))

    def _listen(self) -> None:
        """Wake the loop whenever a replica announces a change (joined, left, freed a lease)."""
        while not self._stop.is_set():
            pubsub = self._client.pubsub(
                ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._keys.channel)
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=0.5) is not None:
                        self._wake.set()
            except (redis.RedisError, OSError):
                self._stop.wait(0.5)
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def _expire(self, now: float) -> None:
        """Stop consuming every stream whose lease could not be renewed in time."""
        with self._held_lock:
            expired = [name for name, lease in self._held.items() if not lease.valid(now)]
        self._streams.close(expired)  # all at once: then each is joined
        for name in expired:
            self._drop(name, "unreachable")

    def _tick(self) -> None:
        if self._stop.is_set():
            return
        address = follow_primary(self._client)  # behind Sentinel: never renew on a demoted one
        try:
            self._watch_primary(address, self._run_id())
            joined = self._membership.heartbeat(self._heartbeat())
            live = self._vetted(self._membership.live())
            self._hand_over_stalled(live)  # before the renewal: a stalled one is not renewed
            self._renew()
            self._save_progress()
            self._hand_over_unconnected(live)
        except redis.RedisError as exc:
            self._unreachable(exc)
            return
        self._reached()
        if joined:
            self._membership.announce(f"joined {self.replica_id}")
        want = quota(self.replica_id, live, len(self._names), len(self._held))
        others_read = self._others_unheld(live)
        engine_held = self._engine_held() and others_read
        if engine_held != self._engine_was_held:
            self._engine_was_held = engine_held
            if engine_held:
                logger.warning("cluster: this replica's engine has waited %.1f s on the store; "
                               "taking no free stream while another replica can read it",
                               self._store_waiting() if self._store_waiting else 0.0)
            else:
                logger.info("cluster: taking free streams again (engine not waiting on the "
                            "store, or no other replica can read them)")
        # A replica standing by (cut off) leaves free streams to one its store alone holds too
        reading = others_read or any(r != self.replica_id and info.get("reading")
                                     for r, info in live.items())
        try:
            self._balance(want, engine_held, reading)
        except redis.RedisError as exc:
            self._unreachable(exc)
            return
        self._bad_data_since = None  # a whole tick without a refusal

    def _heartbeat(self) -> dict[str, Any]:
        """What this replica says of itself; `standby` while it takes no stream (cut off
        from the stream server): the others' quotas leave it out, so they take its share
        instead of handing streams over to it."""
        info = self._info()
        engine_held = self._engine_held()
        standing_by, reader_stalled = self._standing_by(), self._reader_stalled()
        if standing_by or engine_held:
            info = {**info, "standby": True}
        if reader_stalled or engine_held:
            info = {**info, "stalled": True}
        if engine_held and not standing_by and not reader_stalled:
            # Held by its store alone: its readers read on (into the engine's queue), so it
            # can take a stream that a replica cut off from the stream server cannot read
            info = {**info, "reading": True}
        return info

    def _engine_held(self) -> bool:
        """Whether this replica's engine has been waiting on the store for STALLED_SHARE of a
        TTL (chaos seed 15: r3 took globex while its engine had waited 11 s on a spool_add
        after a failover; its reader was held up at once, and the gap lasted 12.3 s)."""
        return self._store_waiting is not None \
            and self._store_waiting() > self.ttl * STALLED_SHARE

    def _others_unheld(self, live: dict[str, dict[str, Any]]) -> bool:
        """Whether another live replica can take a stream and read it (neither standing by
        nor held up by its store): else a held engine takes what is free as before (a store
        stalled for every replica, a failover: nobody could read it sooner)."""
        return any(r != self.replica_id and not info.get("standby") and not info.get("stalled")
                   for r, info in live.items())

    def _hand_over_unconnected(self, live: dict[str, dict[str, Any]]) -> None:
        """Give back each lease whose stream has had no connection for 2/3 TTL, if another
        replica could take it: this one is cut off from the stream server (a partition, a
        handshake that hangs), and holding on would leave the stream unconsumed until the
        partition heals. The next holder announces and backfills the gap. A replica standing
        by only because its engine waits on the store (`reading`) could take it too: it
        takes a free stream when no other can, and reads it (chaos seed 1, t+414: r2, cut
        off, held acme and umbrella for 8 s while every other replica's engine waited on a
        spool_add after a failover, their readers reading on)."""
        others = [r for r, info in live.items() if r != self.replica_id
                  and (not info.get("standby") or info.get("reading"))]
        if not others:
            return
        with self._held_lock:
            held = list(self._held)
        down = [name for name in held
                if self._streams.down_for(name) > self.ttl * UNCONNECTED_SHARE]
        if not down:
            return
        self._cut_off_until = time.monotonic() + CUT_OFF_TTLS * self.ttl
        for name in down:
            logger.warning("the stream of %s has not connected for %.1f s: handing it over "
                           "and taking no stream for %.0f s", name,
                           self._streams.down_for(name), CUT_OFF_TTLS * self.ttl)
        # All told at once, then one wait for all: a handshake under way (a TCP connect in a
        # partition) holds its consumer up to the handshake timeout, and the lease of one not
        # stopped in time is left to expire rather than freed.
        self._streams.close(down)
        deadline = time.monotonic() + 2.0
        for name in down:
            self._give_back(name, "unconnected", deadline - time.monotonic())
        self._membership.heartbeat(self._heartbeat())
        self._membership.announce("released")

    def _hand_over_stalled(self, live: dict[str, dict[str, Any]]) -> None:
        """Give back each lease whose reader has been held up in its sink for a TTL, if
        another replica could take it: a store write no Redis replica confirms (a failover
        resyncing) held the reader for 36 s in a chaos run while the lease was renewed and
        nobody read the stream (a 17 s gap). Its connection is closed, the requests sent
        under it are reset, and the lease is freed, saying where the stream was left (the
        last event processed): the next holder announces and backfills the gap from there.
        The reader still holds a batch, but the close shut its socket. Left to run out (a
        TTL after the last renewal), the lease kept the stream from the others: chaos seed 1,
        t+191.6, a Redis restart and a failover came meanwhile, and with the grace after
        them a 10.1 s gap (globex, freed by the same replica at the same tick, was taken
        11 ms later). It still expires if the connection may be open (the reader left the
        sink and has not stopped) or a request sent under it is not answered.
        This replica stands by (takes no stream) for a TTL, and on until its held reader lets
        go. Nothing moves
        while every other replica's reader is held up too (`stalled` in its heartbeat): a
        store stalled for all (a failover) would only add a gap per hand-over."""
        others = [r for r, info in live.items() if r != self.replica_id
                  and not info.get("standby") and not info.get("stalled")]
        if not others:
            return
        with self._held_lock:
            held = list(self._held)
        holds = {name: self._streams.held_for(name) for name in held}
        stalled = [name for name, hold in holds.items() if hold > self.ttl * HELD_SHARE]
        if not stalled:
            return
        # A TTL at least (for another to take it, or the lease's end in Redis if it is left to
        # run out), then for as long as the held reader is held
        self._cut_off_until = max(self._cut_off_until, time.monotonic() + self.ttl)
        with self._held_lock:  # first: the sink's fence lets no batch through from now on
            leases = {name: self._held.pop(name) for name in stalled if name in self._held}
        self._streams.close(stalled)
        # Held since before the close: the close shut the socket, the connection is gone
        shut = {name for name in stalled if self._streams.held_for(name) >= holds[name]}
        for name in stalled:
            logger.warning("the reader of %s has been held up for %.1f s (a stalled store): "
                           "handing its stream over and taking no stream until it lets go",
                           name, holds[name])
        self._abort(stalled)
        for name in stalled:
            if self._streams.stop(name, 0.1):  # its reader lets go when the sink does
                shut.add(name)
            self._cluster_metrics.follow(name, "stalled")
        deadline = time.monotonic() + min(1.0, self.interval)
        freed = [name for name, lease in leases.items()
                 if self._leave_stalled(name, lease, name in shut, deadline)]
        if freed:
            self._membership.heartbeat(self._heartbeat())  # standing by: out of the quotas
            self._membership.announce("released")

    def _leave_stalled(self, name: str, lease: Lease, shut: bool, deadline: float) -> bool:
        """Free a stalled stream's lease at its last processed event (True), or save that
        mark and let the lease expire: its connection may still be open, or a request sent
        under it is unanswered (reset just before). Without a mark the last tick's stands."""
        at = self._tracker.last_processed(name)
        if at is None or not lease.valid(time.monotonic()):
            return False
        try:
            if shut and self._quiet([name], max(0.0, deadline - time.monotonic())):
                return self._leases.release(name, lease.token, at)
            self._leases.record(name, lease.token, at)
        except redis.RedisError:
            pass
        return False

    def _reader_stalled(self) -> bool:
        """Whether a reader of this replica has been held up in its sink for STALLED_SHARE of
        a TTL, or one it handed over still is (said in its heartbeat)."""
        with self._held_lock:
            held = list(self._held)
        limit = self.ttl * STALLED_SHARE
        return any(self._streams.held_for(name) > limit for name in held) \
            or self._streams.held_up()

    def _standing_by(self) -> bool:
        """Whether this replica takes no stream now: cut off from the stream server (for
        CUT_OFF_TTLS TTLs), or a reader it handed over is still held up by its store."""
        return self._cut_off_until > time.monotonic() or self._streams.held_up()

    def _run_id(self) -> object:
        """The Redis server's run id (a new one after a restart); None if INFO is refused."""
        try:
            return self._client.info("server").get("run_id")
        except redis.ResponseError:  # not allowed to this user (ACL): the address alone
            return None

    def _watch_primary(self, address: object, run_id: object) -> None:
        """Note a new Redis primary (another address behind Sentinel, or the same server
        restarted: a new run id). Until a lease TTL after this replica saw it, it takes no
        free lease: another replica may hold one on the old primary (taken or renewed while
        Sentinel still named it, or lost from a restarted primary's last second of AOF), in
        use until its local end, which is within a TTL of the old primary's last answer.
        The first primary a replica sees may be such a new one too: for a TTL from then it
        takes no free lease that its last holder left to expire (`_left_cleanly`)."""
        if self._primary is not None and address is None:
            address = self._primary[0]  # Sentinel did not answer: nothing known to change
        primary = (address, run_id)
        if primary == self._primary:
            return
        self._grace_until = time.monotonic() + self.ttl
        # The first primary seen: one a failover may have just promoted, without the last
        # renewal of a lease in use. Streams released or never held are taken at once.
        self._grace_all = self._primary is not None
        if self._primary is not None:
            logger.warning("cluster: a new Redis primary (%s); taking no free stream for %.1f "
                           "s, while a lease taken on the old one may still be in use",
                           "restarted" if address == self._primary[0] else "failover",
                           self.ttl)
        self._primary = primary

    def _vetted(self, live: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The live replicas with the streams each really holds (by the leases), whatever its
        heartbeat lists: a heartbeat is data anyone with access to Redis can write, and a
        forged one must not make this replica hand its streams over. A malformed heartbeat,
        or one listing streams that replica does not hold, is said once per replica and
        counted (eventd_cluster_heartbeats_ignored_total{reason})."""
        holders = self._leases.holders(sorted(self._names))
        vetted: dict[str, dict[str, Any]] = {}
        for replica, info in live.items():
            held = [name for name, holder in holders.items() if holder == replica]
            claimed = info.get("namespaces") or []
            if replica != self.replica_id:
                reason = None
                if self._mac is not None and not signed_by(self._mac, replica, info):
                    reason = "unsigned"  # not counted at all: anyone can write a heartbeat
                elif info.get("malformed"):
                    reason = "malformed"
                elif set(claimed) - set(held):
                    reason = "not_held"
                if reason is not None:
                    self._cluster_metrics.heartbeats_ignored.labels(reason=reason).inc()
                    if len(self._ignored) < 1000 and replica not in self._ignored:
                        self._ignored.add(replica)
                        if reason == "unsigned":
                            logger.warning("replica %r's heartbeat does not carry this "
                                           "cluster's MAC (written by hand, or another job "
                                           "key): not counted as a replica", replica[:80])
                        else:
                            logger.warning("replica %r's heartbeat is %s: counting the "
                                           "streams its leases hold (%d), not what it lists",
                                           replica[:80], "malformed" if reason == "malformed"
                                           else "listing streams it does not hold", len(held))
                if reason == "unsigned":
                    continue
            vetted[replica] = {**info, "namespaces": held}
        return vetted

    def _renew(self) -> None:
        with self._held_lock:
            held = dict(self._held)
        for name, lease in held.items():
            if not self._streams.alive(name):  # its consumer ended (credentials rejected...)
                continue
            sent = time.monotonic()
            if not lease.valid(sent):
                # It ran out while this tick waited on Redis: its sink has dropped events
                # since, which only a new take announces as a gap. Never revived.
                self._streams.close([name])
                self._drop(name, "unreachable")
                continue
            if self._leases.renew(name, lease.token):
                lease.valid_until = sent + self.ttl * VALID_SHARE
            else:
                self._drop(name, "lost")

    def _save_progress(self) -> None:
        with self._held_lock:
            held = dict(self._held)
        for name, lease in held.items():
            at = self._tracker.last_processed(name)
            if at is not None:
                self._leases.record(name, lease.token, at)

    def _balance(self, want: int, engine_held: bool = False, others_read: bool = True) -> None:
        """Give back what is above `want`, take free streams up to it; none while the
        `engine_held` (waiting on the store, and another replica's engine is not), nor while
        standing by if `others_read` (another replica can take them and read them)."""
        others = [name for name in self._names if name not in self._held]
        left = self._leases.time_left(others) if others else {}
        # A few ms after the earliest of them ends: if its holder died, take over right then
        # rather than at the next tick.
        self._watch_until = time.monotonic() + min(left.values()) + 0.02 if left else None
        held = sorted(self._held)
        if len(held) > want:
            for name in held[want:]:
                self._give_back(name)
            self._membership.announce("released")
            return
        grace = self._grace_until - time.monotonic()
        if grace > 0 and self._grace_all:  # a new primary: a lease on the old one may be in use
            self._watch_grace(grace)
            return
        if self._standing_by() and others_read:
            # cut off from the stream server, or its store stalled: another replica reads
            # them. If none can (all stand by or are held up: chaos seed 15, t+74 to t+87, r1
            # stood by 15 s after a 2.5 s partition while the others' readers were held up
            # or cut off), trying costs nothing: the stream is unconsumed either way.
            return
        if engine_held:  # its reader would be held up at once: a replica that reads takes it
            return
        free_ticks, self._free_ticks = self._free_ticks, {}
        for name in sorted(self._names):
            if name in self._held:
                continue
            if len(self._held) >= want:
                if self._leases.holder(name) is not None:
                    continue
                # Free in consecutive ticks only: counts from earlier ticks are dropped.
                self._free_ticks[name] = free_ticks.get(name, 0) + 1
                if self._free_ticks[name] < ORPHAN_TICKS:
                    continue
            if grace > 0 and (name in left or not self._left_cleanly(name)):
                self._watch_grace(grace)  # held a moment ago, or may still be in use
                continue
            sent = time.monotonic()
            token = self._leases.acquire(name)
            if token is not None:
                self._free_ticks.pop(name, None)
                self._take(name, token, sent)

    def _watch_grace(self, grace: float) -> None:
        """Look again a few ms after the grace ends: what it held back is taken then."""
        self._watch_until = min(self._watch_until or float("inf"),
                                time.monotonic() + grace + 0.02)

    def _left_cleanly(self, name: str) -> bool:
        """In this replica's first TTL: whether a free stream was released by its last
        holder, or never held (a new cluster). A lease that expired instead may have done so
        only on a primary a failover promoted before this replica started, which lacks the
        holder's last renewal: the holder consumes on until its local end, up to a renewal
        interval later (chaos: two consumers for 61 ms). The replicas that saw the old
        primary wait a TTL after the change; this one waits out its first TTL."""
        progress = self._leases.progress(name)
        if progress.left_cleanly:
            return True
        if name not in self._held_back:
            self._held_back.add(name)
            logger.info("cluster: the stream of %s was left to expire by %s, not released; "
                        "taking it once this replica has been up %.1f s (its holder may still "
                        "consume it, on the other side of a failover)", name,
                        (progress.holder or "")[:80], self.ttl)
        return False

    def _take(self, name: str, token: int, sent: float) -> None:
        progress = self._leases.begin(name, token)
        since = progress.at
        if since is not None and time.time() - since > self._max_gap:
            since = None  # too old to fill: start afresh, as a single process does
        reason = "takeover" if progress.holder not in (None, self.replica_id) \
            and not progress.released else "acquired"
        lease = Lease(name, token, sent + self.ttl * VALID_SHARE)
        # Until this tenure's gap marker is accepted, the stream stays where it was left
        self._tracker.begin(name, since)
        with self._held_lock:
            self._held[name] = lease
            self._handed.discard(name)
            self._tokens[name] = token
        if self._on_takeover is not None:
            # What earlier holders (another replica, or this one before it lost the lease)
            # accepted and left in the spool: the dispatcher pages in this namespace's jobs
            # only (it sends only the jobs of the leases held here). Before the stream
            # starts: a job accepted from it then waits behind them in the spool, in order,
            # instead of going straight to its lane ahead of them.
            try:
                self._on_takeover()
            except StoreError as exc:
                logger.warning("could not read the spool left for %s (%s); the sweep looks "
                               "again", name, exc)
        self._streams.start(self._names[name], since, self.fence(name))
        self._cluster_metrics.lead(name, reason)
        gap = f", gap since the last event {time.time() - since:.1f} s" if since else ""
        logger.info("consuming the stream of %s (lease token %d, %s%s)", name, token, reason, gap)

    def _give_back(self, name: str, reason: str = "rebalanced", wait: float = 2.0) -> None:
        """Rebalance (or cut off from the stream): stop consuming, then free the lease for the
        replica that needs one."""
        stopped = self._streams.stop(name, max(0.1, wait))
        with self._held_lock:
            lease = self._held.pop(name, None)
            self._handed.add(name)
        if lease is not None and stopped:
            # No request starts under it now; those on their way are answered before it is
            # freed (else the next holder's token could reach the server after one of them).
            stopped = self._quiet([name], 2.0)
        if lease is not None and not stopped:
            self._abort([name])  # reset what is still on its way; the lease expires
        if lease is not None and stopped:  # else its connection may still be open: it expires
            self._leases.release(name, lease.token, self._left_at(name))
        self._cluster_metrics.follow(name, reason)
        if reason == "rebalanced":
            logger.info("handed the stream of %s over to even out the replicas", name)

    def _give_up_refused(self) -> None:
        """Stop consuming and free the leases whose token a server refused as stale."""
        while self._refused:
            name = self._refused.pop()
            if not self._streams.stop(name, 2.0):
                continue
            with self._held_lock:
                lease = self._held.pop(name, None)
                self._handed.add(name)
            if lease is None:
                continue
            self._cluster_metrics.follow(name, "lost")
            logger.warning("the lease token %d of %s was refused as stale by a server (a Redis "
                           "failover reissued lower tokens); giving the lease up for a newer one",
                           lease.token, name)
            self._abort([name])
            try:
                self._leases.release(name, lease.token, self._left_at(name))
            except redis.RedisError:
                pass  # it expires

    def _left_at(self, name: str) -> float | None:
        """Where a stream given back was left, for the next holder's gap: the last event the
        engine finished. Events received but still queued behind a stalled store (seconds of
        them after a failover) come after it: if this replica dies before it runs them, they
        are in the gap the next holder announces, not lost unannounced (chaos seeds 11, 12:
        250-270 such events, a rebalance during a failover's stall, then a kill). Run here,
        their jobs are still accepted (the lease was handed over on purpose). Before the
        engine finished an event of this tenure (its gap marker first), where the tenure
        began: the gap is announced by nobody yet (the tracker's `begin`)."""
        return self._tracker.last_processed(name) or self._tracker.last_received(name)

    def _abort(self, names: list[str]) -> None:
        """Reset the requests still on their way under these leases (their jobs stay in the
        spool for the next holder, who sends them under its own token)."""
        if self._abort_requests is None:
            return
        for name in names:
            self._abort_requests(f"{self._keys.cluster}/{name}:")

    def _quiet(self, names: list[str], timeout: float) -> bool:
        """Whether every request sent under these leases was answered within `timeout`."""
        if self._quiesce is None or not names:
            return True
        deadline = time.monotonic() + timeout
        return all(self._quiesce(f"{self._keys.cluster}/{name}:",
                                 max(0.0, deadline - time.monotonic())) for name in names)

    def _drop(self, name: str, reason: str) -> None:
        """Stop consuming a stream whose lease is gone or may be gone."""
        with self._held_lock:
            lease = self._held.pop(name, None)
        if lease is None:
            return
        self._abort([name])
        self._streams.stop(name, 1.0)
        self._cluster_metrics.follow(name, reason)
        if reason == "lost":
            logger.warning("lease on the stream of %s was taken over; stopped consuming it", name)
        else:
            logger.warning("lease on the stream of %s could not be renewed in time (Redis "
                           "unreachable); stopped consuming it before it expires", name)

    def _unreachable(self, exc: BaseException) -> None:
        self.reachable = False
        if is_data_error(exc):
            # Redis answered: the cluster's keys hold what no replica wrote. That does not
            # pass by waiting (as an outage does): after a lease TTL of it, stop the replica
            # with one line rather than stay alive and consume nothing.
            now = time.monotonic()
            if self._bad_data_since is None:
                self._bad_data_since = now
                logger.error("cluster: Redis refuses the cluster's keys (%s): they hold data "
                             "no replica wrote; exiting unless it passes within %.1f s",
                             _describe(exc), self.ttl)
            self._expire(now)
            if now - self._bad_data_since >= self.ttl and self._on_fatal is not None:
                self._on_fatal(f"cluster {self._keys.cluster}: its keys in Redis hold data no "
                               f"replica wrote ({_describe(exc)}); delete the cluster's keys "
                               f"(`{self._keys.cluster}:*`) or use another --cluster")
                self._on_fatal = None
            return
        self._bad_data_since = None
        if not self._unreachable_logged:
            self._unreachable_logged = True
            logger.warning("cluster: Redis unreachable (%s); streams held stop before their "
                           "leases end, retrying every %.1f s", _describe(exc), self.interval)
        self._expire(time.monotonic())

    def _reached(self) -> None:
        if self._unreachable_logged:
            logger.info("cluster: Redis reachable again")
        self._unreachable_logged = False
        self.reachable = True


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
