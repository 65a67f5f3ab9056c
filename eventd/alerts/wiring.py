"""The alerting parts of one pipeline, built together: the alert book, the grouper, the ticker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from eventd.alerts.firing import AlertBook
from eventd.alerts.groups import GroupedAction, Grouper
from eventd.alerts.ticker import Ticker
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.settings import Settings
from eventd.stores.base import FiringAlerts, OpenGroups


class _Targeted(Protocol):
    def target(self, options: dict[str, Any]) -> str: ...


class _Store(FiringAlerts, OpenGroups, Protocol):
    pass


class _RuleSource(Protocol):
    """The engine, as far as a closing group needs it: the rules in force."""

    rules: Any


@dataclass
class Alerting:
    """What the daemon runs for alerting: jobs pass through `book.submit`; the engine puts
    grouped events into `grouper`; `ticker` re-sends and closes on time."""

    book: AlertBook
    grouper: Grouper
    ticker: Ticker
    _source: list[_RuleSource]

    @classmethod
    def build(cls, settings: Settings, store: _Store, submit: Callable[[ActionJob], object],
              metrics: Metrics, kinds: Mapping[str, _Targeted],
              stopping: threading.Event) -> Alerting:
        """Wire the parts on `store`, handing finished jobs to `submit` (the dispatcher)."""
        source: list[_RuleSource] = []

        def lookup(rule: str, index: int) -> GroupedAction | None:
            if not source:
                return None
            found = getattr(source[0].rules, "by_name", {}).get(rule)
            actions = getattr(found, "actions", ())
            return actions[index] if found is not None and index < len(actions) else None

        def target(kind: str, options: dict[str, Any]) -> str:
            return kinds[kind].target(options) if kind in kinds else kind

        destinations = {name: kind.incident_destination for name, kind in kinds.items()
                        if getattr(kind, "incident", False) and hasattr(kind, "incident_destination")}
        book = AlertBook(store, submit, metrics, resend=settings.alert_resend, stopping=stopping,
                         destinations=destinations)
        grouper = Grouper(store, submit, metrics, lookup, target, stopping)
        return cls(book, grouper, Ticker(book, grouper, metrics, stopping), source)

    def serve(self, source: _RuleSource) -> None:
        """Read the rules in force from `source` (the engine: reloads are seen at once)."""
        self._source[:] = [source]
