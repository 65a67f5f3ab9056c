"""Reading a cluster back from Redis: its replicas, who holds which stream, where each was left."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from eventd.cluster.keys import Keys
from eventd.cluster.leases import parse_holder
from eventd.cluster.membership import read_replicas


@dataclass
class StreamState:
    """One namespace's stream: its holder (None if free), token, lease time left, progress."""

    namespace: str
    holder: str | None = None
    token: int | None = None
    ttl_left: float | None = None
    last_event: float | None = None


@dataclass
class ClusterState:
    """A snapshot of one cluster."""

    cluster: str
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)
    streams: list[StreamState] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON for `eventd status --json`."""
        return {"cluster": self.cluster, "replicas": self.replicas,
                "streams": [vars(s) for s in self.streams]}


def read_state(client: redis.Redis, cluster: str, namespaces: list[str]) -> ClusterState:
    """Read the cluster's replicas and streams (configured namespaces and any seen in Redis)."""
    keys = Keys(cluster)
    state = ClusterState(cluster, read_replicas(client, keys))
    seen = set(namespaces)
    for pattern in (keys.lease("*"), keys.progress("*")):
        for key in client.scan_iter(match=pattern, count=500):
            text = key.decode() if isinstance(key, bytes) else str(key)
            seen.add(text.rsplit(":", 1)[-1])
    now = time.time()
    for name in sorted(seen):
        stream = StreamState(name)
        held = parse_holder(client.get(keys.lease(name)))
        if held is not None:
            stream.holder, stream.token = held
            pttl = int(client.pttl(keys.lease(name)))
            stream.ttl_left = pttl / 1000 if pttl >= 0 else None
        at = client.hget(keys.progress(name), "at")
        if at:
            value = float(at)
            stream.last_event = value if 0 < value <= now + 60 else None
        state.streams.append(stream)
    return state
