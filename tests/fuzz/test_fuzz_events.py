"""The event parser: any bytes, text or JSON value gives an event or a bounded invalid reason."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from eventd.errors import MalformedEvent
from eventd.events import parse_event

#: The `reason` labels of eventd_events_invalid_total: a bounded set.
REASONS = {"not_json", "not_object", "missing_type"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["type", "state", "parents", "x"]) | st.text(max_size=5),
                      children, max_size=5),
    max_leaves=30)


def outcome(data: bytes | str) -> dict | str:
    """The parsed event, or the invalid reason; any other exception fails the test."""
    try:
        event = parse_event(data)
    except MalformedEvent as exc:
        assert exc.reason in REASONS
        assert len(exc.sample) <= 200
        return exc.reason
    assert type(event) is dict and isinstance(event["type"], str) and event["type"]
    return event


@given(st.binary(max_size=400))
def test_any_bytes(data: bytes) -> None:
    outcome(data)


@given(st.text(max_size=200))
def test_any_text(data: str) -> None:
    outcome(data)


@given(json_values)
def test_any_json_value(value: object) -> None:
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer past 64 bits: not JSON orjson writes
        data = str(value).encode()
    result = outcome(data)
    if isinstance(value, dict) and isinstance(value.get("type"), str) and value["type"] \
            and isinstance(result, dict):
        assert result == orjson.loads(data)


@given(st.integers(1, 3000))
def test_deep_nesting(depth: int) -> None:
    outcome(b'{"type": "x", "a": ' + b"[" * depth + b"]" * depth + b"}")
