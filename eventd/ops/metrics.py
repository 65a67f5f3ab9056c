"""Every metric eventd exports, built against an injected registry, labels bounded.

Labels never hold a uuid, a URL or free text: `type` is cut to the documented event types
(anything else counts as `other`), `rule` names come from the operator's own files.
The engine's per-event counters (events received, duplicates, rule matches) are `Tally`
families: the engine thread adds to plain Counters of its own without a lock, and a scrape
sums them; a prometheus-client child takes a lock on every `inc()`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as _Counter
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString as _untyped_go_float

from eventd import __version__
from eventd.ops.internal import Workers

#: prometheus-client's switch for `*_created` series, which it leaves untyped: typed here
_disable_created: Callable[[], None] = disable_created_metrics

#: Event types that get their own label value; anything else is `other`.
KNOWN_TYPES = frozenset(
    {"stack", "service", "container", "nodecluster", "node", "action", "error", "auth",
     "eventd", "image", "buildsetting", "user-notification",
     # the Docker Engine's object types (the docker source)
     "network", "volume", "daemon", "plugin", "config", "secret"}
)
OUTCOMES = ("success", "retry", "failed", "deadletter", "throttled", "skipped", "shadow", "grouped",
            "silenced")
ACTION_KINDS = ("log", "webhook", "alertmanager", "dockercloud", "audit", "docker", "postgres",
                "nats", "mqtt", "amqp", "pagerduty", "opsgenie", "slack", "msteams")
INVALID_REASONS = ("not_json", "not_object", "missing_type")
RECONNECT_REASONS = ("dropped", "closed", "pong_timeout", "idle", "protocol_error",
                     "connect_timeout", "connect_error", "auth_rejected")


LabelsOf = Callable[[Hashable], tuple[str, ...]]
#: the keys a Counter of matched rules may hold before it is folded into rule names
MATCH_KEYS = 4096


def rule_labels(key: Hashable) -> Any:
    """A rule-match key's series: a rule name, or a tuple of matched rules (anything with a
    `name`) counted once per event that matched exactly them: one series per rule, so the
    engine adds one count per event instead of one per matched rule."""
    if type(key) is tuple:
        return [(rule.name,) for rule in key]
    return (str(key),)


_K = TypeVar("_K", bound=Hashable)


class _Counts(_Counter[_K]):
    """A Counter whose item assignment is dict's own C slot.

    collections.Counter defines `__delitem__` in Python, and a class with either of
    `__setitem__`/`__delitem__` in Python gets CPython's generic assignment slot: each
    `counts[key] += 1` then looked `__setitem__` up and called dict's through a wrapper
    (about 900 instructions more, once per matched event on the engine's thread). With both
    dict's own, the slot is dict's. `del counts[key]` of an absent key raises KeyError, as
    a dict's does (nothing deletes from a tally's counts).
    """

    __delitem__ = dict.__delitem__  # type: ignore[assignment]


def _as_labels(key: Hashable) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (str(key),)


class _TallyChild:
    """What `Tally.labels(...)` returns: `inc()` for callers off the hot path."""

    __slots__ = ("_tally", "_key")

    def __init__(self, tally: Tally, key: tuple[str, ...]) -> None:
        self._tally = tally
        self._key = key

    def inc(self, amount: int = 1) -> None:
        self._tally.add(self._key, amount)


class Tally:
    """A counter family kept as plain counts that each writing thread owns, summed at scrape.

    `counts(labels_of)` hands a thread a `collections.Counter` of its own: the thread adds
    to it without a lock (`counts[key] += 1`, or `counts.update(keys)` for many at once, in
    C); keys may be any hashable object that `labels_of` turns into label values when
    scraped (the engine counts event types as they come and labels the undocumented ones
    `other` only then).
    Every count is in the next scrape: nothing is buffered or flushed.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._lock = threading.Lock()
        self._sources: list[tuple[_Counts[Hashable], LabelsOf]] = []
        self._shared = self.counts()  # for `labels(...).inc()` and `inc()`, under the lock
        self._local = threading.local()  # each thread's Counter from `mine()`
        self._owners: list[tuple[_Counts[Hashable], threading.Thread]] = []
        self._declared: set[tuple[str, ...]] = set() if labelnames else {()}
        if registry is not None:
            registry.register(self)

    def counts(self, labels_of: LabelsOf = _as_labels) -> _Counts[Hashable]:
        """A new Counter for one thread to add to; scrapes include it from now on."""
        counts: _Counts[Hashable] = _Counts()
        with self._lock:
            self._sources.append((counts, labels_of))
        return counts

    def mine(self) -> _Counts[Hashable]:
        """The calling thread's own Counter, keyed by label values (made on its first call),
        for threads that come and go (a delivery lane's worker): when a thread registers,
        the counts of threads that ended are folded into the shared ones, so the sources
        stay as many as the threads alive."""
        counts: _Counts[Hashable] | None = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = _Counts()
            with self._lock:
                ended = [c for c, owner in self._owners if not owner.is_alive()]
                for old in ended:  # its thread is gone: nobody adds to it any more
                    self._shared.update(old)
                    self._sources = [(c, of) for c, of in self._sources if c is not old]
                self._owners = [(c, owner) for c, owner in self._owners if owner.is_alive()]
                self._owners.append((counts, threading.current_thread()))
                self._sources.append((counts, _as_labels))
        return counts

    def fold(self, counts: _Counts[Hashable], labels_of: LabelsOf) -> _Counts[Hashable]:
        """Swap a thread's counts for the same totals keyed by label value; the thread goes
        on with the Counter returned (a Counter fed unbounded keys, such as event types
        nobody documented, stays as small as its labels; `labels_of` must map a label
        value to itself). A scrape sees either Counter, never half of each."""
        folded: _Counts[Hashable] = _Counts()
        for key, amount in list(counts.items()):
            found: Any = labels_of(key)
            for labels in found if type(found) is list else (found,):
                folded[labels[0] if len(labels) == 1 else labels] += amount
        with self._lock:
            self._sources = [(folded, labels_of) if source is counts else (source, of)
                             for source, of in self._sources]
        return folded

    def declare(self, *labelvalues: str) -> None:
        """Show this series (at 0 until counted), as a prometheus child created up front."""
        self._declared.add(tuple(labelvalues))

    def labels(self, *values: str, **labels: str) -> _TallyChild:
        """A child for occasional counting (locked), as prometheus-client's `labels()`."""
        key = tuple(values) if values else tuple(str(labels[n]) for n in self.labelnames)
        self.declare(*key)
        return _TallyChild(self, key)

    def inc(self, amount: int = 1) -> None:
        """Count on a family without labels."""
        self.add((), amount)

    def add(self, key: tuple[str, ...], amount: int = 1) -> None:
        with self._lock:
            self._shared[key] += amount

    def totals(self) -> dict[tuple[str, ...], int]:
        """Every series' count now, by label values."""
        with self._lock:  # copied under the lock: a fold (mine, fold) moves counts whole
            # dict() copies in one C call under the GIL: the owner may be adding meanwhile
            sources = [(dict(counts), labels_of) for counts, labels_of in self._sources]
        totals: dict[tuple[str, ...], int] = dict.fromkeys(list(self._declared), 0)
        for counts, labels_of in sources:
            for key, amount in counts.items():
                found: Any = labels_of(key)  # a list: a key counting in several series
                for labels in found if type(found) is list else (found,):
                    totals[labels] = totals.get(labels, 0) + amount
        return totals

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        # No `*_created` series, as for every family of Metrics (disable_created_metrics).
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.totals().items():
            family.add_metric(list(labels), value)
        yield family


def _go_float(value: float) -> str:
    """A bucket bound as prometheus-client writes it (`1.0`, `0.005`)."""
    return str(_untyped_go_float(value))  # type: ignore[no-untyped-call]


class _Cells:
    """One series of a `Spread`: a count per bucket (the last one +Inf) and the sum."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count one value: the first bucket whose bound is >= it (`le`), in one C call."""
        self.buckets[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def add(self, other: _Cells) -> None:
        for index, count in enumerate(other.buckets):
            self.buckets[index] += count
        self.sum += other.sum


class _LockedCells(_Cells):
    """A series for `Spread.labels(...).observe()`: any thread, under the family's lock."""

    __slots__ = ("_lock",)

    def __init__(self, bounds: tuple[float, ...], lock: threading.Lock) -> None:
        super().__init__(bounds)
        self._lock = lock

    def observe(self, amount: float) -> None:
        with self._lock:
            _Cells.observe(self, amount)


class Spread:
    """A histogram family kept per writing thread and summed at scrape, as `Tally` is for
    counters: `mine(labels)` is the calling thread's own series, observed without a lock
    (a prometheus-client Histogram takes two locks and a Python loop per observation).
    `labels(...).observe()` is for callers off the hot path. When a thread registers, the
    series of threads that ended are folded into the shared ones."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...], registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self._lock = threading.Lock()
        self._shared: dict[tuple[str, ...], _LockedCells] = {}
        self._threads: list[tuple[threading.Thread, dict[tuple[str, ...], _Cells]]] = []
        self._local = threading.local()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str, **labels: str) -> _Cells:
        """The shared series of these label values (locked), shown from now on even at 0."""
        key = tuple(values) if values else tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            cells = self._shared.get(key)
            if cells is None:
                cells = self._shared[key] = _LockedCells(self._bounds, self._lock)
        return cells

    def mine(self, *values: str) -> _Cells:
        """The calling thread's own series of these label values."""
        series: dict[tuple[str, ...], _Cells] | None = getattr(self._local, "series", None)
        if series is None:
            series = self._local.series = {}
            with self._lock:
                alive = []
                for thread, theirs in self._threads:
                    if thread.is_alive():
                        alive.append((thread, theirs))
                        continue
                    for key, cells in theirs.items():  # nobody observes into them any more
                        shared = self._shared.get(key)
                        if shared is None:
                            shared = self._shared[key] = _LockedCells(self._bounds, self._lock)
                        shared.add(cells)
                alive.append((threading.current_thread(), series))
                self._threads = alive
        found = series.get(values)
        if found is None:
            self.labels(*values)  # the series is shown from now on, whatever happens
            with self._lock:  # a scrape copies the dict under the lock
                found = series[values] = _Cells(self._bounds)
        return found

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # both of one moment: a fold moves series whole
            parts = [(key, list(cells.buckets), cells.sum) for key, cells in self._shared.items()]
            parts += [(key, list(cells.buckets), cells.sum) for _, series in self._threads
                      for key, cells in list(series.items())]
        totals: dict[tuple[str, ...], tuple[list[int], float]] = {}
        for key, buckets, total in parts:
            seen = totals.get(key)
            if seen is None:
                totals[key] = (buckets, total)
            else:
                totals[key] = ([a + b for a, b in zip(seen[0], buckets, strict=True)],
                               seen[1] + total)
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [_go_float(b) for b in self._bounds] + ["+Inf"]
        for key, (buckets, total) in totals.items():
            cumulative, running = [], 0
            for bound, count in zip(bounds, buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(list(key), cumulative, total)
        yield family


class Metrics:
    """The metric families of one daemon; tests build one per test with a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No `*_created` series beside each counter and histogram: they would double the
        # series count and nothing reads them (prometheus-client's own switch, process-wide).
        _disable_created()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        #: the threads that must keep running, restarted when they die (their supervisor)
        self.workers = Workers(self)
        self.events_received = Tally(
            "eventd_events_received", "Events received from the stream (and eventd's own), by type",
            ("type",), registry=r)
        self.events_invalid = Counter(
            "eventd_events_invalid", "Frames skipped because they are not usable events, by reason",
            ["reason"], registry=r)
        self.events_duplicate = Tally(
            "eventd_events_duplicate", "Events dropped because their uuid was already processed",
            registry=r)
        self.stream_errors = Counter(
            "eventd_stream_error_messages", "`error` messages received on the stream", registry=r)
        self.stream_connected = Gauge(
            "eventd_stream_connected", "1 while the stream websocket is connected", registry=r)
        self.stream_reconnects = Counter(
            "eventd_stream_reconnects", "Stream connections lost or refused, by reason",
            ["reason"], registry=r)
        self.stream_last_event = Gauge(
            "eventd_stream_last_event_timestamp_seconds",
            "When the last frame arrived (POSIX time)", registry=r)
        self.stream_backfilled = Counter(
            "eventd_stream_backfilled_events", "Action events recovered over REST after a gap",
            registry=r)
        self.stream_backfill_outside_gap = Counter(
            "eventd_stream_backfill_outside_gap",
            "Actions a backfill listing returned from outside the gap, discarded", registry=r)
        self.rule_matches = Tally(
            "eventd_rule_matches", "Events matched, by rule", ("rule",), registry=r)
        self.actions = Tally(
            "eventd_actions", "Action attempts and decisions, by kind and outcome",
            ("kind", "outcome"), registry=r)
        self.action_duration = Spread(
            "eventd_action_duration_seconds", "Time one action attempt took, by kind", ("kind",),
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r)
        self.action_errors = Counter(
            "eventd_action_errors", "Action failures, by kind and reason", ["kind", "reason"],
            registry=r)
        self.dropped = Counter(
            "eventd_dropped", "Work eventd lost on purpose, by action kind and reason",
            ["kind", "reason"], registry=r)
        self.gate_refused = Counter(
            "eventd_gate_refused", "Requests the gate refused, none made (a dead letter each), by "
            "action kind and reason", ["kind", "reason"], registry=r)
        self.audit_chain_repairs = Counter(
            "eventd_audit_chain_repairs", "Audit trails eventd found torn, cut or changed when "
            "it opened them (a line each in the log), by reason", ["reason"], registry=r)
        self.spool_pending = Gauge(
            "eventd_spool_pending", "Accepted actions not yet delivered or dead-lettered", registry=r)
        self.store_up = Gauge(
            "eventd_store_up", "1 while the store answers (0: Redis unreachable)", registry=r)
        self.store_up.set(1)
        self.store_errors = Counter(
            "eventd_store_errors", "Store operations that failed, by operation", ["op"], registry=r)
        self.deadletter = Counter(
            "eventd_deadletter", "Actions moved to dead letters", registry=r)
        self.rules_loaded = Gauge(
            "eventd_rules_loaded", "Rules in the active rule set", registry=r)
        self.rules_reload_success = Gauge(
            "eventd_rules_reload_success", "1 if the last rule (re)load succeeded", registry=r)
        self.rules_reloads = Counter(
            "eventd_rules_reloads", "Rule reloads, by result", ["result"], registry=r)
        self.enrich_failures = Counter(
            "eventd_enrich_failures", "Logs or history an event went on without (the read "
            "failed), by what (logs, history)", ["what"], registry=r)
        self.enrich_seconds = Histogram(
            "eventd_enrich_duration_seconds", "Time reading one event's logs took, by what (logs)",
            ["what"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)
        self.logs_waiting = Gauge(
            "eventd_enrich_logs_waiting", "Events set aside while their containers' logs are "
            "awaited off the engine's thread (kept in the store until their actions are "
            "spooled)", registry=r)
        self.logs_waited = Counter(
            "eventd_enrich_logs_waited", "Events that waited for their containers' logs off "
            "the engine's thread (the events after them went on meanwhile)", registry=r)
        for what in ("logs", "history"):
            self.enrich_failures.labels(what=what)
        self.enrich_seconds.labels(what="logs")
        self.template_errors = Counter(
            "eventd_template_errors", "Templates that failed to render, by rule", ["rule"],
            registry=r)
        self.worker_restarts = Counter(
            "eventd_worker_restarts", "Worker threads that died and were started again, by "
            "worker (engine, dispatch)", ["worker"], registry=r)
        self.internal_errors = Counter(
            "eventd_internal_errors", "Unexpected errors caught so the daemon keeps running, by where",
            ["where"], registry=r)
        self.source_info = Gauge(
            "eventd_source_info", "1 for the source this daemon reads events from", ["source"],
            registry=r)
        self.alerts_active = Gauge(
            "eventd_alerts_active", "Alerts eventd is firing (re-sent until resolved or expired)",
            registry=r)
        self.groups_open = Gauge(
            "eventd_groups_open", "Digest groups collecting events (a grouped webhook)", registry=r)
        self.groups_closed_early = Counter(
            "eventd_groups_closed_early", "Digest groups closed before their time because "
            "more than the cap were open (the oldest goes first)", registry=r)
        self.silences_active = Gauge(
            "eventd_silences_active", "Silences in force now (their matching actions are not run)",
            registry=r)
        self.silences_invalid = Counter(
            "eventd_silences_invalid", "Silence records read from the store that are not usable, "
            "skipped", registry=r)
        self.build_info = Gauge(
            "eventd_build_info", "eventd's version", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.rules_reload_success.set(0)
        self.stream_connected.set(0)
        self.spool_pending.set(0)
        # Children created up front, so dashboards and alerts see 0 rather than no series.
        for kind in ACTION_KINDS:
            self.action_duration.labels(kind=kind)
            for outcome in OUTCOMES:
                self.actions.labels(kind=kind, outcome=outcome)
        for reason in INVALID_REASONS:
            self.events_invalid.labels(reason=reason)
        for reason in RECONNECT_REASONS:
            self.stream_reconnects.labels(reason=reason)
        for event_type in ("stack", "service", "container", "nodecluster", "node", "action", "eventd"):
            self.events_received.declare(event_type)

    def rules_loaded_now(self, names: list[str]) -> None:
        """A rule set took effect: show its size and a zero match count for each rule."""
        self.rules_loaded.set(len(names))
        for name in names:
            self.rule_matches.declare(name)

    def event_type_label(self, event_type: object) -> str:
        """Bound the `type` label to known types."""
        return event_type if isinstance(event_type, str) and event_type in KNOWN_TYPES else "other"

    def count_received(self, event_type: object) -> None:
        """Count one received event (off the engine's path: locked)."""
        self.events_received.add((self.event_type_label(event_type),))
