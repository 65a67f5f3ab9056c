"""Digest groups: a grouped `webhook` sends one request for many events instead of one each.

`group: {by: TEMPLATE, wait: 30s, max: 100}`: the first event whose `by` renders to a key opens
a group; the events that follow with the same key within `wait` join it; it closes when `wait`
has passed since the first event, or at `max` events. Open groups live in the store (a restart
loses none of their events). A closing group's options are rendered once, with `group.key`,
`group.count` and `group.events` (oldest first) beside the first event's names (`event`,
`parent`, `object`, and `resource` when the rule enriches), and the result
is accepted into the spool as one action, with an id that is stable per group.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from eventd.actions.webhook import group_limits
from eventd.errors import StoreError, TemplateError
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.ruleset.templates import build_context
from eventd.stores.backpressure import until_stored
from eventd.stores.base import OpenGroups

log = logging.getLogger(__name__)

#: digest groups open at once; one more closes the oldest early (10,000 keys of a `by` that
#: takes an event field held 45 MB)
MAX_OPEN_GROUPS = 1000

class GroupedAction(Protocol):
    """The rule's action a closing group renders (an ActionSpec)."""

    kind: str

    def render(self, context: Mapping[str, Any]) -> dict[str, Any]: ...


#: (rule name, action index) -> that action in the rules in force, or None if it is gone
Lookup = Callable[[str, int], GroupedAction | None]
#: (kind, rendered options) -> the delivery target
Target = Callable[[str, dict[str, Any]], str]


class Grouper:
    """Collects events into open groups and closes them into jobs for `submit`."""

    def __init__(self, store: OpenGroups, submit: Callable[[ActionJob], object],
                 metrics: Metrics, lookup: Lookup, target: Target,
                 stopping: threading.Event | None = None,
                 max_open: int = MAX_OPEN_GROUPS) -> None:
        self._store = store
        self.max_open = max(1, max_open)
        #: set: `add` (on the engine's thread) waits for an unreachable store until it is
        self._stopping = stopping
        self._submit = submit
        self._metrics = metrics
        self._lookup = lookup
        self._target = target
        self._lock = threading.Lock()
        #: key -> when it closes (POSIX time); the store holds the rest
        self._closing: dict[str, float] = {
            key: _number(meta.get("close_at")) for key, meta, _ in store.group_list()}
        metrics.groups_open.set(len(self._closing))
        self._capped = False  # said that the cap closed a group (once per run)

    @property
    def open(self) -> int:
        """How many groups are collecting events."""
        return len(self._closing)

    def add(self, rule: str, index: int, kind: str, by: str, group: Mapping[str, Any],
            event: dict[str, Any], now: float, resource: Any = None) -> int:
        """Put an event into its group (opening it at `now`, keeping the first event's
        enriched `resource`); the group's size so far."""
        wait, size = group_limits(group)
        key = f"{rule}\0{index}\0{by}"
        meta = {"rule": rule, "index": index, "kind": kind, "by": by, "opened_at": now,
                "close_at": now + wait, "max": size, "resource": resource}
        with self._lock:
            def append() -> int:
                return self._store.group_add(key, meta, event)

            try:
                count = append() if self._stopping is None else \
                    until_stored(append, self._stopping, "group_add")
            except StoreError as exc:  # only while stopping: otherwise the call waits
                log.warning("rule %s: an event for digest group %r not kept: the store is "
                            "unreachable while stopping (%s)", rule, by, exc)
                return 0
            if count == 1:
                self._closing[key] = now + wait
                self._metrics.groups_open.set(len(self._closing))
                log.info("rule %s: digest group %r opened; closes in %.0f s or at %d events",
                         rule, by, wait, size)
                while len(self._closing) > self.max_open:
                    self._close_oldest(now)
            if count >= size:
                self._close(key, now)
        return count

    def due(self, now: float) -> int:
        """Close every group whose time has come (`inf`: all of them, each at its own time);
        how many closed."""
        with self._lock:
            keys = sorted((at, key) for key, at in self._closing.items() if at <= now)
            for at, key in keys:
                self._close(key, min(now, at))
        return len(keys)

    def _close_oldest(self, now: float) -> None:
        """Over the cap of open groups: the one opened first closes now, counted
        (eventd_groups_closed_early_total) and said (the first time in a row only)."""
        oldest = next(iter(self._closing))
        self._metrics.groups_closed_early.inc()
        if not self._capped:
            self._capped = True
            log.warning("more than %d digest groups open: closing the oldest early (a group "
                        "`by` that takes many values?); counted in "
                        "eventd_groups_closed_early_total", self.max_open)
        self._close(oldest, now)

    def _close(self, key: str, now: float) -> None:
        self._closing.pop(key, None)
        self._metrics.groups_open.set(len(self._closing))
        # Read, accept into the spool, then forget: a crash in between sends the group again
        # at the next start (with the same id, so the same Idempotency-Key), never loses it.
        found = self._store.group_get(key)
        if found is None:
            return
        meta, events = found
        if self._send(key, meta, events, now):
            self._store.group_take(key)
            return
        # Not accepted (the dispatcher is shutting down): the group stays in the store and
        # closes at the next start.
        log.info("rule %s: digest group %r of %d events not accepted now; kept for the next "
                 "start", meta.get("rule"), meta.get("by"), len(events))

    def _send(self, key: str, meta: dict[str, Any], events: list[dict[str, Any]],
              now: float) -> bool:
        """Render and hand over the group's one job; False only if `submit` refused it."""
        rule, index = str(meta.get("rule")), meta.get("index")
        spec = self._lookup(rule, index) if type(index) is int else None
        if spec is None:
            log.warning("rule %s: digest group %r of %d events dropped: the rule or its action "
                        "%s is no longer loaded", rule, meta.get("by"), len(events),
                        index + 1 if type(index) is int else "?")
            kind = meta.get("kind", "webhook")  # a label: bounded, whatever the store holds
            self._metrics.dropped.labels(kind=kind if kind == "webhook" else "unknown",
                                         reason="group_rule_gone").inc(len(events))
            return True
        first = events[0] if events else {}
        context = build_context(first, rule, now, meta.get("resource"))
        context["group"] = {"key": meta.get("by"), "count": len(events), "events": events}
        try:
            options = spec.render(context)
        except TemplateError as exc:
            self._metrics.template_errors.labels(rule=rule).inc()
            log.warning("rule %s: template failed for digest group %r of %d events: %s; "
                        "not sent", rule, meta.get("by"), len(events), exc)
            return True
        options.pop("group", None)
        job = ActionJob(
            id=hashlib.blake2b(f"group\0{key}\0{meta.get('opened_at')}".encode(),
                               digest_size=16).hexdigest(),
            rule=rule, kind=spec.kind, options=options, event=first,
            target=self._target(spec.kind, options), created_at=now,
            context={"group": {"key": meta.get("by"), "count": len(events)}})
        if self._submit(job) is False:
            return False
        log.info("rule %s: digest group %r closed with %d events; one %s accepted", rule,
                 meta.get("by"), len(events), spec.kind)
        return True


def _number(value: object) -> float:
    """A stored time, or 0.0 (due now) for what is not one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if number == number else 0.0
