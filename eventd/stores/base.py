"""The store boundary: small role protocols that the pipeline uses, and what a store must add.

Each role is what one part of the pipeline needs, so a part can be typed against exactly
that (the dispatcher a `Spool` + `DeadLetters`, the engine `Throttles`, the loop guard
`Marks`, the de-dup window `DedupeSnapshots`, the silences' book `Silences`). A store
implements every role, converts its driver's errors into `StoreError` before they leave it
(as httpx maps transport errors), and says whether it can be used right now (`healthy()`,
behind `/readyz`).

Times are POSIX seconds (`time.time()`): a store may be shared by several processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from eventd.records import ActionJob, DeadLetter

if TYPE_CHECKING:
    from eventd.settings import Settings

__all__ = ["CallLimits", "DeadLetter", "DeadLetters", "DedupeSnapshots", "FiringAlerts", "Leases",
           "Marks", "Observed", "OpenGroups", "SharedDedupe", "Silences", "Spool", "Store",
           "StoreFactory", "Throttles"]


class Spool(Protocol):
    """Accepted actions not yet finished, in acceptance order, per delivery target.

    An action is accepted once `spool_add` returned; it leaves only through `spool_done` or
    `deadletter_add`. Readers page (`limit`, `spool_iter`): a deep spool must not cost memory.
    """

    def spool_add(self, job: ActionJob) -> bool:
        """Accept a job durably; False if a job with that id is already spooled."""
        ...

    def spool_done(self, job_id: str) -> None:
        """Forget a finished job (delivered, or skipped on purpose)."""
        ...

    def spool_update_attempts(self, job_id: str, attempts: int) -> None:
        """Remember how many attempts a job has had."""
        ...

    def spool_update(self, job: ActionJob) -> None:
        """Save a spooled job's attempts and context (e.g. a REST action's URI to follow)."""
        ...

    def spool_pending(self, target: str | None = None,
                      limit: int | None = None) -> list[ActionJob]:
        """The oldest spooled jobs (of one target), at most `limit` of them."""
        ...

    def spool_iter(self, target: str | None = None, page: int = 500) -> Iterator[ActionJob]:
        """Every spooled job (of one target) oldest first, read `page` at a time."""
        ...

    def spool_targets(self) -> dict[str, int]:
        """How many jobs each target has waiting (what a restart must resume)."""
        ...

    def spool_count(self) -> int:
        """How many jobs are spooled."""
        ...


class DeadLetters(Protocol):
    """Jobs that gave up, kept until a person retries or purges them."""

    def deadletter_add(self, job: ActionJob, reason: str, at: float | None = None) -> None:
        """Move a job to dead letters; it leaves the spool in the same step."""
        ...

    def deadletter_list(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        ...

    def deadletter_count(self) -> int:
        """How many dead letters there are."""
        ...

    def deadletter_take(self, ids: Iterable[str] | None = None) -> list[ActionJob]:
        """Move dead letters (all, or these ids) back to the spool with a fresh deadline."""
        ...

    def deadletter_purge(self, ids: Iterable[str] | None = None) -> int:
        """Delete dead letters (all, or these ids); how many were deleted."""
        ...


class Throttles(Protocol):
    """Per-key windows of a rule's `throttle`, shared by everything using the store."""

    def throttle_acquire(self, key: str, window: float, now: float) -> bool:
        """True (and remember `now`) unless `key` was acquired less than `window` s before."""
        ...

    def throttle_count(self) -> int:
        """How many keys are kept (expired ones are pruned as new ones are acquired)."""
        ...


class Marks(Protocol):
    """Short-lived marks on keys: the loop guard's "eventd acted on this object until T"."""

    def mark(self, key: str, until: float) -> None:
        """Mark `key` until the POSIX time `until`."""
        ...

    def marked(self, keys: Iterable[str], now: float) -> bool:
        """Whether any of `keys` is marked at `now`."""
        ...

    def marks_active(self, now: float) -> dict[str, float]:
        """Every key marked at `now`, with its `until`: one read a replica refreshes its view
        by (marks are few: objects eventd acted on within the loop guard's window)."""
        ...


class DedupeSnapshots(Protocol):
    """Where the engine's de-dup window is saved; the window itself lives in the engine."""

    def dedupe_load(self) -> bytes:
        """The last saved snapshot (empty if none). Its format is eventd.dedupe's business."""
        ...

    def dedupe_save(self, data: bytes | SnapshotPieces) -> None:
        """Replace the saved snapshot (given whole, or in pieces: `bytes(data)` joins them)."""
        ...


class SnapshotPieces(Protocol):
    """A snapshot handed over in pieces (eventd.dedupe.Snapshot), so that a store can write
    it without one block of its whole size."""

    def __len__(self) -> int:
        """Its size in bytes."""
        ...

    def __bytes__(self) -> bytes:
        """The pieces joined."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The pieces, in order."""
        ...


class FiringAlerts(Protocol):
    """Alerts eventd fired and keeps re-sending until resolved or expired (eventd.alerts).

    A record is a JSON-ready mapping kept under its key (the alert's identity: url + labels);
    a later `alert_put` of the same key replaces it.
    """

    def alert_put(self, key: str, record: dict[str, Any]) -> None:
        """Keep (or replace) the firing alert `key`."""
        ...

    def alert_take(self, key: str) -> dict[str, Any] | None:
        """Forget the alert `key`; its record, or None if it was not firing."""
        ...

    def alert_list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every firing alert (key, record), in no particular order."""
        ...


class OpenGroups(Protocol):
    """Digest groups still collecting events (a grouped webhook), kept until they close.

    `meta` is JSON-ready and written when the group opens; events are kept in arrival order.
    """

    def group_add(self, key: str, meta: dict[str, Any], event: dict[str, Any]) -> int:
        """Append `event` to group `key` (opening it with `meta` if it is not open); the
        group's size after the append."""
        ...

    def group_list(self) -> list[tuple[str, dict[str, Any], int]]:
        """Every open group: (key, meta, size), oldest first."""
        ...

    def group_get(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Group `key`'s meta and events (oldest first), or None if it is not open."""
        ...

    def group_take(self, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Close group `key`: its meta and events (oldest first), or None if it is not open."""
        ...


@runtime_checkable
class EventHistory(Protocol):
    """Each object's recent events (`enrich: history`), bounded in count and age per object.

    Records are JSON-ready and carry `at` (POSIX time); a key is an object's resource URI.
    Every store prunes what is older than `ttl` when it adds, so objects never seen again do
    not stay.
    """

    def history_add(self, key: str, record: dict[str, Any], keep: int, ttl: float,
                    now: float) -> None:
        """Append `record` to `key`'s events, keeping the newest `keep` of the last `ttl` s."""
        ...

    def history_get(self, key: str, since: float) -> list[dict[str, Any]]:
        """`key`'s kept events at or after `since`, oldest first."""
        ...


@runtime_checkable
class ParkedEvents(Protocol):
    """Events whose actions wait for a container's logs off the engine's thread (eventd.engine):
    each kept, under its key, from before it waits until its actions are spooled, so that a
    crash while waiting loses none (the next start processes what is left, oldest first).

    An event is JSON-ready; a key is unique per event and rule set turn (the engine's).
    """

    def parked_add(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Keep each `(key, event)`, durably on return (a key kept already is left as is)."""
        ...

    def parked_done(self, keys: list[str]) -> None:
        """Forget these keys (their actions are spooled, or decided)."""
        ...

    def parked_list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every kept `(key, event)`, oldest first."""
        ...


class Silences(Protocol):
    """Silences (eventd.silences): JSON-ready records kept by their `id`, shared by every
    process on the store; each holds `ends_at` (POSIX time), by which the store prunes.

    The store keeps what it is given and checks nothing: a record read back is data that
    eventd.silences checks again.
    """

    def silence_put(self, record: dict[str, Any]) -> None:
        """Keep (or replace) the silence `record["id"]`."""
        ...

    def silence_list(self) -> list[dict[str, Any]]:
        """Every silence kept, in no particular order."""
        ...

    def silence_prune(self, ended_before: float) -> int:
        """Forget the silences whose `ends_at` is before `ended_before`; how many."""
        ...


class Store(Spool, DeadLetters, Throttles, Marks, DedupeSnapshots, FiringAlerts, OpenGroups,
            Silences, Protocol):
    """Every role, plus a health check and a close."""

    #: the registry name ("sqlite", "memory", ...)
    name: ClassVar[str]

    def healthy(self) -> bool:
        """Whether the store can be written now (readiness)."""
        ...

    def close(self) -> None:
        """Release the store (idempotent); later calls raise StoreError."""
        ...


# -- roles a shared store adds (the Redis store); callers check with isinstance() ----------------
@runtime_checkable
class CallLimits(Protocol):
    """The per-target REST call limit, counted where every replica sees the same counts."""

    def limit_acquire(self, key: str, job_id: str, max_calls: int, per: float,
                      now: float) -> bool:
        """True (and count `job_id`) if fewer than `max_calls` other jobs called `key` in the
        `per` s before `now`; a job already counted is let through again (its retries)."""
        ...


@runtime_checkable
class Leases(Protocol):
    """Named leases with fencing tokens: one holder at a time, ending `ttl` s after its last
    renewal (a dead holder's lease passes on by itself)."""

    def lease_acquire(self, name: str, owner: str, ttl: float) -> int:
        """Take or renew `name` for `owner`: its fencing token (grows with each new holder),
        or 0 while another owner holds it."""
        ...

    def lease_release(self, name: str, owner: str) -> None:
        """Give `name` up if `owner` holds it."""
        ...


@runtime_checkable
class SharedDedupe(Protocol):
    """A de-dup check several replicas share: exactly one of them sees an event first."""

    def seen_first(self, uuid: str, ttl: float) -> bool:
        """True for the first caller of `uuid` within `ttl` s, False for every later one."""
        ...


@runtime_checkable
class Observed(Protocol):
    """A store that reports its failures and reachability (eventd_store_errors_total{op},
    eventd_store_up)."""

    def observe(self, on_error: Callable[[str], None], on_state: Callable[[bool], None]) -> None:
        """Call `on_error(op)` for each failed operation and `on_state(up)` when it changes."""
        ...


class StoreFactory(Protocol):
    """A store class as the registry sees it."""

    name: ClassVar[str]

    @classmethod
    def open(cls, settings: Settings, *, exclusive: bool = False) -> Store:
        """Open the store `settings` describe; `exclusive`: this process is the one that
        delivers its spool (StateDirError if another holds it)."""
        ...

    @classmethod
    def exists(cls, settings: Settings) -> bool:
        """Whether there is any state to open (looking creates nothing)."""
        ...
