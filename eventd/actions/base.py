"""The contract every action kind fulfils (the job that carries one action is `records.ActionJob`).

An action kind is a class registered in `eventd.actions.ACTIONS`. The daemon makes one
instance per kind and hands it jobs; a job holds already-rendered options, so a job in the
spool can be re-run after a restart. Each attempt is two calls with the gate between them
(eventd.delivery.gate): `prepare(job)` says what would be sent (an `outbound.Outbound`),
`send(job, outbound)` sends exactly that. A kind never checks its own policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from eventd.errors import PermanentActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

if TYPE_CHECKING:
    from eventd.errors import ActionError

if TYPE_CHECKING:
    from eventd.clients.dockercloud.auth import Credentials
    from eventd.clients.dockercloud.rest import RestClient
    from eventd.ops.metrics import Metrics
    from eventd.settings import Settings


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
    #: the alert book (set once alerting is built): Slack keeps its message's ts there
    incidents: IncidentNotes | None = None


class IncidentNotes(Protocol):
    """The firing alerts, as an incident kind sees them (eventd.alerts.firing.AlertBook): what
    the service answered is kept with the alert, so its repeats and resolve can refer to it."""

    def note(self, key: str, notes: dict[str, Any]) -> bool: ...

    def notes(self, key: str) -> dict[str, Any]: ...


class Batching(Protocol):
    """A kind that sends several jobs of one queue at once (postgres: one transaction).

    The dispatcher hands it up to `batch_size(options)` jobs that wait in one queue, after
    the gate admitted each; `send_batch` returns one outcome per item, in order: a
    description, or the ActionError of that item alone. Raising fails every item alike
    (the target is down). Optional: a kind without it gets one job at a time.
    """

    def batch_size(self, options: dict[str, Any]) -> int: ...

    def send_batch(self, items: list[tuple[ActionJob, Outbound]]) -> list[str | ActionError]: ...


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

    def prepare(self, job: ActionJob) -> Outbound:
        """What one attempt would send: the final method, address and headers of each call
        (a URL parsed once, the container the Engine resolves, a broker subject).

        Makes no request that changes anything (the docker kind inspects the container).
        Raise PermanentActionError for options that cannot make a request, an
        `outbound.BadAddress` for a URL that cannot be parsed unambiguously.
        """
        ...

    def send(self, job: ActionJob, outbound: Outbound) -> str | FollowUp:
        """Send `outbound`, which the gate admitted, as it is; a short description of what was
        done (naming what was sent), or a FollowUp.

        Raise RetryableActionError (with retry_after if the server said) or
        PermanentActionError; anything else is treated as retryable and counted as internal.
        """
        ...

    def close(self) -> None:
        """Release files and sessions; called once at shutdown."""
        ...


def json_message(value: Any, kind: str) -> bytes:
    """`value` as JSON bytes. What event data can make unencodable for good (a lone surrogate,
    an integer past 64 bits) is a PermanentActionError: a dead letter with the reason, never
    an internal error retried for ever."""
    try:
        return orjson.dumps(value, default=str)
    except orjson.JSONEncodeError as exc:
        raise PermanentActionError(f"{kind}: the message cannot be sent as JSON ({exc})") from None


def utf8_message(text: str, kind: str) -> bytes:
    """`text` as UTF-8; a lone surrogate from event data is a PermanentActionError (as above)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise PermanentActionError(f"{kind}: the message is not valid UTF-8 "
                                   "(a lone surrogate)") from None
