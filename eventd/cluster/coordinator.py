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

from eventd.cluster.keys import Keys
from eventd.cluster.leases import Lease, Leases
from eventd.cluster.membership import Membership, quota
from eventd.cluster.metrics import ClusterMetrics
from eventd.cluster.progress import Tracker
from eventd.cluster.streams import Streams
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.sources.dockercloud.namespaces import label

logger = logging.getLogger(__name__)

#: a lease is used for this share of its TTL after the renewal that set it was sent; the rest
#: is the margin within which the replica has stopped consuming before Redis frees the lease
VALID_SHARE = 0.8
#: ticks a namespace must be seen free before a replica at its quota takes it anyway
#: (replicas' views of who is alive differ for a moment; a stream must not stay unconsumed)
ORPHAN_TICKS = 2


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
                 on_takeover: Callable[[], object] | None = None) -> None:
        """`on_takeover` is called when this replica takes a stream another one held (dead or
        stopped): it delivers what that one left in the shared spool."""
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
        self._leases = Leases(client, self._keys, self.replica_id, ttl)
        self._membership = Membership(client, self._keys, self.replica_id, ttl)
        self._held: dict[str, Lease] = {}
        self._held_lock = threading.Lock()
        self._free_ticks: dict[str, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_ok: float | None = None
        #: when another replica's lease ends unless renewed: look then (its holder may be dead)
        self._watch_until: float | None = None
        self.reachable = False
        self._unreachable_logged = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Join the cluster (a first tick now, so a lone replica consumes at once) and run."""
        self._tick()
        for name, target in (("cluster", self._loop), ("cluster-listen", self._listen)):
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
        try:
            for name, lease in held.items():
                self._cluster_metrics.follow(name, "released")
                if name in running:  # its connection may still be open: let the lease expire
                    continue
                self._leases.release(name, lease.token, self._tracker.last_received(name))
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

    def fence(self, name: str) -> Callable[[], bool]:
        """The check a leased stream's sink makes before every batch."""
        return lambda: self.holds(name)

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
            for deadline in (soonest, self._watch_until):
                if deadline is not None:
                    wait = min(wait, deadline - now)
            if self._wake.wait(max(0.0, wait)):
                self._wake.clear()
            if self._stop.is_set():
                return
            self._expire(time.monotonic())
            next_tick = time.monotonic() + self.interval
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - the coordinator must keep running
                report_internal_error("cluster", exc, self._metrics)

    def _listen(self) -> None:
        """Wake the loop whenever a replica announces a change (joined, left, freed a lease)."""
        while not self._stop.is_set():
            pubsub = self._client.pubsub(  # type: ignore[no-untyped-call]
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
        try:
            joined = self._membership.heartbeat(self._info())
            live = self._membership.live()
            self._renew()
            self._save_progress()
        except redis.RedisError as exc:
            self._unreachable(exc)
            return
        self._reached()
        if joined:
            self._membership.announce(f"joined {self.replica_id}")
        want = quota(self.replica_id, live, len(self._names), len(self._held))
        try:
            self._balance(want)
        except redis.RedisError as exc:
            self._unreachable(exc)

    def _renew(self) -> None:
        with self._held_lock:
            held = dict(self._held)
        for name, lease in held.items():
            if not self._streams.alive(name):  # its consumer ended (credentials rejected...)
                continue
            sent = time.monotonic()
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

    def _balance(self, want: int) -> None:
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
            sent = time.monotonic()
            token = self._leases.acquire(name)
            if token is not None:
                self._free_ticks.pop(name, None)
                self._take(name, token, sent)

    def _take(self, name: str, token: int, sent: float) -> None:
        progress = self._leases.progress(name)
        since = progress.at
        if since is not None and time.time() - since > self._max_gap:
            since = None  # too old to fill: start afresh, as a single process does
        reason = "takeover" if progress.holder not in (None, self.replica_id) \
            and not progress.released else "acquired"
        lease = Lease(name, token, sent + self.ttl * VALID_SHARE)
        with self._held_lock:
            self._held[name] = lease
        self._streams.start(self._names[name], since, self.fence(name))
        self._cluster_metrics.lead(name, reason)
        if progress.holder not in (None, self.replica_id) and self._on_takeover is not None:
            self._on_takeover()  # what the previous holder accepted and left: deliver it here
        gap = f", gap since the last event {time.time() - since:.1f} s" if since else ""
        logger.info("consuming the stream of %s (lease token %d, %s%s)", name, token, reason, gap)

    def _give_back(self, name: str) -> None:
        """Rebalance: stop consuming, then free the lease for the replica that needs one."""
        stopped = self._streams.stop(name, 2.0)
        with self._held_lock:
            lease = self._held.pop(name, None)
        if lease is not None and stopped:  # else its connection may still be open: it expires
            self._leases.release(name, lease.token, self._tracker.last_received(name))
        self._cluster_metrics.follow(name, "rebalanced")
        logger.info("handed the stream of %s over to even out the replicas", name)

    def _drop(self, name: str, reason: str) -> None:
        """Stop consuming a stream whose lease is gone or may be gone."""
        with self._held_lock:
            lease = self._held.pop(name, None)
        if lease is None:
            return
        self._streams.stop(name, 1.0)
        self._cluster_metrics.follow(name, reason)
        if reason == "lost":
            logger.warning("lease on the stream of %s was taken over; stopped consuming it", name)
        else:
            logger.warning("lease on the stream of %s could not be renewed in time (Redis "
                           "unreachable); stopped consuming it before it expires", name)

    def _unreachable(self, exc: BaseException) -> None:
        self.reachable = False
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
