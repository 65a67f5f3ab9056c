"""The cluster under partitions and pauses, checked from history: the fast variant of `make chaos`.

One topology for the module (network namespaces: 3 replicas, Redis primary + replica +
Sentinel, the emulator, the receiver, each a host), lease TTL 2 s, 20 events/s over two
namespaces with webhook and REST rules. Each fault runs once, on a loaded cluster, then
everything is healed and drained and the checker reads that window of history; each
property of each fault is a test item (`test_fault[<fault>-<property>]`), so a property
that fails today is marked xfail with the bug it shows, and the others keep guarding.
A failing window's history is kept (the path is in the failure message).

Without network namespaces (not root, no iproute2/iptables) the module skips, saying why;
under CI=true it fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.checker import Report
from tests.chaos.nemesis import Nemesis, random_schedule
from tests.chaos.netns import Unavailable, probe
from tests.chaos.run import ChaosCluster, Settings
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

TTL = 2.0
SETTINGS = Settings(replicas=3, namespaces=("acme", "globex"), rate=20.0, ttl=TTL,
                    sentinel=True, seed=20261204)
PROPERTIES = ("single consumer", "gaps announced", "events lost only in gaps",
              "accepted delivered", "per-target order", "no request without the lease",
              "tokens increase")


@dataclass(frozen=True)
class Fault:
    """One scripted fault: a nemesis kind on a target, held `hold` seconds. Each runs with
    the receiver slow (0.2 s an answer) from a moment before it until the cluster has
    recovered: deliveries are in flight when it strikes and when streams change hands, as
    they are under real load."""

    name: str
    kind: str
    target: str = "leader"
    hold: float = 2 * TTL


FAULTS = (
    Fault("redis-partition-long", "partition-redis"),
    Fault("stream-partition", "partition-stream"),
    Fault("full-partition-short", "partition-all", hold=0.5 * TTL),
    Fault("full-partition-long", "partition-all"),
    Fault("oneway-redis-replies-dropped", "oneway-redis-in"),
    Fault("sigstop-2x-ttl", "pause"),
    Fault("kill9-restart", "kill", hold=0.5 * TTL),
    Fault("redis-restart", "redis-restart", target="store", hold=1.0),
    Fault("sentinel-failover", "failover", target="store", hold=0.0),
    Fault("random-schedule", "schedule", target="any", hold=20.0),
)

# What the checker still finds (issue 25). Each entry: (fault, property) -> (the bug it shows,
# strict). Before the fixes of branch chaos2 29 pairs were xfail here, then 6 (the split brain
# of a Redis restart or failover: single consumer, per-target order, tokens increase). Branch
# chaos3 fixed those (a TTL's grace after the primary changes, tokens at least Redis' clock;
# 9 runs of each of the two faults passed them) and a lease revived by a renewal after it had
# run out locally (3 events lost unannounced once in random-schedule, once in redis-restart):
# none is left, every pair is a plain test.
KNOWN: dict[tuple[str, str], tuple[str, bool]] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosCluster]:
    try:
        probe()
        running = ChaosCluster(SETTINGS, tmp_path_factory.mktemp("chaos")).start()
    except Unavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"network namespaces unavailable: {exc} (CI=true: CI must run these "
                        "tests, not skip them)", pytrace=False)
        pytest.skip(f"network namespaces unavailable: {exc}")
    try:
        yield running
    finally:
        running.close()


_reports: dict[str, tuple[Report, Path | None]] = {}


def run_fault(cluster: ChaosCluster, fault: Fault) -> tuple[Report, Path | None]:
    """Load on, the fault, load on while it settles; then heal, drain, check the window."""
    if fault.name in _reports:
        return _reports[fault.name]
    nemesis = Nemesis(cluster)
    assert cluster.receiver is not None
    receiver = cluster.receiver
    start = time.time()
    try:
        cluster.load.start()
        before = len(receiver.requests)
        wait_until(lambda: len(receiver.requests) >= before + 20, 15,
                   message="the load reaches the receiver")
        if fault.kind == "schedule":  # its own steps slow the receiver now and then
            steps = random_schedule(SETTINGS.seed, fault.hold, TTL, cluster.roles,
                                    SETTINGS.sentinel)
            nemesis.run(steps)
        else:  # the receiver stays slow until the cluster has recovered: work in flight
            slow = nemesis.begin("slow-receiver", "recv")
            wait_until(lambda: cluster.spool_size() >= 10, 15,
                       message="deliveries queue up behind the slow receiver")
            try:
                nemesis.hold(fault.kind, fault.target, fault.hold)
                cluster.recovered(4 * TTL + 5)
            finally:
                nemesis.end(slow)
        # The load goes on while the cluster recovers, and a while after.
        cluster.recovered(4 * TTL + 5)
        after = len(receiver.requests)
        wait_until(lambda: len(receiver.requests) >= after + 20, 15,
                   message="the load reaches the receiver after the fault")
    finally:
        cluster.settle(nemesis)
    report, history = cluster.check(start)
    kept = None if report.ok else cluster.keep(history, fault.name)
    _reports[fault.name] = (report, kept)
    return report, kept


def _items() -> list[object]:
    items = []
    for fault in FAULTS:
        for prop in PROPERTIES:
            known = KNOWN.get((fault.name, prop))
            marks = [pytest.mark.xfail(strict=known[1], reason=known[0])] if known else []
            items.append(pytest.param(fault, prop, id=f"{fault.name}-{prop.replace(' ', '_')}",
                                      marks=marks))
    return items


@pytest.mark.parametrize(("fault", "prop"), _items())
def test_fault(cluster: ChaosCluster, fault: Fault, prop: str) -> None:
    report, kept = run_fault(cluster, fault)
    verdict = report.verdict(prop)
    assert verdict.ok, f"{fault.name}: {prop} violated (history kept in {kept}):\n{report.format()}"


def test_settle_ends_once_the_redis_nodes_agree_with_sentinel(cluster: ChaosCluster) -> None:
    """A primary killed and started again without --replicaof is a second primary until
    Sentinel demotes it (~10 s) and it has synced; meanwhile every spool_add's WAIT finds no
    replica and its event is held. settle() returns only once every node agrees with
    Sentinel and no replica's accepting call still fails, so the drain sees those events."""
    assert cluster.sentinel is not None
    sentinel = cluster.sentinel
    old = cluster.primary()
    old.kill()
    wait_until(lambda: sentinel.master() not in (None, old.address), 30,
               message="Sentinel to promote the replica")
    old.start(primary=True)  # a primary of its own, as a restarted old primary is
    cluster.settle(Nemesis(cluster))
    named = sentinel.master()
    assert [node.role for node in cluster.redis_nodes if not node.follows(named)] == []
