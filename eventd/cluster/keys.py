"""The names of the cluster's Redis keys, all under the `--cluster` prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names of one cluster (`<cluster>:cluster:...`), so clusters can share a Redis."""

    cluster: str

    @property
    def _base(self) -> str:
        return f"{self.cluster}:cluster:"

    @property
    def replicas(self) -> str:
        """SET of replica ids that said hello (a dead one is pruned once its heartbeat is gone)."""
        return self._base + "replicas"

    def replica(self, replica_id: str) -> str:
        """A replica's heartbeat: its JSON info, expiring unless renewed."""
        return f"{self._base}replica:{replica_id}"

    def lease(self, namespace: str) -> str:
        """`<replica id>:<fencing token>` of the stream's holder, expiring after the lease TTL."""
        return f"{self._base}lease:{namespace}"

    def token(self, namespace: str) -> str:
        """The stream's fencing-token counter: every new lease gets the next number."""
        return f"{self._base}token:{namespace}"

    def progress(self, namespace: str) -> str:
        """HASH: when the stream's last event was processed (`at`), by whom, whether released."""
        return f"{self._base}progress:{namespace}"

    @property
    def channel(self) -> str:
        """Pub/sub channel: a replica joined, left, or released a lease (look again now)."""
        return self._base + "changes"

    @property
    def pattern(self) -> str:
        """Every key of this cluster's coordination (for cleanup)."""
        return self._base + "*"
