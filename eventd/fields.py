"""Reading a field of an event by name, dotted paths included, with a marker for "absent".

A path is keys joined by dots (`data.errorMessage`); a key that holds dots itself is written
in double quotes as one segment: `attributes."com.docker.compose.service"` (a Docker label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What a getter returns for a field the event does not have (None is a present null).
MISSING: Any = _Missing()


class FieldPathError(ValueError):
    """A field path that cannot be read: an unclosed quote, an empty segment."""


def split_path(field: str) -> tuple[str, ...]:
    """`a."b.c".d` -> ("a", "b.c", "d"); FieldPathError for an unclosed quote or empty segment."""
    if '"' not in field:
        return tuple(field.split("."))
    parts: list[str] = []
    i, n = 0, len(field)
    while True:
        if i < n and field[i] == '"':
            end = field.find('"', i + 1)
            if end < 0:
                raise FieldPathError(f"unclosed quote in field {field!r}")
            part, i = field[i + 1:end], end + 1
            if i < n and field[i] != ".":
                raise FieldPathError(f"a quoted segment must end at a dot in field {field!r}")
        else:
            end = field.find(".", i)
            end = n if end < 0 else end
            part = field[i:end]
            if '"' in part:
                raise FieldPathError(f"quote inside a segment of field {field!r}: quote the whole "
                                     "segment")
            i = end
        if not part:
            raise FieldPathError(f"empty segment in field {field!r}")
        parts.append(part)
        if i >= n:
            return tuple(parts)
        i += 1  # the dot
        if i >= n:
            raise FieldPathError(f"field {field!r} ends with a dot")


def field_getter(field: str) -> Callable[[Mapping[str, Any]], Any]:
    """A function reading `field` (e.g. `data.errorMessage`) from an event, or MISSING.

    A path that does not parse (FieldPathError) reads as a plain key, so matching never
    raises; the rule checker reports it.
    """
    try:
        parts = split_path(field)
    except FieldPathError:
        parts = (field,)
    if len(parts) == 1:
        key = parts[0]
        return lambda event: event.get(key, MISSING)

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
