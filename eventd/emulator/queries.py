"""List endpoints: filters (section 3.4/3.5), date parsing and tastypie-style pagination."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from eventd.emulator.world import Action, ApiError, Obj, World, uri_key

DEFAULT_LIMIT = 25

# Query keys each list understands besides limit/offset (tastypie `__` lookups on uuid too).
LIST_FILTERS: dict[str, frozenset[str]] = {
    "stack": frozenset({"uuid", "name", "state"}),
    "service": frozenset({"uuid", "state", "name", "stack"}),
    "container": frozenset({"uuid", "state", "name", "service", "node"}),
    "node": frozenset({"uuid", "state", "node_cluster"}),
    "nodecluster": frozenset({"uuid", "state", "name"}),
    "action": frozenset({"uuid", "state", "object", "include_related", "start_date__gte",
                         "start_date__lte", "end_date__gte", "end_date__lte"}),
}


def parse_date(value: str) -> datetime:
    """ISO 8601 (`2016-06-01T10:15:02Z`, `+00:00`) or RFC 2822; naive values are UTC."""
    text = value.strip()
    # An unencoded "+00:00" in a query string arrives as " 00:00".
    text = re.sub(r"(T\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)$", r"\1+\2", text)
    parsed: datetime | None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            parsed = None
    if parsed is None:
        raise ApiError(400, f"invalid date {value!r}: use ISO 8601 or RFC 2822")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _ref(world: World, kind: str, value: str | None) -> str:
    return "" if value is None else f"{kind}/{value}"


def _matcher(world: World, kind: str, key: str, value: str) -> Callable[[Obj], bool]:
    if key == "uuid":
        return lambda o: o.uuid == value
    if key == "uuid__startswith":
        return lambda o: o.uuid.startswith(value)
    if key == "state":
        return lambda o: o.state == value
    if key == "name":
        return lambda o: o.name == value
    if key in ("stack", "service", "node", "node_cluster"):
        target_kind = "nodecluster" if key == "node_cluster" else key
        wanted = uri_key(value) if "/" in value else f"{target_kind}/{value}"
        attr = {"node_cluster": "cluster"}.get(key, key)
        return lambda o: _ref(world, target_kind, getattr(o, attr, None)) == wanted
    if key in ("start_date__gte", "start_date__lte", "end_date__gte", "end_date__lte"):
        bound = parse_date(value)
        field, op = key.split("__")

        def check(o: Obj) -> bool:
            moment = o.created if field == "start_date" else getattr(o, "end", None)
            if moment is None:
                return False
            return moment >= bound if op == "gte" else moment <= bound
        return check
    raise ApiError(400, f"unsupported filter {key!r} on {kind}")


def select(world: World, kind: str, query: dict[str, str], ignore_dates: bool = False
           ) -> list[Obj]:
    """The objects of a list call, after its filters, in creation order."""
    allowed = LIST_FILTERS[kind] | {"uuid__startswith"}
    objects = world.objects(kind)
    include_related = query.get("include_related", "false").lower() in ("true", "1", "yes")
    for key, value in query.items():
        if key in ("limit", "offset", "format", "include_related"):
            continue
        if key not in allowed:
            raise ApiError(400, f"unsupported filter {key!r} on {kind}")
        if kind == "action" and key == "object":
            target = uri_key(value)
            keys = {target}
            if include_related:
                target_kind, _, target_uuid = target.partition("/")
                keys = world.related_keys(target_kind, target_uuid)
            objects = [o for o in objects if isinstance(o, Action)
                       and f"{o.target_kind}/{o.target_uuid}" in keys]
            continue
        match = _matcher(world, kind, key, value)
        if ignore_dates and key.endswith(("_date__gte", "_date__lte")):
            continue  # parsed (a bad date is still a 400), then ignored
        objects = [o for o in objects if match(o)]
    return objects


def _int(query: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(query.get(key, default))
    except ValueError:
        raise ApiError(400, f"{key} must be an integer") from None
    if value < 0:
        raise ApiError(400, f"{key} must not be negative")
    return value


def page(world: World, path: str, kind: str, query: dict[str, str],
         ignore_dates: bool = False) -> dict[str, Any]:
    """`{"meta": {...}, "objects": [...]}` with next/previous as `/api/...?limit=&offset=` paths."""
    limit = _int(query, "limit", DEFAULT_LIMIT)
    offset = _int(query, "offset", 0)
    with world.lock:
        objects = select(world, kind, query, ignore_dates)
        total = len(objects)
        chosen = objects[offset:offset + limit] if limit else objects[offset:]
        body = [world.to_json(o) for o in chosen]
    rest = {k: v for k, v in query.items() if k not in ("limit", "offset")}

    def link(new_offset: int) -> str:
        return path + "?" + urlencode({**rest, "limit": limit, "offset": new_offset})

    has_next = bool(limit) and offset + limit < total
    has_previous = bool(limit) and offset > 0
    return {"meta": {"limit": limit, "next": link(offset + limit) if has_next else None,
                     "offset": offset,
                     "previous": link(max(0, offset - limit)) if has_previous else None,
                     "total_count": total},
            "objects": body}


