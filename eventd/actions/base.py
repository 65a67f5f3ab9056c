"""The contract every action kind fulfils, and the job that carries one action to it.

An action kind is a class registered in `eventd.actions.ACTIONS`. The daemon makes one
instance per kind and hands it jobs; a job holds already-rendered options, so a job in the
spool can be re-run after a restart without the rule that made it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from eventd.ops.metrics import Metrics
    from eventd.settings import Settings
    from eventd.sources.dockercloud.auth import Credentials
    from eventd.sources.dockercloud.rest import RestClient


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the spool and dead letters."""
        return {
            "id": self.id, "rule": self.rule, "kind": self.kind, "options": self.options,
            "event": self.event, "target": self.target, "created_at": self.created_at,
            "attempts": self.attempts, "context": self.context,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionJob:
        """Rebuild a job read back from the spool."""
        return cls(**{k: data[k] for k in (
            "id", "rule", "kind", "options", "event", "target", "created_at", "attempts", "context")
            if k in data})


class CallRecorder(Protocol):
    """Told about every object eventd is about to act on (the loop guard)."""

    def record(self, target_uri: str) -> None: ...


class CallLimiter(Protocol):
    """Admits at most a few calls per target object per window (the target limiter)."""

    def acquire(self, target: str, job_id: str) -> bool: ...


class ActionFollower(Protocol):
    """Waits for a Docker Cloud action to end, from the stream's action events."""

    def wait(self, action_uri: str, timeout: float,
             stopping: threading.Event | None = None) -> str | None: ...


@dataclass
class ActionContext:
    """What action kinds may use: shared clients, guards and settings, built once by the daemon.

    A guard left None gets a private default in the kind that needs it (tests build kinds
    with a bare context); the daemon passes the shared ones.
    """

    settings: Settings
    metrics: Metrics
    credentials: Credentials | None = None
    rest: RestClient | None = None
    state_dir: Path | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    loop_guard: CallRecorder | None = None
    limiter: CallLimiter | None = None
    action_waiter: ActionFollower | None = None
    poll_interval: float = 1.0  # seconds between polls of a followed Docker Cloud action


class FollowInterrupted(Exception):
    """Shutdown while following: the job stays in the spool with its progress, for the next start."""


@dataclass(frozen=True)
class FollowUp:
    """What an attempt left running: the dispatcher finishes it beside the target's queue.

    `follow(stopping)` returns the final description, or raises a PermanentActionError (or
    FollowInterrupted once `stopping` is set); it must not repeat the call. `progress` is
    saved with the job in the spool first, so a restart follows the same thing instead of
    calling again.
    """

    description: str
    progress: dict[str, Any]
    follow: Callable[[threading.Event], str]


class ActionKind(Protocol):
    """One kind of action (`log`, `webhook`, `alertmanager`, `dockercloud`, `audit`).

    The class attributes are its capabilities; the engine and the dispatcher read them
    instead of testing kind names.
    """

    #: the name used in rule files
    name: ClassVar[str]
    #: JSON Schema of the options mapping (strings in it may hold templates)
    schema: ClassVar[dict[str, Any]]
    #: True: accepted jobs go to the durable spool and are retried (webhook, dockercloud...).
    #: False: run on a bounded in-memory queue that blocks when full (log, audit).
    durable: ClassVar[bool]
    #: True: specs of this kind with the same target are merged into one job per event
    #: (audit writes one line per event, listing every rule that matched).
    per_event: ClassVar[bool]
    #: True: the kind changes the objects events are about (a REST call): it does not fire on
    #: events eventd caused itself, nor on events older than --max-event-age.
    acts_on_objects: ClassVar[bool]

    def __init__(self, context: ActionContext) -> None: ...

    def inactive(self, options: dict[str, Any]) -> bool:
        """True when running these (unrendered) options would do nothing (a log line below
        the log level): the engine then neither renders nor queues them."""
        ...

    def describe(self, job: ActionJob) -> str:
        """Where the job goes, safe to log (no secrets)."""
        ...

    def flush(self) -> None:
        """Called when the kind's queue runs empty (audit hands its buffer to the OS)."""
        ...

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """Checks beyond the schema, as messages; run when rules load (before rendering)."""
        ...

    def target(self, options: dict[str, Any]) -> str:
        """The delivery queue for these rendered options (bounded cardinality)."""
        ...

    def run(self, job: ActionJob) -> str | FollowUp:
        """One attempt. Return a short description of what was done, or a FollowUp.

        Raise RetryableActionError (with retry_after if the server said) or
        PermanentActionError; anything else is treated as retryable and counted as internal.
        """
        ...

    def close(self) -> None:
        """Release files and sessions; called once at shutdown."""
        ...
