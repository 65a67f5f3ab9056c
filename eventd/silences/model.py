"""A silence: matchers, a start and an end, a creator and a comment; parsed from untrusted input.

Matchers are Alertmanager's (`name=value`, `name!=value`, `name=~regex`, `name!~regex`; a
regex matches the whole value) on these names:

    rule          the rule's name
    kind          the action kind (webhook, alertmanager, dockercloud, docker, log, audit)
    label.NAME    the alert label NAME an `alertmanager` action (or an incident kind's) sends
                  (alertname included: the rule's name unless the labels set it)
    anything else an event field, as rules name them (`type`, `state`, `namespace`,
                  `attributes."com.docker.compose.service"` for a container's label)

A field the event does not have reads as "" (as a missing label does in Alertmanager), so
`state!=Running` holds for an event without a state. Every matcher must hold. Everything here
is checked as hostile input: the number and size of matchers, names, values and comments,
times that are numbers and in order; a record read back from the store is checked again.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from eventd.fields import MISSING, FieldPathError, field_getter, split_path
from eventd.silences.regex import BadPattern, compile_anchored

__all__ = ["MAX_COMMENT", "MAX_MATCHERS", "OPS", "BadSilence", "Matcher", "Silence",
           "parse_matcher", "silence_from_record"]

OPS = ("=", "!=", "=~", "!~")
MAX_MATCHERS = 16
MAX_NAME = 200
MAX_VALUE = 1024
MAX_COMMENT = 1000
MAX_CREATOR = 200
#: the longest a silence may last (Alertmanager has no cap; a forgotten one should end)
MAX_DURATION = 366 * 86400.0
#: how long an ended silence stays listed before the store forgets it
RETENTION = 7 * 86400.0


class BadSilence(ValueError):
    """A silence (or a matcher) that cannot be used; the message says which part and why."""


@dataclass(frozen=True)
class Matcher:
    """One `name op value`; `test(rule, kind, event, options)` says whether it holds."""

    name: str
    op: str
    value: str
    test: Callable[[str, str, Mapping[str, Any], Mapping[str, Any]], bool] = field(
        repr=False, compare=False)

    def to_dict(self) -> dict[str, str]:
        """JSON-ready, as the API and the store keep it."""
        return {"name": self.name, "op": self.op, "value": self.value}

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


#: the kinds with an alert's lifecycle (fire, repeat, resolve) and labels that name the alert:
#: Alertmanager's and the incident tools' (eventd.actions.incident); a silence matches their
#: labels, and never mutes their resolve
ALERT_KINDS = frozenset({"alertmanager", "pagerduty", "opsgenie", "slack", "msteams"})


def _reader(name: str) -> Callable[[str, str, Mapping[str, Any], Mapping[str, Any]], Any]:
    """What a matcher's name reads: the rule, the kind, an alert label or an event field."""
    if name == "rule":
        return lambda rule, kind, event, options: rule
    if name == "kind":
        return lambda rule, kind, event, options: kind
    if name.startswith("label.") and len(name) > len("label."):
        label = name[len("label."):]

        def read_label(rule: str, kind: str, event: Mapping[str, Any],
                       options: Mapping[str, Any]) -> Any:
            if kind not in ALERT_KINDS:
                return MISSING
            if label == "alertname" and "alertname" not in (options.get("labels") or {}):
                return rule
            labels = options.get("labels")
            return labels.get(label, MISSING) if isinstance(labels, dict) else MISSING

        return read_label
    try:
        split_path(name)
    except FieldPathError as exc:
        raise BadSilence(f"matcher name {name!r}: {exc}") from None
    get = field_getter(name)
    return lambda rule, kind, event, options: get(event)


def _text(value: Any) -> str:
    """A field's value as a matcher compares it: "" when absent or null, JSON-ish scalars."""
    if value is MISSING or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) and not value.is_integer() else str(
            int(value) if isinstance(value, float) else value)
    return ""  # lists and objects never equal a matcher's string


def parse_matcher(spec: Any) -> Matcher:
    """A matcher from `name=value` text or a {name, op, value} mapping (BadSilence if unusable)."""
    if isinstance(spec, str):
        name, op, value = _split(spec)
    elif isinstance(spec, Mapping):
        fields = spec.get("name"), spec.get("op", "="), spec.get("value")
        if not all(isinstance(part, str) for part in fields):
            raise BadSilence("a matcher needs a string name, op and value")
        name, op, value = (str(part) for part in fields)
    else:
        raise BadSilence("a matcher is `name=value` text or a {name, op, value} object")
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise BadSilence(f"a matcher's name must be 1-{MAX_NAME} characters")
    if any(ord(c) < 32 for c in name):
        raise BadSilence("a matcher's name must not hold control characters")
    if op not in OPS:
        raise BadSilence(f"matcher {name!r}: op must be one of {', '.join(OPS)}, got {op!r}")
    if len(value) > MAX_VALUE:
        raise BadSilence(f"matcher {name!r}: value longer than {MAX_VALUE} characters")
    read = _reader(name)
    if op in ("=~", "!~"):
        try:
            regex = compile_anchored(value)
        except BadPattern as exc:
            raise BadSilence(f"matcher {name!r}: {exc}") from None
        wanted = op == "=~"

        def test(rule: str, kind: str, event: Mapping[str, Any],
                 options: Mapping[str, Any]) -> bool:
            return regex(_text(read(rule, kind, event, options))) is wanted
    else:
        equal = op == "="

        def test(rule: str, kind: str, event: Mapping[str, Any],
                 options: Mapping[str, Any]) -> bool:
            return (_text(read(rule, kind, event, options)) == value) is equal
    return Matcher(name, op, value, test)


def _split(text: str) -> tuple[str, str, str]:
    """`name=~value` -> (name, "=~", value): the first operator from the left wins."""
    for index, char in enumerate(text):
        if char == "=":
            op = "=~" if text[index + 1:index + 2] == "~" else "="
            return text[:index], op, text[index + len(op):]
        if char == "!" and text[index + 1:index + 2] == "=":
            op = "!~" if text[index + 2:index + 3] == "~" else "!="
            return text[:index], op, text[index + len(op):]
    raise BadSilence(f"matcher {text[:80]!r} has no operator (=, !=, =~, !~)")


@dataclass(frozen=True)
class Silence:
    """Mutes the actions every matcher holds for, from `starts_at` until `ends_at`."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    created_at: float
    updated_at: float

    def mutes(self, rule: str, kind: str, event: Mapping[str, Any],
              options: Mapping[str, Any]) -> bool:
        """Whether every matcher holds for this action (time aside)."""
        for matcher in self.matchers:
            if not matcher.test(rule, kind, event, options):
                return False
        return True

    def state(self, now: float) -> str:
        """pending, active or expired, as Alertmanager says."""
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def to_record(self) -> dict[str, Any]:
        """JSON-ready, as the store keeps it and the API shows it (without `state`)."""
        return {"id": self.id, "matchers": [m.to_dict() for m in self.matchers],
                "starts_at": self.starts_at, "ends_at": self.ends_at,
                "created_by": self.created_by, "comment": self.comment,
                "created_at": self.created_at, "updated_at": self.updated_at}

    def expired_at(self, now: float) -> Silence:
        """This silence ended at `now` (a pending one: it never starts)."""
        if now >= self.ends_at:
            return self
        return replace(self, starts_at=min(self.starts_at, now), ends_at=now, updated_at=now)

    def describe(self) -> str:
        """`rule=x, kind=~web.*` for a log line or a table."""
        return ", ".join(str(m) for m in self.matchers)


def _time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadSilence(f"{what} must be a POSIX time in seconds")
    if not 0 <= value < 1e11:
        raise BadSilence(f"{what} is out of range")
    return float(value)


def _bounded_text(value: Any, what: str, limit: int, required: bool) -> str:
    if value is not None and not isinstance(value, str):
        raise BadSilence(f"{what} must be text")
    text = (value or "").strip()
    if required and not text:
        raise BadSilence(f"{what} is required")
    if len(text) > limit:
        raise BadSilence(f"{what} is longer than {limit} characters")
    return text


def new_silence(matchers: Any, *, starts_at: float | None, ends_at: float, created_by: Any,
                comment: Any, now: float | None = None) -> Silence:
    """A new silence with a fresh id, checked as hostile input (BadSilence if unusable)."""
    now = time.time() if now is None else now
    record = {"id": secrets.token_hex(8), "matchers": matchers,
              "starts_at": now if starts_at is None else starts_at, "ends_at": ends_at,
              "created_by": created_by, "comment": comment, "created_at": now,
              "updated_at": now}
    silence = silence_from_record(record)
    if silence.ends_at <= now:
        raise BadSilence("ends_at must be in the future")
    return silence


def silence_from_record(record: Any) -> Silence:
    """A silence from a JSON-ready record (the API's, the store's); BadSilence if unusable."""
    if not isinstance(record, Mapping):
        raise BadSilence("a silence is an object")
    ident = record.get("id")
    if not isinstance(ident, str) or not 1 <= len(ident) <= 64 or not all(
            c.isalnum() or c in "-_" for c in ident):
        raise BadSilence("id must be 1-64 letters, digits, '-' or '_'")
    raw = record.get("matchers")
    if not isinstance(raw, list) or not raw:
        raise BadSilence("a silence needs at least one matcher")
    if len(raw) > MAX_MATCHERS:
        raise BadSilence(f"at most {MAX_MATCHERS} matchers")
    matchers = tuple(parse_matcher(spec) for spec in raw)
    starts_at = _time(record.get("starts_at"), "starts_at")
    ends_at = _time(record.get("ends_at"), "ends_at")
    if ends_at < starts_at:
        raise BadSilence("ends_at must not be before starts_at")
    if ends_at - starts_at > MAX_DURATION:
        raise BadSilence(f"a silence lasts at most {MAX_DURATION / 86400:.0f} days")
    created_at = _time(record.get("created_at", starts_at), "created_at")
    updated_at = _time(record.get("updated_at", created_at), "updated_at")
    return Silence(ident, matchers, starts_at, ends_at,
                   _bounded_text(record.get("created_by"), "created_by", MAX_CREATOR, True),
                   _bounded_text(record.get("comment"), "comment", MAX_COMMENT, True),
                   created_at, updated_at)
