"""The contract every action kind fulfils, and the job that carries one action to it.

An action kind is a class registered in `eventd.actions.ACTIONS`. The daemon makes one
instance per kind and hands it jobs; a job holds already-rendered options, so a job in the
spool can be re-run after a restart without the rule that made it.
"""

from __future__ import annotations

import threading
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


@dataclass
class ActionContext:
    """What action kinds may use: shared clients and settings, built once by the daemon."""

    settings: Settings
    metrics: Metrics
    credentials: Credentials | None = None
    rest: RestClient | None = None
    state_dir: Path | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. "loop_guard", "action_waiter"


class ActionKind(Protocol):
    """One kind of action (`log`, `webhook`, `alertmanager`, `dockercloud`, `audit`)."""

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

    def __init__(self, context: ActionContext) -> None: ...

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """Checks beyond the schema, as messages; run when rules load (before rendering)."""
        ...

    def target(self, options: dict[str, Any]) -> str:
        """The delivery queue for these rendered options (bounded cardinality)."""
        ...

    # Optional: `inactive(raw_options) -> bool`. True means running the action would do
    # nothing (a log line below the log level), so the engine neither renders nor queues it.

    def run(self, job: ActionJob) -> str:
        """One attempt. Return a short description of what was done.

        Raise RetryableActionError (with retry_after if the server said) or
        PermanentActionError; anything else is treated as retryable and counted as internal.
        """
        ...

    def close(self) -> None:
        """Release files and sessions; called once at shutdown."""
        ...
