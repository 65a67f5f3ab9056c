"""The Redis store's roles for eventd.alerts: firing alerts and open digest groups.

    alerts              HASH  alert key -> firing alert (JSON); every replica re-sends from it
    groups              HASH  group key -> meta (JSON);  groups:order  ZSET key by seq
    group:<key>         LIST  the events of an open digest group, oldest first
    history:<key>       LIST  an object's recent events (enrich: history), oldest first,
                              trimmed to `keep` and expiring `ttl` after the last one

Taking an alert, adding to a group and closing one are Lua scripts, so when replicas share the
store one of them gets a record, never two.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from eventd.stores.redis.client import RedisClient, converted

logger = logging.getLogger(__name__)

# Forget firing alert ARGV[2]: its record, or nil if it was not firing.
ALERT_TAKE = """
local v = redis.call('HGET', ARGV[1] .. 'alerts', ARGV[2])
if v then redis.call('HDEL', ARGV[1] .. 'alerts', ARGV[2]) end
return v
"""

# Append event ARGV[4] to digest group ARGV[2], opening it with meta ARGV[3]; its size.
GROUP_ADD = """
local p, k = ARGV[1], ARGV[2]
if redis.call('HSETNX', p .. 'groups', k, ARGV[3]) == 1 then
  redis.call('ZADD', p .. 'groups:order', redis.call('INCR', p .. 'seq'), k)
end
return redis.call('RPUSH', p .. 'group:' .. k, ARGV[4])
"""

# Close digest group ARGV[2]: {meta, events}, or nil if it is not open.
GROUP_TAKE = """
local p, k = ARGV[1], ARGV[2]
local meta = redis.call('HGET', p .. 'groups', k)
if not meta then return nil end
local events = redis.call('LRANGE', p .. 'group:' .. k, 0, -1)
redis.call('DEL', p .. 'group:' .. k)
redis.call('HDEL', p .. 'groups', k)
redis.call('ZREM', p .. 'groups:order', k)
return {meta, events}
"""


# Append record ARGV[3] to history ARGV[2], keep the newest ARGV[4], expire in ARGV[5] ms.
HISTORY_ADD = """
local k = ARGV[1] .. 'history:' .. ARGV[2]
redis.call('RPUSH', k, ARGV[3])
redis.call('LTRIM', k, -tonumber(ARGV[4]), -1)
redis.call('PEXPIRE', k, ARGV[5])
return 1
"""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class AlertRoles(RedisClient):
    """FiringAlerts and OpenGroups (eventd.stores.base) on the client's Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._alert_scripts = {name: self._db.register_script(source) for name, source in (
            ("ALERT_TAKE", ALERT_TAKE), ("GROUP_ADD", GROUP_ADD), ("GROUP_TAKE", GROUP_TAKE),
            ("HISTORY_ADD", HISTORY_ADD))}

    def _alert_run(self, script: str, *args: str) -> Any:
        return self._alert_scripts[script](args=[self.prefix, *args])

    # -- firing alerts --------------------------------------------------------------------------
    @converted
    def alert_put(self, key: str, record: dict[str, Any]) -> None:
        """Keep (or replace) a firing alert."""
        self._db.hset(self._key("alerts"), key, _json(record))

    @converted
    def alert_take(self, key: str) -> dict[str, Any] | None:
        """Forget a firing alert; its record (one replica gets it)."""
        data = self._alert_run("ALERT_TAKE", key)
        return None if data is None else _object(data)

    @converted
    def alert_list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every firing alert."""
        return [(str(key), record) for key, data in self._db.hgetall(self._key("alerts")).items()
                if (record := _object(data))]

    # -- open digest groups ---------------------------------------------------------------------
    @converted
    def group_add(self, key: str, meta: dict[str, Any], event: dict[str, Any]) -> int:
        """Append an event to a group, opening it with `meta`; the group's size."""
        return int(self._alert_run("GROUP_ADD", key, json.dumps(meta, default=str), _json(event)))

    @converted
    def group_list(self) -> list[tuple[str, dict[str, Any], int]]:
        """Every open group, oldest first."""
        keys = list(self._db.zrange(self._key("groups:order"), 0, -1))
        if not keys:
            return []
        pipe = self._db.pipeline(transaction=False)
        for key in keys:
            pipe.hget(self._key("groups"), key)
            pipe.llen(self._key("group", key))
        answers = pipe.execute()
        return [(str(key), record, int(size))
                for key, meta, size in zip(keys, answers[::2], answers[1::2], strict=True)
                if meta is not None and (record := _object(meta))]

    @converted
    def group_get(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A group's meta and events, read in one transaction."""
        pipe = self._db.pipeline(transaction=True)
        pipe.hget(self._key("groups"), key)
        pipe.lrange(self._key("group", key), 0, -1)
        meta, events = pipe.execute()
        record = None if meta is None else _object(meta)
        if record is None:
            return None
        return record, [event for e in events if (event := _object(e))]

    @converted
    def group_take(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Close a group: its meta and events (one replica gets them)."""
        found = self._alert_run("GROUP_TAKE", key)
        if not found:
            return None
        meta, events = found
        return _object(meta) or {}, [event for e in events if (event := _object(e))]

    @converted
    def history_add(self, key: str, record: dict[str, Any], keep: int, ttl: float,
                    now: float) -> None:
        """Append to an object's recent events (one script: trimmed and expiring at once)."""
        self._alert_run("HISTORY_ADD", key, _json(record), str(max(1, keep)),
                        str(max(1, int(ttl * 1000))))

    @converted
    def history_get(self, key: str, since: float) -> list[dict[str, Any]]:
        """An object's kept events at or after `since`, oldest first (what no eventd wrote
        is skipped: a record read back is data)."""
        rows = self._db.lrange(self.prefix + "history:" + key, 0, -1)
        found = [record for row in rows if (record := _object(row))]
        return [r for r in found if _at(r) >= since]


def _at(record: dict[str, Any]) -> float:
    """A history record's time, or 0 (older than any window) when it is not a number."""
    at = record.get("at", 0.0)
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0.0


def _object(data: object) -> dict[str, Any] | None:
    """A JSON object as stored, or None (said in the log) for what no eventd wrote: a record
    read from Redis is data, and one torn or forged must not fail every read of its kind."""
    try:
        value = json.loads(data) if isinstance(data, (str, bytes)) else None
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return value
    logger.warning("an alert, digest group or history record in Redis is undecodable; skipped")
    return None
