"""Hooks: the daemon's news (connections, deliveries, dead letters, reloads, events) for listeners.

The core announces what happened with one call each; a listener (the demo's narrator, a test)
subscribes to `hooks` and hears it, so nothing that listens has to parse log lines, and
rewording a log line breaks nobody. Shaped like kombu's consumer hooks (`on_connection_error`,
`on_connection_revived`), as an observer list so that a listener needs no subclass of the
daemon. A listener that raises is reported by the internal-error guard, never to the caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from eventd.ops.internal import report_internal_error

if TYPE_CHECKING:
    from eventd.records import ActionJob


#: one processed event, as on_processed_batch hears it: (event, rules matched, decisions)
Processed = tuple[Mapping[str, Any], Sequence[Any], Sequence[Any]]


class Observer:
    """A listener: override the hooks you need; each one here does nothing.

    Hooks run on the thread that made the news (the stream's, an action lane's, the engine's):
    keep them short and hand work to your own thread.
    """

    def on_connected(self, url: str, gap_seconds: float | None) -> None:
        """The stream is connected; `gap_seconds` is None on the first connection."""

    def on_disconnected(self, reason: str, retry_in: float, was_connected: bool) -> None:
        """A connection was lost (or an attempt failed); the next try is in `retry_in` s."""

    def on_backfilled(self, since: str, count: int) -> None:
        """`count` action events of a gap were recovered over REST."""

    def on_throttled(self, rule: str, event: Mapping[str, Any]) -> None:
        """A rule matched `event` but its throttle key is still within its window."""

    def on_delivered(self, job: ActionJob, result: str) -> None:
        """An action ran to success; `result` is its short description (e.g. `HTTP 200`)."""

    def on_dead_lettered(self, job: ActionJob, reason: str) -> None:
        """An action gave up and was moved to dead letters."""

    def on_reloaded(self, ok: bool, rules: int) -> None:
        """A rule reload finished: `ok` False keeps the `rules` in force."""

    def on_processed(self, event: Mapping[str, Any], rules: Sequence[str],
                     decisions: Sequence[Any]) -> None:
        """The engine is done with an event (not a duplicate): the `rules` it matched and what
        was decided for each of their actions (eventd.engine.Decision: rule, kind, status,
        reason, job). Runs on the engine's thread for every event: keep it to an append."""

    def on_processed_batch(self, entries: Sequence[Processed]) -> None:
        """The engine is done with a batch's events, in order: (event, rules, decisions) each,
        a rule given by name or as the Rule (its `.name`). One call per batch instead of one per
        event (the Live ring's cost); by default each entry goes to on_processed by name."""
        for event, rules, decisions in entries:
            self.on_processed(event, [rule if type(rule) is str else rule.name
                                      for rule in rules], decisions)


def _listens(observer: Observer) -> bool:
    """Whether an observer overrides on_processed or on_processed_batch."""
    kind = type(observer)
    return kind.on_processed is not Observer.on_processed \
        or kind.on_processed_batch is not Observer.on_processed_batch


class Hooks(Observer):
    """Fans each hook out to the subscribed observers; costs one empty loop with none."""

    def __init__(self) -> None:
        self._observers: tuple[Observer, ...] = ()
        #: the observers' own `on_processed_batch`, bound: the engine collects its batch's
        #: events for `on_processed_batch` only while this is not empty, and calls no observer
        #: that does not listen
        self.processing: tuple[Callable[[Sequence[Processed]], None], ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Start calling `observer`; return the function that unsubscribes it."""
        with self._lock:
            self._observers = (*self._observers, observer)
            self._sort()

        def unsubscribe() -> None:
            with self._lock:
                self._observers = tuple(o for o in self._observers if o is not observer)
                self._sort()

        return unsubscribe

    def _sort(self) -> None:
        self.processing = tuple(o.on_processed_batch for o in self._observers if _listens(o))

    def _each(self, name: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, name)(*args)
            except Exception as exc:  # noqa: BLE001 - a listener must not break the daemon
                report_internal_error(f"hook {name}", exc)

    def on_connected(self, url: str, gap_seconds: float | None) -> None:
        """Tell every observer."""
        if self._observers:
            self._each("on_connected", url, gap_seconds)

    def on_disconnected(self, reason: str, retry_in: float, was_connected: bool) -> None:
        """Tell every observer."""
        if self._observers:
            self._each("on_disconnected", reason, retry_in, was_connected)

    def on_backfilled(self, since: str, count: int) -> None:
        """Tell every observer."""
        if self._observers:
            self._each("on_backfilled", since, count)

    def on_throttled(self, rule: str, event: Mapping[str, Any]) -> None:
        """Tell every observer."""
        if self._observers:
            self._each("on_throttled", rule, event)

    def on_delivered(self, job: ActionJob, result: str) -> None:
        """Tell every observer."""
        if self._observers:
            self._each("on_delivered", job, result)

    def on_dead_lettered(self, job: ActionJob, reason: str) -> None:
        """Tell every observer."""
        if self._observers:
            self._each("on_dead_lettered", job, reason)

    def on_reloaded(self, ok: bool, rules: int) -> None:
        """Tell every observer."""
        if self._observers:
            self._each("on_reloaded", ok, rules)

    def on_processed(self, event: Mapping[str, Any], rules: Sequence[str],
                     decisions: Sequence[Any]) -> None:
        """Tell every observer that listens to it."""
        if self.processing:
            self.on_processed_batch(((event, rules, decisions),))

    def on_processed_batch(self, entries: Sequence[Processed]) -> None:
        """Tell every observer that listens to it, the whole batch at once."""
        for listener in self.processing:
            try:
                listener(entries)
            except Exception as exc:  # noqa: BLE001 - a listener must not break the daemon
                report_internal_error("hook on_processed", exc)


#: The process's hooks: the core calls them, listeners subscribe (as loggers, one per process).
hooks = Hooks()
