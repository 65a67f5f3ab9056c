"""Leases on streams in Redis, each with a fencing token, taken and checked atomically (Lua).

A lease is the key `lease:<ns>` = `<replica>:<token>` with a TTL. Taking a free lease
increments the stream's token counter, at least to the Redis server's clock in ms, so every
holder in a stream's history has a larger token than the one before, even across a failover
or a restart that lost the counter's last steps; renewing, releasing and recording progress
are done only while the key still holds the caller's own `<replica>:<token>` (the fence): a
replica whose lease expired cannot extend it, free it or move the stream's progress any more.

A stream's progress record says who held it last and whether that holder released it (a clean
hand-over) or not (it died, or still consumes on the other side of a failover): a new holder
marks it as held, not released, as soon as it took the lease (`begin`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from eventd.cluster.keys import Keys

# A new holder's token: the counter's next number, or the server's clock in ms if that is
# higher (then the counter is set to it). A counter alone goes back when Redis does (a failover
# to a replica that had not yet copied the last INCR, a restart from an older snapshot) and
# hands a number out twice, once by each primary; the clock does not go back with them.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  local token = redis.call('INCR', KEYS[2])
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  if token < now then
    token = now
    redis.call('SET', KEYS[2], string.format('%d', token))
  end
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', token), 'PX', ARGV[2])
  return token
end
local at = string.find(cur, ':[^:]*$')
if at and string.sub(cur, 1, at - 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(cur, at + 1))
end
return false
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], 'at', ARGV[2], 'holder', ARGV[3], 'released', '1')
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_BEGIN = """
local was = redis.call('HGETALL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], 'holder', ARGV[2], 'released', '0')
end
return was
"""
_PROGRESS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], 'at', ARGV[2], 'holder', ARGV[3], 'released', '0')
  return 1
end
return 0
"""


@dataclass
class Lease:
    """A lease this replica holds: valid (locally) until `valid_until` on the monotonic clock."""

    namespace: str
    token: int
    valid_until: float

    def valid(self, now: float) -> bool:
        """Whether the holder may still act: the lease cannot have expired in Redis yet."""
        return now < self.valid_until


@dataclass(frozen=True)
class Progress:
    """Where a stream was left: its last processed event's time, by whom, released or not."""

    at: float | None
    holder: str | None
    released: bool

    @property
    def left_cleanly(self) -> bool:
        """Whether no earlier holder can still be consuming the stream: released, or never
        held (a new cluster). Else its lease expired: its holder died, or is on the other
        side of a failover that lost its last renewal, and consumes until its local end."""
        return self.released or self.holder is None


class Leases:
    """The lease operations of one replica on one cluster's keys."""

    def __init__(self, client: redis.Redis, keys: Keys, replica_id: str, ttl: float) -> None:
        self._client = client
        self._keys = keys
        self.replica_id = replica_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._progress = client.register_script(_PROGRESS)
        self._begin = client.register_script(_BEGIN)

    def _value(self, token: int) -> str:
        return f"{self.replica_id}:{token}"

    def acquire(self, namespace: str) -> int | None:
        """Take the stream's lease if it is free (or already ours); its fencing token, or None."""
        keys = self._keys
        token = self._acquire(keys=[keys.lease(namespace), keys.token(namespace)],
                              args=[self.replica_id, self.ttl_ms])
        return None if token is None else int(token)

    def renew(self, namespace: str, token: int) -> bool:
        """Extend our lease by the TTL; False if it is no longer ours (expired, taken)."""
        return bool(self._renew(keys=[self._keys.lease(namespace)],
                                args=[self._value(token), self.ttl_ms]))

    def release(self, namespace: str, token: int, at: float | None) -> bool:
        """Free our lease for the next holder, saying where we left the stream."""
        keys = self._keys
        return bool(self._release(keys=[keys.lease(namespace), keys.progress(namespace)],
                                  args=[self._value(token), repr(at or 0.0), self.replica_id]))

    def record(self, namespace: str, token: int, at: float) -> bool:
        """Save when the stream's last event was processed, only while the lease is ours."""
        keys = self._keys
        return bool(self._progress(keys=[keys.lease(namespace), keys.progress(namespace)],
                                   args=[self._value(token), repr(at), self.replica_id]))

    def begin(self, namespace: str, token: int) -> Progress:
        """Where the previous holders left the stream (as `progress`), marking it held by us
        and not released from now on, while the lease is ours: a replica just started must
        not count a stream cleanly left whose holder since took it and consumes it, quiet
        streams too (their holder records no progress of its own)."""
        keys = self._keys
        raw = self._begin(keys=[keys.lease(namespace), keys.progress(namespace)],
                          args=[self._value(token), self.replica_id])
        return _parse_progress(dict(zip(raw[::2], raw[1::2], strict=True)))

    def holder(self, namespace: str) -> tuple[str, int] | None:
        """Who holds the stream now and with which token (None if free)."""
        value = self._client.get(self._keys.lease(namespace))
        return parse_holder(value)

    def holders(self, namespaces: list[str]) -> dict[str, str | None]:
        """Which replica holds each of these streams now (None: free or unreadable)."""
        if not namespaces:
            return {}
        values = self._client.mget([self._keys.lease(ns) for ns in namespaces])
        found = {ns: parse_holder(value) for ns, value in zip(namespaces, values, strict=True)}
        return {ns: holder[0] if holder else None for ns, holder in found.items()}

    def time_left(self, namespaces: list[str]) -> dict[str, float]:
        """Seconds until each held lease of these ends unless renewed (free ones left out)."""
        pipe = self._client.pipeline(transaction=False)
        for namespace in namespaces:
            pipe.pttl(self._keys.lease(namespace))
        return {ns: int(ms) / 1000 for ns, ms in zip(namespaces, pipe.execute(), strict=True)
                if int(ms) >= 0}

    def progress(self, namespace: str) -> Progress:
        """Where the stream was left by its previous holders."""
        return _parse_progress(self._client.hgetall(self._keys.progress(namespace)))


def _parse_progress(raw: Mapping[Any, Any]) -> Progress:
    """A progress record as Redis holds it (a HASH, possibly empty)."""
    values = {_text(k): _text(v) for k, v in raw.items()}
    try:
        at: float | None = float(values.get("at") or 0) or None
    except ValueError:  # not what a replica wrote: no known position, take the max gap
        at = None
    if at is not None and not math.isfinite(at):
        at = None
    return Progress(at, values.get("holder") or None, values.get("released") == "1")


def parse_holder(value: object) -> tuple[str, int] | None:
    """`b"replica:7"` -> ("replica", 7); None if free or unreadable."""
    if value is None:
        return None
    replica, _, token = _text(value).rpartition(":")
    return (replica, int(token)) if replica and token.isascii() and token.isdigit() \
        and len(token) < 20 else None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
