"""The plain records that cross layers: an accepted action job and a dead letter.

They import nothing of eventd, so that stores, delivery and actions can all use them without
importing each other for a type (as `events.py` is for events).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["ActionJob", "DeadLetter", "UndecodableRecord", "job_from_json", "quarantined_job"]

#: 19 digits in a row: maybe an integer orjson would turn into a float (past 64 bits); such a
#: record (or one with a long digit string, which costs only the slower reader) goes to json
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_UNREAD = object()
#: the rule and kind of a placeholder job that stands for an undecodable spool record
UNDECODABLE = "(undecodable)"
_RECORD_SHOWN = 2000  # characters of an undecodable record kept in its dead letter
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "rule": (str,), "kind": (str,), "options": (dict,), "event": (dict,),
    "target": (str,), "created_at": (int, float), "attempts": (int,), "context": (dict,),
    "mac": (str,)}
_REQUIRED = ("id", "rule", "kind", "options", "event", "target", "created_at")


class UndecodableRecord(ValueError):
    """A store record that is not a job eventd wrote; the message is a short, bounded reason."""

_JOB_FIELDS = ("id", "rule", "kind", "options", "event", "target", "created_at", "attempts",
               "context", "mac")


@dataclass(slots=True)
class ActionJob:
    """One action to run for one event: serialisable, so the spool can keep it."""

    id: str  # unique per (rule, event, action index); also the Idempotency-Key
    rule: str
    kind: str
    options: dict[str, Any]  # rendered: no templates left
    event: dict[str, Any]
    target: str  # the delivery queue it belongs to (bounded: a host, "dockercloud", a file)
    created_at: float
    attempts: int = 0
    context: dict[str, Any] = field(default_factory=dict)  # extra data a kind asked for
    #: HMAC-SHA256 of the fields that say what runs (eventd.delivery.signing): a job read back
    #: from a store runs only if it is one this cluster wrote ("" until the dispatcher signs it)
    mac: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the spool and dead letters."""
        return {
            "id": self.id, "rule": self.rule, "kind": self.kind, "options": self.options,
            "event": self.event, "target": self.target, "created_at": self.created_at,
            "attempts": self.attempts, "context": self.context, "mac": self.mac,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionJob:
        """Rebuild a job read back from the spool."""
        return cls(**{k: data[k] for k in _JOB_FIELDS if k in data})


@dataclass(frozen=True)
class DeadLetter:
    """An action that will not be retried on its own: the job, why, and when (POSIX time)."""

    job: ActionJob
    reason: str
    at: float


def job_from_json(data: object, attempts: object = None) -> ActionJob:
    """A job from a store's JSON record (and its separate attempts count), checked field by
    field: a record written by hand or torn is UndecodableRecord, never a TypeError later."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError as exc:
            raise UndecodableRecord("not UTF-8") from exc
    if not isinstance(data, str):
        raise UndecodableRecord(f"not text ({type(data).__name__})")
    record: object = _UNREAD
    if _LONG_DIGITS.search(data) is None:  # orjson reads an integer past 64 bits as a float
        try:
            record = orjson.loads(data)  # a few times faster: a lane pages in hundreds at once
        except orjson.JSONDecodeError:
            pass
    if record is _UNREAD:
        # What orjson refuses or would change and the json module reads exactly (NaN, an
        # integer past 64 bits, a lone surrogate, deep nesting) decodes as it always did:
        # a job must come back as it was signed.
        try:
            record = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise UndecodableRecord("not JSON") from exc
    if not isinstance(record, dict):
        raise UndecodableRecord(f"not an object ({type(record).__name__})")
    for name in _REQUIRED:
        if name not in record:
            raise UndecodableRecord(f"no {name!r}")
    for name, types in _FIELD_TYPES.items():
        value = record.get(name)
        if name in record and (not isinstance(value, types) or isinstance(value, bool)):
            raise UndecodableRecord(f"{name!r} is {type(value).__name__}")
    job = ActionJob.from_dict(record)
    if attempts is not None:
        try:
            job.attempts = int(attempts)  # type: ignore[call-overload]
        except (TypeError, ValueError) as exc:
            raise UndecodableRecord("attempts is not a number") from exc
    if not job.id or job.created_at != job.created_at:  # NaN
        raise UndecodableRecord("empty id or bad created_at")
    return job


def quarantined_job(job_id: str, target: str, data: object, reason: str) -> ActionJob:
    """The placeholder a dead letter keeps for an undecodable record: its id, what the record
    said (cut short), and why; its kind runs nothing, and it carries no MAC."""
    shown = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    return ActionJob(id=job_id, rule=UNDECODABLE, kind=UNDECODABLE, options={}, event={},
                     target=target or UNDECODABLE, created_at=0.0,
                     context={"record": shown[:_RECORD_SHOWN], "reason": reason})
