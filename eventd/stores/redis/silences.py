"""The Redis store's role for eventd.silences: silences every replica reads.

    silences            HASH  silence id -> record (JSON)
    silences:ends       ZSET  silence id by its end (POSIX time), for pruning
"""

from __future__ import annotations

import json
from typing import Any

from eventd.stores.redis.client import RedisClient, converted


class SilenceRoles(RedisClient):
    """Silences (eventd.stores.base) on the client's Redis."""

    @converted
    def silence_put(self, record: dict[str, Any]) -> None:
        """Keep (or replace) a silence: the record and its end in one transaction."""
        ends = record.get("ends_at")
        pipe = self._db.pipeline(transaction=True)
        pipe.hset(self._key("silences"), str(record["id"]),
                  json.dumps(record, separators=(",", ":"), default=str))
        pipe.zadd(self._key("silences", "ends"),
                  {str(record["id"]): float(ends) if isinstance(ends, (int, float)) else 0.0})
        pipe.execute()

    @converted
    def silence_list(self) -> list[dict[str, Any]]:
        """Every silence kept (one HGETALL: a replica reads them about once a second)."""
        found = []
        for data in self._db.hgetall(self._key("silences")).values():
            try:
                record = json.loads(data)
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict):  # the book checks each field (silences.model)
                found.append(record)
        return found

    @converted
    def silence_prune(self, ended_before: float) -> int:
        """Forget silences that ended before `ended_before`; how many."""
        ends = self._key("silences", "ends")
        old = list(self._db.zrangebyscore(ends, "-inf", f"({float(ended_before)!r}"))
        if not old:
            return 0
        pipe = self._db.pipeline(transaction=True)
        pipe.hdel(self._key("silences"), *old)
        pipe.zrem(ends, *old)
        return int(pipe.execute()[0])
