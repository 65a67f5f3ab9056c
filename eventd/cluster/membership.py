"""Replicas' heartbeats in Redis, and how many streams each live replica should hold.

A replica is live while its heartbeat key exists (renewed every TTL/3, expiring after the
TTL), so no replica compares its clock with another's. The assignment is a quota per
replica: streams spread evenly over the live replicas, those holding most now
keeping the remainder (so a replica joining moves nothing that need not move).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from eventd.cluster.keys import Keys


class Membership:
    """This replica's heartbeat and the view of every live replica."""

    def __init__(self, client: redis.Redis, keys: Keys, replica_id: str, ttl: float) -> None:
        self._client = client
        self._keys = keys
        self.replica_id = replica_id
        self.ttl_ms = max(1, int(ttl * 1000))

    def heartbeat(self, info: dict[str, Any]) -> bool:
        """Say this replica is alive (and what it holds); True if it was not known before."""
        pipe = self._client.pipeline()
        pipe.set(self._keys.replica(self.replica_id), json.dumps(info, sort_keys=True),
                 px=self.ttl_ms)
        pipe.sadd(self._keys.replicas, self.replica_id)
        return bool(pipe.execute()[1])

    def live(self) -> dict[str, dict[str, Any]]:
        """Every live replica's info by id; replicas whose heartbeat is gone are pruned."""
        return read_replicas(self._client, self._keys, prune=True)

    def leave(self) -> None:
        """Say this replica is gone (a graceful stop), and tell the others to look now."""
        pipe = self._client.pipeline()
        pipe.delete(self._keys.replica(self.replica_id))
        pipe.srem(self._keys.replicas, self.replica_id)
        pipe.publish(self._keys.channel, f"left {self.replica_id}")
        pipe.execute()

    def announce(self, what: str) -> None:
        """Tell every replica to look at the leases now (one joined, a lease was freed)."""
        self._client.publish(self._keys.channel, what)


def read_replicas(client: redis.Redis, keys: Keys, prune: bool = False) -> dict[str, dict[str, Any]]:
    """Live replicas' infos by id, read from their heartbeats."""
    ids = sorted(_text(i) for i in client.smembers(keys.replicas))
    if not ids:
        return {}
    values = client.mget([keys.replica(i) for i in ids])
    live: dict[str, dict[str, Any]] = {}
    dead: list[str] = []
    for replica_id, value in zip(ids, values, strict=True):
        if value is None:
            dead.append(replica_id)
            continue
        try:
            info = json.loads(value)
        except ValueError:
            info = {}
        live[replica_id] = info if isinstance(info, dict) else {}
    if prune and dead:
        client.srem(keys.replicas, *dead)
    return live


def quota(replica_id: str, live: dict[str, dict[str, Any]], streams: int, held: int) -> int:
    """How many of `streams` this replica (holding `held`) should hold among the `live` ones.

    Each gets `streams // replicas`; the remainder goes to those holding most now (ties by id),
    so a replica that joins takes only what others have beyond their share: nothing moves
    that need not.
    """
    counts = {r: len(info.get("namespaces") or []) for r, info in live.items()}
    counts[replica_id] = held
    ranked = sorted(counts, key=lambda r: (-counts[r], r))
    base, extra = divmod(streams, len(ranked))
    return base + (1 if ranked.index(replica_id) < extra else 0)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
