"""An Engine event as rules see it: the Engine's keys as they come, plus eventd's common fields.

The common fields make rules read the same as for Docker Cloud (`type`, `action`, `state`,
`resource_uri`, `uuid`, `datetime`), and give short names to what the Engine nests
(`id` = `Actor.ID`, `attributes` = `Actor.Attributes`, `name`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid as _uuid
from typing import Any

from eventd.errors import MalformedEvent
from eventd.events import DOCKER_URI_PREFIX as URI_PREFIX  # re-exported
from eventd.events import Event

#: What eventd adds to each Engine event, with what it means (the README's table, `eventd schema`).
ADDED_FIELDS: dict[str, str] = {
    "type": "= Type (container, image, network, volume, daemon, plugin, ...)",
    "action": "= Action up to the first ':' (die, oom, health_status, exec_start, ...)",
    "state": "what follows ': ' in Action, when there is one (health_status: unhealthy -> unhealthy)",
    "id": "= Actor.ID",
    "name": "= Actor.Attributes.name (the container's or image's name), else Actor.ID",
    "attributes": "= Actor.Attributes: exitCode, image, signal, the container's labels...",
    "resource_uri": "/docker/<type>/<id>/",
    "uuid": "a stable de-dup key made of timeNano, type, id and Action",
    "datetime": "timeNano as RFC 3339 (UTC, microseconds)",
}

#: The Engine's own keys, kept as they come.
ENGINE_FIELDS: dict[str, str] = {
    "Type": "the object type", "Action": "what happened, with its detail after ': '",
    "Actor": "{ID, Attributes}", "Actor.ID": "the object's id", "Actor.Attributes": "labels and details",
    "scope": "local or swarm", "time": "POSIX seconds", "timeNano": "POSIX nanoseconds",
}



def event_uuid(time_nano: object, kind: str, object_id: str, action: str) -> str:
    """The same Engine event always gets the same key, so a replay's overlap is dropped."""
    basis = f"{time_nano}\0{kind}\0{object_id}\0{action}".encode()
    return str(_uuid.UUID(bytes=hashlib.blake2b(basis, digest_size=16).digest()))


def rfc3339(time_nano: int) -> str:
    """Nanoseconds since the epoch as `2026-11-27T15:42:42.544275Z`."""
    seconds, nanos = divmod(time_nano, 1_000_000_000)
    when = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"


def engine_event(raw: object) -> Event:
    """Map one decoded Engine event; MalformedEvent (bounded `reason`) if it is not one."""
    if type(raw) is not dict:
        raise MalformedEvent("not_object", repr(raw)[:200])
    kind = raw.get("Type")
    action = raw.get("Action")
    if not isinstance(kind, str) or not kind or not isinstance(action, str) or not action:
        raise MalformedEvent("missing_type", repr(raw)[:200])
    actor = raw.get("Actor")
    if not isinstance(actor, dict):
        actor = {}
    object_id = actor.get("ID")
    object_id = object_id if isinstance(object_id, str) else ""
    attributes = actor.get("Attributes")
    if not isinstance(attributes, dict):
        attributes = {}
    time_nano = _time_nano(raw)
    event: dict[str, Any] = dict(raw)
    head, sep, detail = action.partition(":")
    event["type"] = kind
    event["action"] = head.strip()
    if sep:
        event["state"] = detail.strip()
    event["id"] = object_id
    name = attributes.get("name")
    event["name"] = name if isinstance(name, str) and name else object_id
    event["attributes"] = attributes
    event["resource_uri"] = f"{URI_PREFIX}{kind}/{object_id}/"
    event["uuid"] = event_uuid(time_nano, kind, object_id, action)
    event["datetime"] = rfc3339(time_nano) if time_nano is not None else ""
    return event


def time_nano_of(event: Event) -> int | None:
    """The Engine's timeNano of a mapped event (None for eventd's own events)."""
    return _time_nano(event)


def _time_nano(raw: dict[str, Any]) -> int | None:
    value = raw.get("timeNano")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    seconds = raw.get("time")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        return seconds * 1_000_000_000
    return None
