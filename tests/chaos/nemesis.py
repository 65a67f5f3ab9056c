"""The nemesis: the faults that break lease-based systems, one at a time or on a seeded schedule.

Each fault is journalled when it begins and when it is healed, so the checker can say which
fault a violation belongs to. Kinds (`KINDS`):

- `partition-redis`: the replica can reach neither Redis nor Sentinel (packets dropped both
  ways, no RST); it still reaches the stream, the REST API and the receiver.
- `partition-stream`: it cannot reach the stream (the emulator's stream port); Redis, REST and
  the receiver still work.
- `partition-all`: it reaches nothing (its loopback, where the test reads /metrics, works).
- `oneway-redis-in` / `oneway-redis-out`: only Redis' answers, or only its requests, are
  dropped (one direction of one link).
- `pause`: SIGSTOP, then SIGCONT at the heal (a stalled VM, a long GC pause).
- `kill`: SIGKILL, then a new process at the heal.
- `redis-restart`: SIGKILL of the primary Redis, started again at the heal (its append-only
  file keeps what it acknowledged), a primary still, as the config Sentinel rewrote says.
- `failover`: SENTINEL FAILOVER (the replica becomes primary; instantaneous, no heal).
- `slow-receiver`: the webhook receiver takes 0.2 s per answer, so deliveries queue up in
  the replicas (a pause or a partition then finds work in flight).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.chaos.run import ChaosCluster

logger = logging.getLogger(__name__)

PARTITIONS = ("partition-redis", "partition-stream", "partition-all", "oneway-redis-in",
              "oneway-redis-out")
KINDS = (*PARTITIONS, "pause", "kill", "redis-restart", "failover", "slow-receiver")
#: faults of a shared part (the store, the receiver), the rest are per replica
SHARED_FAULTS = frozenset({"redis-restart", "failover", "slow-receiver"})
SLOW_ANSWER = 0.2


@dataclass
class Active:
    """A fault in force: its journal record and what heals it."""

    kind: str
    target: str
    record: dict[str, Any]
    heal: Callable[[], None] = lambda: None
    healed: bool = False


@dataclass(frozen=True)
class Step:
    """One fault of a schedule: `at` seconds after the start, held `hold` seconds."""

    at: float
    kind: str
    target: str  # a replica's role, `leader` (one that leads a stream then) or `store`
    hold: float


@dataclass
class Nemesis:
    """Applies faults to a running ChaosCluster."""

    cluster: ChaosCluster
    active: list[Active] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- one fault ------------------------------------------------------------------------------
    def begin(self, kind: str, target: str) -> Active:
        """Start fault `kind` on replica `target` (`leader`: one that leads a stream now;
        ignored for shared faults); heal it with `end`."""
        cluster = self.cluster
        if kind not in SHARED_FAULTS and target == "leader":
            target = cluster.a_leader()
        net = cluster.net
        detail = ""
        heal: Callable[[], None]
        if kind in PARTITIONS:
            redis_hosts = [node.address for node in cluster.redis_nodes]
            if cluster.sentinel is not None:
                redis_hosts.append(cluster.sentinel.address)
            if kind == "partition-redis":
                rules = net.block(target, redis_hosts)
            elif kind == "partition-stream":
                rules = net.block(target, [net.address("emu")], port=cluster.emulator.stream_port)
            elif kind == "partition-all":
                rules = net.isolate(target)
            elif kind == "oneway-redis-in":
                rules = net.block(target, redis_hosts, outbound=False)
            else:
                rules = net.block(target, redis_hosts, inbound=False)
            heal = lambda: net.unblock(rules)  # noqa: E731
        elif kind == "pause":
            replica = cluster.replica(target)
            replica.pause()
            heal = replica.resume
        elif kind == "kill":
            replica = cluster.replica(target)
            replica.kill()
            heal = replica.start
        elif kind == "redis-restart":
            node = cluster.primary()
            target = node.role
            node.kill()
            heal = lambda: node.start(primary=True)  # noqa: E731 - as its config says
        elif kind == "slow-receiver":
            target = "recv"
            cluster.receiver_delay = SLOW_ANSWER
            heal = lambda: setattr(cluster, "receiver_delay", 0.0)  # noqa: E731
        elif kind == "failover":
            assert cluster.sentinel is not None, "a failover needs the Sentinel topology"
            before = cluster.sentinel.master()
            target = "store"
            detail = f"primary was {before}"
            heal = lambda: None  # noqa: E731
        else:
            raise ValueError(f"unknown fault {kind!r}")
        record = cluster.journal.fault(kind, target, detail)
        if kind == "failover":
            assert cluster.sentinel is not None
            record["detail"] += f", now {cluster.sentinel.failover()}"
        logger.info("nemesis: %s on %s", kind, target)
        active = Active(kind, target, record, heal)
        with self._lock:
            self.active.append(active)
        return active

    def end(self, active: Active) -> None:
        """Heal one fault (once)."""
        with self._lock:
            if active.healed:
                return
            active.healed = True
            self.active.remove(active)
        try:
            active.heal()
        finally:
            self.cluster.journal.healed(active.record)
            logger.info("nemesis: healed %s on %s", active.kind, active.target)

    def hold(self, kind: str, target: str, seconds: float) -> Active:
        """Apply a fault for `seconds`, then heal it."""
        active = self.begin(kind, target)
        time.sleep(seconds)  # the fault's own duration: what is measured is what follows it
        self.end(active)
        return active

    def heal_all(self) -> None:
        """Heal every fault still in force."""
        with self._lock:
            active = list(self.active)
        for fault in active:
            self.end(fault)

    # -- a schedule -----------------------------------------------------------------------------
    def run(self, steps: list[Step], stopping: threading.Event | None = None) -> None:
        """Apply `steps` at their times (each healed after its hold, on a timer), then heal."""
        stopping = stopping or threading.Event()
        start = time.monotonic()
        busy: dict[str, float] = {}  # target -> until when a fault holds it
        timers: list[threading.Timer] = []
        try:
            self._apply(steps, stopping, start, busy, timers)
            for timer in timers:  # the last faults run their full hold
                while timer.is_alive() and not stopping.is_set():
                    timer.join(0.1)
        finally:
            for timer in timers:
                timer.cancel()
            self.heal_all()

    def _apply(self, steps: list[Step], stopping: threading.Event, start: float,
               busy: dict[str, float], timers: list[threading.Timer]) -> None:
        """Begin each step at its time, unless its target is already faulty; a timer heals it."""
        for step in steps:
            if stopping.wait(max(0.0, start + step.at - time.monotonic())):
                break
            now = time.monotonic()
            target = step.kind if step.kind in SHARED_FAULTS else step.target
            if target == "leader":
                target = self.cluster.a_leader(exclude={t for t, u in busy.items() if u > now})
            store_busy = step.kind in ("redis-restart", "failover") and any(
                busy.get(k, 0.0) > now for k in ("redis-restart", "failover"))
            if busy.get(target, 0.0) > now or store_busy:
                logger.info("nemesis: %s skipped, %s is already faulty", step.kind, target)
                continue
            try:
                active = self.begin(step.kind, target)
            except Exception:  # a fault that could not be applied is logged, not fatal
                logger.exception("nemesis: %s on %s could not be applied", step.kind, target)
                continue
            busy[target] = now + step.hold + 0.5
            timer = threading.Timer(step.hold, self.end, args=(active,))
            timer.daemon = True
            timers.append(timer)
            timer.start()


def random_schedule(seed: int, duration: float, ttl: float, replicas: list[str],
                    sentinel: bool) -> list[Step]:
    """Faults for `duration` seconds, drawn from `seed`: every kind, short and long holds
    (below and above the lease TTL), a leader or any replica as target, sometimes two at once."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS if sentinel or k != "failover"]
    steps: list[Step] = []
    at = rng.uniform(0.5, 1.5) * ttl
    while at < duration - 2 * ttl:
        kind = rng.choice(kinds)
        if kind == "pause":
            hold = 2 * ttl
        elif kind == "kill":
            hold = rng.uniform(0.0, 2.0) * ttl
        elif kind == "redis-restart":
            hold = rng.uniform(0.2, 1.5)
        elif kind == "failover":
            hold = 0.0
        elif kind == "slow-receiver":
            hold = rng.uniform(1.0, 3.0) * ttl
        else:
            hold = rng.uniform(0.3, 0.8) * ttl if rng.random() < 0.5 else rng.uniform(1.5, 3.0) * ttl
        target = kind if kind in SHARED_FAULTS else (
            "leader" if rng.random() < 0.6 else rng.choice(replicas))
        steps.append(Step(round(at, 3), kind, target, round(hold, 3)))
        # Usually the next fault comes after this one healed and things settled; sometimes
        # while it is still in force.
        at += (rng.uniform(0.2, 1.0) * hold if rng.random() < 0.2
               else hold + rng.uniform(1.0, 3.0) * ttl)
    return steps
