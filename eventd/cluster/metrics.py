"""The cluster's metrics: which streams this replica leads, and why leases changed hands."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

#: why a lease changed: taken free, taken after its holder died, given back on a stop, given
#: back to even out the replicas, found taken by another, not renewable in time, or handed over
#: because its reader was held up by a stalled store
REASONS = ("acquired", "takeover", "released", "rebalanced", "lost", "unreachable", "stalled")


class ClusterMetrics:
    """`eventd_stream_leader{namespace}` and `eventd_lease_changes_total{namespace,reason}`."""

    def __init__(self, registry: CollectorRegistry, namespaces: Iterable[str]) -> None:
        self.leader = Gauge(
            "eventd_stream_leader", "1 on the replica that consumes this namespace's stream",
            ["namespace"], registry=registry)
        self.changes = Counter(
            "eventd_lease_changes", "Stream leases taken or given up by this replica, by reason",
            ["namespace", "reason"], registry=registry)
        self.heartbeats_ignored = Counter(
            "eventd_cluster_heartbeats_ignored", "Other replicas' heartbeats (or the streams "
            "they list) not counted, by reason: malformed, or listing streams they do not hold",
            ["reason"], registry=registry)
        for name in namespaces:  # configured names only: bounded
            self.leader.labels(namespace=name).set(0)

    def lead(self, namespace: str, reason: str) -> None:
        """This replica now consumes `namespace`."""
        self.leader.labels(namespace=namespace).set(1)
        self.changes.labels(namespace=namespace, reason=reason).inc()

    def follow(self, namespace: str, reason: str) -> None:
        """This replica no longer consumes `namespace`."""
        self.leader.labels(namespace=namespace).set(0)
        self.changes.labels(namespace=namespace, reason=reason).inc()
