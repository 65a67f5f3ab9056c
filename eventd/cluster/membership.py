"""Replicas' heartbeats in Redis, and how many streams each live replica should hold.

A replica is live while its heartbeat key exists (renewed every TTL/3, expiring after the
TTL), so no replica compares its clock with another's. The assignment is a quota per
replica: streams spread evenly over the live replicas, those holding most now
keeping the remainder (so a replica joining moves nothing that need not move).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

import redis

from eventd.cluster.keys import Keys


class Membership:
    """This replica's heartbeat and the view of every live replica."""

    def __init__(self, client: redis.Redis, keys: Keys, replica_id: str, ttl: float,
                 mac: Mac | None = None) -> None:
        self._client = client
        self._keys = keys
        self.replica_id = replica_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self._mac = mac

    def heartbeat(self, info: dict[str, Any]) -> bool:
        """Say this replica is alive (and what it holds); True if it was not known before."""
        info = {key: value for key, value in info.items() if key != "mac"}
        if self._mac is not None:
            info["mac"] = self._mac(signed_bytes(self.replica_id, info))
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


#: the MAC of a heartbeat's bytes (JobSigner.mac with the purpose "heartbeat")
Mac = Callable[[bytes], str]


def signed_bytes(replica_id: str, info: dict[str, Any]) -> bytes:
    """What a heartbeat's MAC covers: the replica's id and its info without the MAC."""
    body = {key: value for key, value in info.items() if key != "mac"}
    return json.dumps([replica_id, body], sort_keys=True, default=str).encode()


def signed_by(mac: Mac, replica_id: str, info: dict[str, Any]) -> bool:
    """Whether a heartbeat carries this cluster's MAC (a forged one, written into Redis by
    hand, cannot)."""
    given = info.get("mac")
    return isinstance(given, str) and hmac.compare_digest(
        given.encode(), mac(signed_bytes(replica_id, info)).encode())


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
        info = info if isinstance(info, dict) else {}
        names = info.get("namespaces")
        if names is not None and not (isinstance(names, list)
                                      and all(isinstance(n, str) for n in names)):
            # Not what a replica writes (anyone with Redis can write a heartbeat): the
            # coordinator counts its leases instead; `status` and the console show none.
            info = {**info, "namespaces": [], "malformed": True}
        live[replica_id] = info
    if prune and dead:
        client.srem(keys.replicas, *dead)
    return live


def quota(replica_id: str, live: dict[str, dict[str, Any]], streams: int, held: int) -> int:
    """How many of `streams` this replica (holding `held`) should hold among the `live` ones.

    Each gets `streams // replicas`; the remainder goes to those holding most now (ties by id),
    so a replica that joins takes only what others have beyond their share: nothing moves
    that need not. Another replica on `standby` (cut off from the stream server) is left out.
    """
    counts = {r: len(info.get("namespaces") or []) for r, info in live.items()
              if r == replica_id or not info.get("standby")}
    counts[replica_id] = held
    ranked = sorted(counts, key=lambda r: (-counts[r], r))
    base, extra = divmod(streams, len(ranked))
    return base + (1 if ranked.index(replica_id) < extra else 0)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
