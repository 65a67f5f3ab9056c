"""A replica started just after a Sentinel failover must not take a lease still in use.

Redis replicates asynchronously, and a failover keeps only what the promoted replica had. A
holder's last renewal that never reached it leaves the lease there ending up to a renewal
interval sooner than the holder counts it valid (`sent + ttl * VALID_SHARE`). Replicas that saw
the old primary wait a TTL after the change (the grace); a replica started just then saw no
earlier primary. Before the fix it took such a lease at once: two consumers (264-276 ms
reproduced). Now, in its first TTL, it takes at once only a stream released cleanly or never
held (a new cluster's cold start stays fast); one whose holder left it to expire (killed, or
on the other side of a failover) waits out that TTL. Replicas up longer take it as before.

A real primary, replica and Sentinel (tests.redis_server.SentinelSet) on free ports; the
replica is cut off with REPLICAOF NO ONE and Sentinel told to name it (`_name_primary`), as a
failover ends while the old primary still answers; Sentinel counts a server down only after
10 s here, so it starts no failover of its own within a test.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from eventd.cluster.connection import connect
from eventd.cluster.coordinator import VALID_SHARE, Coordinator
from eventd.cluster.keys import Keys
from eventd.cluster.leases import Leases
from eventd.cluster.metrics import ClusterMetrics
from eventd.cluster.progress import Tracker
from eventd.cluster.streams import Streams
from eventd.ops.metrics import Metrics
from tests.cluster_helpers import Cluster, cluster_fixture
from tests.redis_server import SentinelSet
from tests.test_cluster import _Consumer
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

TTL = 2.0
LEASE = Keys("t").lease("acme")


class Node:
    """One eventd replica's coordinator (cluster `t`), whose streams are `_Consumer`s."""

    def __init__(self, name: str, client: redis.Redis, cluster: str = "t") -> None:
        self.client = client
        self.consumers: list[_Consumer] = []
        self.streams = Streams(self._consumer, lambda running: running.run())
        metrics = Metrics()
        self.coordinator = Coordinator(
            self.client, cluster=cluster, namespaces=("acme",), ttl=TTL, streams=self.streams,
            tracker=Tracker(), metrics=metrics,
            cluster_metrics=ClusterMetrics(metrics.registry, ["acme"]), info=dict,
            max_gap=900, replica_id=name)

    @classmethod
    def behind(cls, name: str, servers: SentinelSet) -> Node:
        """A replica whose client follows Sentinel, as `eventd run --store redis+sentinel://`."""
        settings = types.SimpleNamespace(store=servers.url, store_password=None, lease_ttl=TTL,
                                         cluster="t")
        return cls(name, connect(settings))  # type: ignore[arg-type]

    def _consumer(self, namespace: str, fence: Any) -> _Consumer:
        self.consumers.append(_Consumer())
        return self.consumers[-1]

    def tick(self) -> Coordinator:
        self.coordinator._tick()
        return self.coordinator

    def valid_until(self) -> float:
        return self.coordinator._held["acme"].valid_until

    def close(self) -> None:
        self.streams.stop_all(1)
        self.client.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path / "sentinel", down_after_ms=10_000) as started:
        yield started


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from cluster_fixture()


def _name_primary(servers: SentinelSet, server: Any) -> None:
    """Sentinel names `server` the primary (as a failover ends); the old one still answers."""
    sentinel = servers.sentinel_client()
    try:
        sentinel.execute_command("SENTINEL", "REMOVE", servers.SERVICE)
        sentinel.execute_command("SENTINEL", "MONITOR", servers.SERVICE, "127.0.0.1",
                                 server.port, 1)
    finally:
        sentinel.close()
    wait_until(lambda: servers.master_port() == server.port, 10,
               message="Sentinel to name the new primary")


def test_a_replica_started_after_a_failover_takes_a_lease_only_once_its_holder_stopped(
        servers, nodes):
    # The holder's last renewal never reached the replica Sentinel promoted, so the lease
    # ended there sooner than its holder counted; a replica started just then (no earlier
    # primary: no grace) took it at once.
    a = Node.behind("a", servers)
    nodes.append(a)
    old, new = servers.primary.client(), servers.replica.client()
    try:
        assert a.tick().held() == ["acme"]
        a.tick()  # a renewal
        renewed = time.monotonic()
        assert int(old.execute_command("WAIT", 1, 5000)) == 1  # the replica has it all
        new.execute_command("REPLICAOF", "NO", "ONE")  # from now on nothing reaches it
        interval = a.coordinator.interval
        wait_until(lambda: time.monotonic() >= renewed + interval, interval + 1)
        a.tick()  # the next renewal, on the old primary only
        holder_until = a.valid_until()
        _name_primary(servers, servers.replica)  # the failover
        fresh = Node.behind("fresh", servers)  # started now
        nodes.append(fresh)
        wait_until(lambda: fresh.tick().held() == ["acme"], 2 * TTL, 0.01,
                   message="the fresh replica to take the lease on the new primary")
        taken = fresh.valid_until() - TTL * VALID_SHARE  # when its take was sent
        margin = taken - holder_until
        print(f"fresh replica's take {margin * 1000:+.0f} ms after the holder's lease ended "
              "locally (negative: two consumers)")
        assert margin > 0, f"two consumers for {-margin * 1000:.0f} ms"
    finally:
        old.close()
        new.close()


# -- the same on one Redis: a replica's first TTL ------------------------------------------------
def _node(name: str, cluster: Cluster, nodes: list[Node]) -> Node:
    """A replica of `cluster` on the shared Redis, closed at the end."""
    nodes.append(Node(name, redis.Redis.from_url(cluster.url, socket_timeout=2), cluster.name))
    return nodes[-1]


def test_a_cold_start_takes_a_stream_never_held_at_once(cluster, nodes):
    # A new cluster: no progress at all, nobody can be consuming the stream
    a = _node("a", cluster, nodes)
    assert a.tick().held() == ["acme"] and len(a.consumers) == 1
    # ...and the take marks it held, not released, for whoever starts next
    progress = Leases(cluster.client, Keys(cluster.name), "b", TTL).progress("acme")
    assert (progress.holder, progress.released, progress.left_cleanly) == ("a", False, False)


def test_a_replica_just_started_takes_a_released_stream_at_once(cluster, nodes):
    a = _node("a", cluster, nodes)
    assert a.tick().held() == ["acme"]
    a.coordinator.stop(2)  # a graceful stop: released, saying where the stream was left
    fresh = _node("fresh", cluster, nodes)
    assert fresh.tick().held() == ["acme"] and len(fresh.consumers) == 1


def test_a_stream_whose_holder_died_goes_at_once_to_a_replica_up_a_ttl_not_to_a_new_one(
        cluster, nodes):
    # kill -9 of the holder: a replica up for a TTL takes the stream the moment the lease
    # ends, as before; one started just then (a replica restarted in the killed one's
    # place) leaves it, as it cannot tell a dead holder from one on the other side of a
    # failover it never saw.
    holder, standby = _node("holder", cluster, nodes), _node("standby", cluster, nodes)
    assert holder.tick().held() == ["acme"]
    standby.tick()
    up = time.monotonic()
    wait_until(lambda: holder.tick() and time.monotonic() > up + TTL, 2 * TTL, 0.3,
               message="the standby to be up for a TTL")
    renewed = time.monotonic()
    # Killed halfway to its next renewal: never ticks or releases again
    wait_until(lambda: time.monotonic() > renewed + holder.coordinator.interval / 2, TTL)
    ends = time.monotonic() + cluster.client.pttl(Keys(cluster.name).lease("acme")) / 1000
    holder.streams.stop_all(1)
    fresh = _node("fresh", cluster, nodes)
    fresh.tick()

    def taken() -> bool:
        fresh.tick()  # first: the lease is free to it as soon as to the standby
        return standby.tick().held() == ["acme"]

    wait_until(taken, TTL + 1, 0.01, message="the standby to take the stream")
    assert time.monotonic() - ends < 0.5
    assert fresh.coordinator.held() == [] and fresh.consumers == []


def test_a_replica_just_started_waits_a_ttl_for_a_quiet_stream_taken_since_its_release(
        cluster, nodes):
    # Released by a, then taken by b, which recorded no progress (no event came) and died:
    # the record still said `released` by a. b's take marks it held (Leases.begin).
    a = _node("a", cluster, nodes)
    assert a.tick().held() == ["acme"]
    a.coordinator.stop(2)
    b = _node("b", cluster, nodes)
    assert b.tick().held() == ["acme"]
    b.streams.stop_all(1)  # killed
    cluster.client.delete(Keys(cluster.name).lease("acme"))  # its lease ran out
    fresh = _node("fresh", cluster, nodes)
    started = time.monotonic()
    assert fresh.tick().held() == []
    wait_until(lambda: fresh.tick().held() == ["acme"], TTL + 1, 0.01,
               message="the fresh replica to take the stream after its first TTL")
    assert time.monotonic() - started >= TTL
