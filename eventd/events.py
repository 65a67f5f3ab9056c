"""Events as eventd sees them: parsing frames, naming objects by type and uuid, internal events.

An event is the plain dict decoded from the frame (fastest to build, and what templates
and the audit log want). eventd adds at most these keys of its own: `backfilled`,
`caused_by_eventd`, `gap_seconds` (gap events only).
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import re
import uuid as _uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple, overload

import orjson

from eventd.errors import MalformedEvent

Event = dict[str, Any]

#: resource_uri of eventd's own stream events (gaps).
STREAM_URI = "/eventd/stream/"
#: resource_uri prefix of Docker Engine objects (`/docker/<type>/<id>/`)
DOCKER_URI_PREFIX = "/docker/"

_TAIL = re.compile(r"([A-Za-z_-]+)/([0-9A-Za-z-]+)/?$")


class ObjectRef(NamedTuple):
    """An object named by type and uuid, so namespaced and un-namespaced URIs compare equal."""

    type: str
    uuid: str


@dataclass(slots=True)
class Received:
    """One event on its way through the pipeline, with when it arrived."""

    event: Event
    received_at: float
    #: the frame as received, when something reads it again (the stream's recorder); None
    #: for eventd's own events and when nothing records: the hand-off queue holds hundreds
    raw: bytes | None = None
    internal: bool = False  # gap and backfilled events: not recorded, not de-duplicated by uuid


class Batch(Sequence[Received]):
    """One read's events as plain lists, with one arrival time and one `internal` flag:
    a Received is built only for whoever indexes or iterates it.

    A stream's read of ~180 events used to become ~180 Received objects, and building one
    (a dataclass __init__, a Python call) cost about as much as cutting its frame; the engine
    reads `events` directly. Anything that takes a sequence of Received takes a Batch."""

    __slots__ = ("events", "received_at", "raws", "internal", "types")

    def __init__(self, events: list[Event], received_at: float,
                 raws: list[bytes] | None = None, internal: bool = False, *,
                 types: Mapping[str, int] | None = None) -> None:
        self.events = events
        self.received_at = received_at
        #: the frames as received, one per event, when something reads them again (the
        #: stream's recorder); None otherwise
        self.raws = raws
        self.internal = internal
        #: the events counted by `type` when they were decoded (what the engine counts as
        #: received), or None; nothing on the way to the engine changes a type
        self.types = types

    def __len__(self) -> int:
        return len(self.events)

    @overload
    def __getitem__(self, index: int) -> Received: ...
    @overload
    def __getitem__(self, index: slice) -> list[Received]: ...

    def __getitem__(self, index: int | slice) -> Received | list[Received]:
        if isinstance(index, slice):
            return list(self)[index]
        raws = self.raws
        return Received(self.events[index], self.received_at,
                        None if raws is None else raws[index], self.internal)

    def __iter__(self) -> Iterator[Received]:
        events, raws = self.events, self.raws
        return map(Received, events, repeat(self.received_at),
                   repeat(None) if raws is None else raws, repeat(self.internal))

    def __repr__(self) -> str:
        return f"Batch({len(self.events)} events, received_at={self.received_at})"


def events_of(batch: Sequence[Received]) -> list[Event]:
    """The events of a batch (a Batch's own list: changing one changes the batch's)."""
    if type(batch) is Batch:
        return batch.events
    return [received.event for received in batch]


def parse_event(data: bytes | str) -> Event:
    """Decode a frame into an event; raise MalformedEvent with a bounded `reason` otherwise."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        sample = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        raise MalformedEvent("not_json", sample) from None
    if type(value) is not dict:
        raise MalformedEvent("not_object", _sample(data))
    kind = value.get("type")
    if not kind or not isinstance(kind, str):
        raise MalformedEvent("missing_type", _sample(data))
    return value


def _sample(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


_REF_CACHE: dict[str, ObjectRef | None] = {}
_REF_CACHE_SIZE = 4096  # parents and services repeat; action URIs do not: keep it small
#: Longer than any resource URI of the reference; past it `_TAIL.search` backtracks quadratically
#: (a 1 MB `resource_uri` held the engine thread for minutes) and the cache would keep the text.
_MAX_REF_URI = 1024


def _tail(uri: str) -> re.Match[str] | None:
    """`_TAIL.search(uri)`, tried first at the start of the segment before the last one (a
    search from the left tries every position: a quarter of an action event's cost when
    its URI was not cached). A match there is the search's: the slash before the uuid is
    the only one a match can use, and the type's run can not begin before that segment."""
    before = uri.rfind("/", 0, len(uri) - 1)  # the slash before the uuid (a trailing one aside)
    if before > 0:
        match = _TAIL.match(uri, uri.rfind("/", 0, before) + 1)
        if match is not None:
            return match
    return _TAIL.search(uri)


def object_ref(uri: object) -> ObjectRef | None:
    """Take `<type>/<uuid>` from the tail of a resource URI (namespaced or not)."""
    if type(uri) is not str or len(uri) > _MAX_REF_URI:
        return None
    try:
        return _REF_CACHE[uri]  # the same URIs come back again and again
    except KeyError:
        pass
    match = _tail(uri)
    ref = None if match is None else ObjectRef(match.group(1), match.group(2))
    if len(_REF_CACHE) >= _REF_CACHE_SIZE:
        _REF_CACHE.clear()
    _REF_CACHE[uri] = ref
    return ref


#: The cache's own `get(uri, default)`: a URI's ObjectRef (or None) as object_ref found it
#: lately, else `default` (then ask object_ref); for a loop over a batch's URIs, without a
#: call of object_ref each. Only strings are ever in it (an unhashable `uri` raises TypeError).
cached_object_ref: Callable[[object, Any], Any] = _REF_CACHE.get  # type: ignore[assignment]


_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: A resource URI of the reference, nothing before or after:
#: `/api/<app|infra>/v1/[<namespace>/]<type>/<uuid>/`.
RESOURCE_URI = re.compile(r"/api/(?P<api>app|infra)/v1/(?:(?P<ns>[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)/)?"
                          rf"(?P<type>[a-z]+)/(?P<uuid>{_UUID})/")


def parents_by_type(parents: object) -> dict[str, str]:
    """Map each parent's type to its URI (`{"service": "/api/app/v1/ns/service/<uuid>/", ...}`).

    Only exact resource URIs count, and a type named by two different objects is left out:
    an element placed in `parents` by whoever shapes the event must not win over the real one.
    """
    result: dict[str, str] = {}
    ambiguous: set[str] = set()
    if isinstance(parents, list):
        for uri in parents:
            if type(uri) is not str or RESOURCE_URI.fullmatch(uri) is None:
                continue
            ref = object_ref(uri)
            if ref is None:
                continue
            known = result.get(ref.type)
            if known is None:
                result[ref.type] = uri
            elif object_ref(known) != ref:
                ambiguous.add(ref.type)
    for kind in ambiguous:
        del result[kind]
    return result


_last_iso: tuple[int, str] = (-1, "")


def iso_utc(timestamp: float) -> str:
    """Format a POSIX time as the stream does: ISO 8601, whole seconds, `Z`."""
    global _last_iso
    second = int(timestamp // 1)
    cached = _last_iso
    if cached[0] == second:  # many events share a second: format it once
        return cached[1]
    text = _dt.datetime.fromtimestamp(second, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _last_iso = (second, text)
    return text


def parse_datetime(value: object) -> float | None:
    """Parse an event's ISO 8601 or a REST object's RFC 2822 datetime into POSIX time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        text = value.replace("Z", "+00:00") if value.endswith("Z") else value
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.timestamp()


def stream_event(state: str, now: float, gap_seconds: float | None = None) -> Event:
    """eventd's own gap marker: `disconnected`, or `connected` with the gap's length."""
    event: Event = {
        "type": "eventd",
        "action": "stream",
        "parents": [],
        "resource_uri": STREAM_URI,
        "state": state,
        "uuid": str(_uuid.uuid4()),
        "datetime": iso_utc(now),
    }
    # Present on both states, so one template serves both (null when it does not apply).
    event["gap_seconds"] = None if gap_seconds is None else round(gap_seconds, 3)
    return event


def backfilled_action_event(action: dict[str, Any]) -> Event:
    """Rebuild the stream event a missed action would have produced (REST action object in)."""
    when = parse_datetime(action.get("end_date")) or parse_datetime(action.get("start_date"))
    obj = action.get("object")
    return {
        "type": "action",
        "action": "update",
        "parents": [obj] if isinstance(obj, str) and obj else [],
        "resource_uri": action.get("resource_uri", ""),
        "state": action.get("state", ""),
        "uuid": str(_uuid.uuid4()),
        "datetime": iso_utc(when) if when is not None else "",
        "backfilled": True,
    }
