"""Reading a field of an event by name, dotted paths included, with a marker for "absent"."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What a getter returns for a field the event does not have (None is a present null).
MISSING: Any = _Missing()


def field_getter(field: str) -> Callable[[Mapping[str, Any]], Any]:
    """A function reading `field` (e.g. `data.errorMessage`) from an event, or MISSING."""
    parts = field.split(".")
    if len(parts) == 1:
        return lambda event: event.get(field, MISSING)

    def get(event: Mapping[str, Any]) -> Any:
        value: Any = event
        for part in parts:
            if not isinstance(value, dict):
                return MISSING
            value = value.get(part, MISSING)
            if value is MISSING:
                return MISSING
        return value
    return get
