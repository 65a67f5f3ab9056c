"""The rule engine: one event in, accepted actions out.

It de-duplicates, marks events eventd caused itself, matches rules, enriches, applies
`when`, throttles, renders actions and hands jobs to a submit function (the dispatcher, or
a printer in `replay --dry-run`). It runs on one thread; the rule set is swapped between
two events, never in the middle of one.

With the Engine's source (`park_logs`), an event whose rules read its container's logs, or
inspect it (`enrich: resource`) while that inspect is still under way, does not hold that
thread while the answer comes (a follower's stream ending after the die, or a read or inspect
at die, which the Engine answers only once it has cleaned up after the container): it is kept
in the store, set aside, and processed once its logs and resource are in, while the events
after it go on. Events of one object stay in order (a later
one waits behind one set aside); jobs of other objects' events may be spooled, and so
delivered, before the jobs of one that waits for its logs. A crash while it waits loses
nothing: the next start processes what the store still holds, the logs read (and the object
inspected) then.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence, Sized
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from eventd.attachments import LOGS_BUDGET, LOGS_BUDGET_AWAY, Attacher
from eventd.dedupe import DedupeWindow
from eventd.errors import TemplateError
from eventd.events import (
    Batch,
    Event,
    Received,
    cached_object_ref,
    object_ref,
    parse_datetime,
)
from eventd.hooks import Processed, hooks
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import KNOWN_TYPES, MATCH_KEYS, Metrics, rule_labels
from eventd.records import ActionJob
from eventd.ruleset.enrichment import LogsSpec
from eventd.ruleset.model import ActionSpec, Rule
from eventd.ruleset.templates import build_context

log = logging.getLogger(__name__)

#: An event older than this (by its `datetime`) is audited but triggers no REST action.
DEFAULT_MAX_EVENT_AGE = 900.0
#: events held at once while their containers' logs are awaited off the engine's thread;
#: past that the engine waits for the oldest (backpressure, as a full queue is)
MAX_PARKED = 256
#: the matched answers whose quiet verdict the engine keeps (the index's kept tuples: a
#: few hundred distinct sets of rules at most in practice)
QUIET_KEYS = 4096


class Rules(Protocol):
    """The active rule set: the rules an event matches, in order."""

    def match(self, event: Event) -> list[Rule]: ...
    def matched(self, event: Event) -> Sequence[Rule]: ...  # as match(), maybe shared: read only
    def matched_each(self, events: Sequence[Event]) -> list[Sequence[Rule]]: ...  # each's matched()
    def __len__(self) -> int: ...


class Enricher(Protocol):
    """Reads the object an event is about (`enrich: resource`). One whose inspects can be
    under way before the engine asks (the Engine's: started by the reader) also has
    `resource_started(event)`: that inspect's future, or None (see `park_logs`)."""

    def resource(self, event: Event) -> Any: ...


class SelfCausedCheck(Protocol):
    """Tells whether an event concerns an object eventd itself acted on (the loop guard), and
    is told of each object an accepted action will act on."""

    def is_self_caused(self, event: Event) -> bool: ...
    def record(self, target_uri: str) -> None: ...
    def marks(self) -> Sized:
        """Empty while nothing is marked: then no event is self-caused (asked per batch)."""
        ...


class ActionObserver(Protocol):
    """Sees every `action` event of the stream (to follow REST actions to their end)."""

    def observe(self, event: Event) -> None: ...


class KindTraits(Protocol):
    """What the engine reads of an action kind: its capabilities and its target."""

    @property
    def per_event(self) -> bool: ...
    @property
    def acts_on_objects(self) -> bool: ...
    def inactive(self, options: dict[str, Any]) -> bool: ...
    def target(self, options: dict[str, Any]) -> str: ...


class GroupSink(Protocol):
    """Collects the events of grouped actions into digests (eventd.alerts.groups.Grouper)."""

    def add(self, rule: str, index: int, kind: str, by: str, group: Mapping[str, Any],
            event: dict[str, Any], now: float, resource: Any = None) -> int: ...


class Muter(Protocol):
    """Says whether a silence mutes one action (eventd.silences' book): the silence, or None.

    `watch` is empty while no silence is pending or active: then `muted` is not asked."""

    watch: tuple[Any, ...]

    def muted(self, rule: str, kind: str, event: Mapping[str, Any],
              options: Mapping[str, Any]) -> Any: ...


class ParkedJournal(Protocol):
    """Where events waiting for logs are kept until their actions are spooled
    (eventd.stores.base.ParkedEvents)."""

    def parked_add(self, items: list[tuple[str, dict[str, Any]]]) -> None: ...
    def parked_done(self, keys: list[str]) -> None: ...
    def parked_list(self) -> list[tuple[str, dict[str, Any]]]: ...


@dataclass
class _Parked:
    """One event whose rules wait for its container's logs or resource (and every later event
    of the same object, behind it): processed once each wait is done, in order per object.
    `waits` holds a future per logs spec, and the resource's under the key _RESOURCE."""

    key: str  # its journal key
    obj: str  # the object it is about (its resource URI)
    received: Received
    event: Event
    matched: Sequence[Rule]
    quiet: frozenset[Rule] | None
    waits: dict[Any, Future[Any]]

    def ready(self) -> bool:
        return all(future.done() for future in self.waits.values())

    def wake_when_ready(self, wake: Callable[[], object]) -> None:
        """Call `wake` once every wait is done (by the last to end; maybe twice)."""
        def done(_: Future[Any]) -> None:
            if self.ready():
                wake()

        for future in self.waits.values():
            future.add_done_callback(done)


class EngineStore(Protocol):
    """What the engine needs of the store: throttle windows (the de-dup window is its own)."""

    def throttle_acquire(self, key: str, window: float, now: float) -> bool: ...


@dataclass
class Decision:
    """What happened to one action of one matched rule (for the audit record and dry runs)."""

    rule: str
    kind: str
    status: str  # accepted | throttled | skipped | failed | grouped | shadow | silenced
    options: dict[str, Any] | None = None
    reason: str = ""
    job: str = ""  # the accepted job's id (what its delivery is reported by)


@dataclass
class Outcome:
    """Everything the engine decided for one event."""

    event: Event
    rules: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    duplicate: bool = False


def job_id(rule: str, event: Event, index: int) -> str:
    """Stable per (rule, event, action): the Idempotency-Key a receiver can drop repeats by."""
    basis = f"{rule}\0{event.get('uuid', '')}\0{event.get('resource_uri', '')}\0{index}"
    return hashlib.blake2b(basis.encode(), digest_size=16).hexdigest()


class Engine:
    """Turns events into accepted action jobs according to the active rule set."""

    def __init__(self, rules: Rules, submit: Callable[[ActionJob], object],
                 kinds: Mapping[str, KindTraits], store: EngineStore, metrics: Metrics, *,
                 enricher: Enricher | None = None, loop_guard: SelfCausedCheck | None = None,
                 action_waiter: ActionObserver | None = None,
                 max_event_age: float = DEFAULT_MAX_EVENT_AGE, action_window: int = 10_000,
                 clock: Callable[[], float] = time.time,
                 submit_many: Callable[[list[ActionJob]], object] | None = None,
                 dedupe: DedupeWindow | None = None, grouper: GroupSink | None = None,
                 silences: Muter | None = None, attacher: Attacher | None = None) -> None:
        self.rules = rules
        self._submit = submit
        self._submit_many: Callable[[list[ActionJob]], object] = submit_many or (
            lambda jobs: [submit(job) for job in jobs])
        self._held: list[ActionJob] | None = None  # per-event jobs of the batch in progress
        self._kinds = kinds
        #: kinds that change objects: not run on self-caused or too old events
        self._object_kinds = frozenset(name for name, kind in kinds.items()
                                       if kind.acts_on_objects)
        self._store = store
        self._metrics = metrics
        self._enricher = enricher
        self._attacher = attacher
        self._loop_guard = loop_guard
        self._action_waiter = action_waiter
        self._max_event_age = max_event_age
        self._clock = clock
        self._grouper = grouper
        self._silences = silences
        self._action_states: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._action_window = action_window
        self._backfilled = 0  # the window's backfilled sightings (0: no stream action repeats)
        #: a batch's (action uuid, state) to the waiter at once; a waiter that can not take
        #: them so is shown each action event where it comes (and no action is deferred)
        self._observe_states: Callable[[list[tuple[str, str]]], object] | None = getattr(
            action_waiter, "observe_states", None)
        self._defer_actions = action_waiter is None or self._observe_states is not None
        self._action_children: dict[tuple[str, str], Any] = {}
        self.dedupe = dedupe if dedupe is not None else DedupeWindow()
        self._check_and_add = self.dedupe.check_and_add
        # Counted in plain Counters of this thread, summed by /metrics (eventd.ops.metrics.Tally):
        # received by type (a known type, or "other"), duplicates, matches by rule name.
        self._received = metrics.events_received.counts(_type_label)
        self._duplicates = metrics.events_duplicate.counts()
        self._matches = metrics.rule_matches.counts(rule_labels)
        self._quiet_plan: _QuietPlan | None = None
        #: by a matched answer: its count's key when all its rules are quiet, else None
        #: (for the quiet rules `_quiet_keys_of`; at most QUIET_KEYS answers)
        self._quiet_keys: dict[Sequence[Rule], Hashable | None] = {}
        self._quiet_keys_of: frozenset[Rule] | None = None
        self.processed = 0
        # Waiting for logs off this thread (park_logs): the events held, oldest first, how
        # many each object has held, the new ones still to journal, the done ones to forget.
        self._journal: ParkedJournal | None = None
        self._wake: Callable[[], object] | None = None
        self._parked: deque[_Parked] = deque()
        self._parked_objects: Counter[str] = Counter()
        self._to_journal: list[_Parked] = []
        self._unjournal: list[str] = []
        self._park_ids = itertools.count()
        self._park_prefix = f"{time.time_ns():x}"
        #: a rule set, its rules that read logs, and those that wait (logs, or an inspect
        #: under way: with an enricher that starts them early)
        self._logs_rules: tuple[Any, frozenset[Rule], frozenset[Rule]] = (
            None, frozenset(), frozenset())
        self._resource_started: Callable[[Event], Future[Any] | None] | None = None
        self.parked_total = 0  # events that waited for logs off this thread (tests, metrics)

    # -- the rule set ----------------------------------------------------------------
    def swap_rules(self, rules: Rules) -> None:
        """Replace the rule set; takes effect at the next event (the engine reads it once each)."""
        self.rules = rules

    # -- processing ------------------------------------------------------------------
    def process_batch(self, batch: Sequence[Received]) -> None:
        """Process a batch in order; one bad event never stops the rest.

        Per-event jobs (audit lines) of the whole batch are handed over together at the end.
        A matched rule whose every action would do nothing now (a log line below the level)
        is only counted, without an Outcome, when every rule the event matched is such a rule.
        """
        self._held = []
        known: frozenset[Rule] | None  # the quiet rules, for _run_rules (None: ask each rule)
        try:
            quiet = known = self._quiet_rules()
        except Exception as exc:  # noqa: BLE001 - an action kind's inactive() failed: no shortcut
            report_internal_error("engine", exc, self._metrics)
            quiet, known = _NO_RULES, None
        # The events, and which are internal (None: none is): a Batch carries them as lists
        internal: list[bool] | None
        types: Mapping[Any, int] | None = None  # counted by the source, when it did
        if type(batch) is Batch:
            events, types = batch.events, batch.types
            internal = [True] * len(events) if batch.internal else None
        else:
            events = list(map(_EVENT, batch))
            internal = list(map(_INTERNAL, batch))
        self._count_received(events, types)
        if quiet is not self._quiet_keys_of:  # other quiet rules: every verdict afresh
            self._quiet_keys, self._quiet_keys_of = {}, quiet
        quiet_keys = self._quiet_keys
        matches = self._matches
        counted = matches.get  # the engine's own Counter: folded only at a batch's end
        waiter, guard = self._action_waiter, self._loop_guard
        # The marks are live (the engine's own record() adds to them in the middle of a
        # batch): asked for each event, but only while there is one.
        marks, self_caused = (guard.marks(), guard.is_self_caused) if guard is not None \
            else ((), _never)
        rules = self.rules  # read once: a reload takes effect at the next batch
        match = rules.matched
        repeated = self.dedupe.repeated(batch) or _NONE  # by uuid, the whole batch at once
        # Every event's rules in one call (a call per event cost ~20% of the rest); if one
        # raises, each event is asked alone in its turn, so that one is reported as before.
        answers: list[Sequence[Rule]] | _AskEach
        try:
            answers = rules.matched_each(events)
        except Exception:  # noqa: BLE001 - reported at the event, by its own match below
            answers = _AskEach(events, match)
        parking = self._journal is not None and self._attacher is not None
        duplicates = len(repeated)
        # the console's Live page listens (on by default with the metrics port); read once.
        # Its events are handed over once, at the batch's end (a hook call per event cost
        # more than the ring's append): (event, rules, decisions), the rules as matched.
        shown: list[Processed] | None = [] if hooks.processing else None
        show = shown.append if shown is not None else None
        # A stream's action is a duplicate only of a backfilled sighting: while the window
        # holds none, its actions are not asked one by one but noted (and shown to the waiter)
        # together at the batch's end, in order (see _settle_actions).
        pending: list[Event] = []
        defer = pending if internal is None and self._defer_actions and not self._backfilled \
            else None
        try:
            # process(), written out: a Python call per event costs as much as half of this
            for index, event in enumerate(events):
                if repeated and index in repeated:
                    continue
                try:
                    try:  # a subscript, not a call of get() (its cost, for every event)
                        kind = event["type"]
                    except (KeyError, TypeError):  # no type; not a dict: as get() is
                        kind = event.get("type")
                    if kind == "action":
                        if defer is not None and "backfilled" not in event \
                                and type(event.get("state")) is str:
                            defer.append(event)
                        else:
                            if pending:  # the window and the waiter as of this event
                                self._settle_actions(pending)
                            if self._action_duplicate(event):
                                duplicates += 1
                                continue
                            if waiter is not None and (internal is None or not internal[index]):
                                waiter.observe(event)
                            if self._backfilled:
                                defer = None
                    if marks and self_caused(event):
                        event["caused_by_eventd"] = True
                        matched = match(event)  # as marked: a rule may read the mark
                    else:
                        matched = answers[index]
                    if not matched:
                        if show is not None:
                            show((event, (), ()))
                        continue
                    try:  # the index hands out the same tuples: their verdict kept
                        key = quiet_keys[matched]
                    except KeyError:
                        key = self._quiet_key(matched, quiet, quiet_keys)
                    except TypeError:  # a list (a scan's answer): asked each time
                        key = _count_key(matched, quiet)
                    if key is not None:  # every action of each does nothing now
                        # one count for them all; get(), as a Counter's subscript goes
                        # through CPython's generic slot (a lookup and a wrapper call)
                        matches[key] = counted(key, 0) + 1
                        if show is not None:
                            show((event, matched, ()))
                        continue
                    if parking:  # the logs of the Engine's containers: awaited off this thread
                        attached = self._park(batch[index], event, matched, known)
                        if attached is _PARKED:
                            continue
                        outcome = self._run_rules(batch[index], event, matched, known, attached)
                    else:
                        outcome = self._run_rules(batch[index], event, matched, known)
                    if show is not None:
                        show((event, outcome.rules, outcome.decisions))
                except Exception as exc:  # noqa: BLE001 - the one place the engine keeps running
                    report_internal_error("engine", exc, self._metrics)
            if self._parked:
                self._resume_ready(show)
        finally:
            if pending:
                self._settle_actions(pending)
            if shown:
                hooks.on_processed_batch(shown)
            if duplicates:
                self._duplicates[()] += duplicates
            if len(self._matches) > MATCH_KEYS:  # many distinct sets of matched rules
                self._matches = self._metrics.rule_matches.fold(self._matches, rule_labels)
            self.processed += len(batch) - duplicates
            held, self._held = self._held, None
            if held:
                self._submit_many(held)
            if self._to_journal or self._unjournal:
                self._write_journal()

    def process(self, received: Received) -> Outcome | None:
        """Process one event; returns what was decided (None for a duplicate or no match)."""
        event = received.event
        kind = event.get("type")
        self._count_received((event,))
        if self._is_duplicate(received, event, kind):
            self._duplicates[()] += 1
            return None
        if kind == "action" and self._action_waiter is not None and not received.internal:
            self._action_waiter.observe(event)
        if self._loop_guard is not None and self._loop_guard.is_self_caused(event):
            event["caused_by_eventd"] = True
        self.processed += 1
        rules = self.rules  # read once: a reload never lands in the middle of an event
        matched = rules.matched(event)
        if not matched:
            if hooks.processing:  # the console's Live page listens; nobody else, usually
                hooks.on_processed(event, (), ())
            return None
        outcome = self._run_rules(received, event, matched)
        if hooks.processing:
            hooks.on_processed(event, outcome.rules, outcome.decisions)
        return outcome

    def _count_received(self, events: Sequence[Event],
                        kinds: Mapping[Any, int] | None = None) -> None:
        """Count events by type (a known type, or "other"), a whole batch in one C call;
        `kinds`: the batch's events already counted by type (a stream's read)."""
        counts = self._received
        if kinds is None:
            try:
                # counted apart first: a TypeError (a type that is not hashable) counts nothing
                kinds = Counter(map(_TYPE, events))
            except (KeyError, TypeError):  # an event without a type, or not a string: one by one
                kinds = Counter([kind if type(kind) is str else "other"
                                 for kind in (e.get("type") if isinstance(e, dict) else None
                                              for e in events)])
        counts.update(kinds)
        if len(counts) > len(KNOWN_TYPES) + 1:  # types nobody documented: keep memory flat
            self._received = self._metrics.events_received.fold(counts, _type_label)

    @staticmethod
    def _quiet_key(matched: Sequence[Rule], quiet: frozenset[Rule],
                   keys: dict[Sequence[Rule], Hashable | None]) -> Hashable | None:
        """_count_key of an answer not seen yet under these quiet rules, kept while there
        is room."""
        key = _count_key(matched, quiet)
        if len(keys) < QUIET_KEYS:
            keys[matched] = key
        return key

    def _quiet_rules(self) -> frozenset[Rule]:
        """The active rules whose every action does nothing now (asked once per batch)."""
        rules = self.rules
        plan = self._quiet_plan
        if plan is None or plan.rules is not rules:
            plan = self._quiet_plan = _QuietPlan(rules, self._kinds, self._object_kinds)
        return plan.quiet(self._kinds)

    def _is_duplicate(self, received: Received, event: Event, kind: object) -> bool:
        """By uuid over a bounded window; backfilled actions by (action uuid, state)."""
        if not received.internal:
            uid = event.get("uuid")
            if type(uid) is str and uid and self._check_and_add(uid):
                return True
        return kind == "action" and self._action_duplicate(event)

    def _action_duplicate(self, event: Event) -> bool:
        """An action's (uuid, state) seen before, when either sighting was backfilled."""
        ref = object_ref(event.get("resource_uri"))
        if ref is None:
            return False
        state = event.get("state", "")
        # a quarter of the stream's events are actions: no call where a test does (str(),
        # bool()), the uuid by index (a NamedTuple's field by name is a descriptor call)
        key = (ref[1], state if type(state) is str else str(state))
        backfilled = True if event.get("backfilled") else False
        seen_backfilled = self._action_states.get(key)
        if seen_backfilled is not None and (backfilled or seen_backfilled):
            return True
        if seen_backfilled is None:
            self._action_states[key] = backfilled
            self._backfilled += backfilled
            if len(self._action_states) > self._action_window:
                self._backfilled -= self._action_states.popitem(last=False)[1]
        return False

    def _settle_actions(self, events: list[Event]) -> None:
        """Note a stream's actions in the window and show them to the waiter, in order, and
        empty `events`: what _action_duplicate and observe() would have done one by one.

        Only for events that are no duplicate: no `backfilled` key, a string `state`, while the
        window holds no backfilled sighting (all its values False: only a new key changes it).
        Written out (a call per action cost as much as the rest): the URI's ref from the
        cache, object_ref on a miss."""
        try:
            states, window, cached = self._action_states, self._action_window, cached_object_ref
            seen: list[tuple[str, str]] = []  # (action uuid, state), in order
            note = seen.append
            for event in events:
                uri = event.get("resource_uri")
                try:
                    ref = cached(uri, _UNSET)
                except TypeError:  # not hashable: not a string either
                    continue
                if ref is _UNSET:  # not seen lately, not a string, or too long
                    ref = object_ref(uri)
                if ref is None:
                    continue
                key = (ref[1], event["state"])
                note(key)
                if key not in states:
                    states[key] = False
                    if len(states) > window:
                        self._backfilled -= states.popitem(last=False)[1]
            if self._observe_states is not None and seen:
                self._observe_states(seen)
        except Exception as exc:  # noqa: BLE001 - as in the batch's loop: reported, not fatal
            report_internal_error("engine", exc, self._metrics)
        finally:
            events.clear()

    def _run_rules(self, received: Received, event: Event, matched: Sequence[Rule],
                   quiet: frozenset[Rule] | None = None,
                   attached: dict[Any, Any] | None = None) -> Outcome:
        """`quiet`: the batch's rules whose every action does nothing now (None: ask each);
        `attached`: the logs read already (by spec), as `_attach` keeps them."""
        now = self._clock()
        outcome = Outcome(event=event)
        per_event: dict[tuple[str, str], ActionJob] = {}
        resource: Any = _UNSET
        self_caused = bool(event.get("caused_by_eventd"))
        object_kinds = self._object_kinds
        base: dict[str, Any] | None = None  # the template context, built once per event
        if attached is None:
            attached = {}  # logs and history, read once per event (per spec)
        for rule in matched:
            if self_caused and not rule.allow_self_caused \
                    and not object_kinds.isdisjoint(rule.kinds):
                self._decide_all(outcome, rule, "skipped", "caused by eventd's own REST action")
                continue
            # The batch's quiet set holds every quiet rule without an action on objects; the
            # others (and a lone process()) are asked one by one.
            if (quiet is not None and rule in quiet) or (
                    rule.when is None and rule.throttle is None
                    and (quiet is None or not object_kinds.isdisjoint(rule.kinds))
                    and self._quiet(rule)):
                # Every action would do nothing (log lines below the level): no context,
                # no rendering, only the match is counted.
                self._matches[rule.name] += 1
                outcome.rules.append(rule.name)
                for spec in rule.actions:
                    outcome.decisions.append(Decision(rule.name, spec.kind, "skipped", None,
                                                      "inactive"))
                continue
            if rule.enrich and resource is _UNSET:
                resource = attached.pop(_RESOURCE, _UNSET)  # awaited off this thread
                if resource is _UNSET:
                    resource = self._enrich(event)
                if base is not None:
                    base["resource"] = resource
            context: dict[str, Any] | None = None
            throttle_key = None
            if not rule.plain:  # a plain rule's options are constant: no template context
                if base is None:
                    base = build_context(event, "", now, None if resource is _UNSET else resource)
                context = base.copy()
                context["rule"] = rule.name
                if rule.enrichment is not None and self._attacher is not None:
                    attached = self._attach(event, rule, now, attached)
                    context.update(attached.get(rule.name, {}))
                try:
                    if rule.when is not None and not rule.when_holds(context):
                        continue
                    throttle_key = rule.throttle_key(context) if rule.throttle is not None \
                        else None
                except TemplateError as exc:
                    self._template_failed(outcome, rule, None, exc)
                    continue
            self._matches[rule.name] += 1
            outcome.rules.append(rule.name)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("rule %s matched event %s (%s %s)", rule.name, event.get("uuid", "?"),
                          event.get("type"), event.get("state"))
            if throttle_key is not None and rule.throttle is not None \
                    and not self._store.throttle_acquire(
                        f"{rule.name}\0{throttle_key}", rule.throttle.window, now):
                self._decide_all(outcome, rule, "throttled", f"throttled (key {throttle_key!r})")
                continue
            if rule.mode == "shadow":
                assert context is not None  # a shadow rule is never plain
                self._shadow(outcome, rule, context)
                continue
            for spec in rule.actions:
                self._accept(outcome, per_event, received, rule, spec, context, now)
        for job in per_event.values():
            job.context["rules"] = list(outcome.rules)
            job.context["actions"] = [
                {"rule": d.rule, "kind": d.kind, "status": d.status} for d in outcome.decisions]
            job.context["received_at"] = received.received_at
            if self._held is not None:
                self._held.append(job)
            else:
                self._submit(job)
        return outcome

    def _accept(self, outcome: Outcome, per_event: dict[tuple[str, str], ActionJob],
                received: Received, rule: Rule, spec: ActionSpec,
                context: dict[str, Any] | None, now: float) -> None:
        """`context` is None for a plain rule (its options are constant, it has no group)."""
        if spec.kind in self._object_kinds and self._too_old(received.event,
                                                              received.received_at):
            reason = f"event older than max_event_age ({self._max_event_age:.0f} s)"
            self._decide(outcome, rule.name, spec.kind, "skipped", reason)
            log.info("rule %s: %s skipped for event %s: %s", rule.name, spec.kind,
                     received.event.get("uuid", "?"), reason)
            return
        kind = self._kinds.get(spec.kind)
        if kind is None:
            self._decide(outcome, rule.name, spec.kind, "failed", "action kind not available")
            return
        if kind.inactive(spec.options):
            outcome.decisions.append(Decision(rule.name, spec.kind, "skipped", None, "inactive"))
            return
        if spec.group is not None:
            assert context is not None  # a grouped action is never constant
            silences = self._silences
            if silences is None or not silences.watch \
                    or not self._silenced(outcome, rule, spec, spec.options):
                self._group(outcome, rule, spec, context, received.event, now)
            return
        try:
            options = spec.render(context if context is not None else _NO_CONTEXT)
        except TemplateError as exc:
            self._template_failed(outcome, rule, spec, exc)
            return
        silences = self._silences
        if silences is not None and silences.watch and self._silenced(outcome, rule, spec, options):
            return
        target = kind.target(options)
        if kind.per_event:
            key = (spec.kind, target)
            if key not in per_event:
                per_event[key] = ActionJob(
                    id=job_id("\0".join(outcome.rules), received.event, spec.index), rule=rule.name,
                    kind=spec.kind, options=options, event=received.event, target=target,
                    created_at=now)
            self._decide(outcome, rule.name, spec.kind, "accepted", options=options,
                         job=per_event[key].id)
            return
        job = ActionJob(id=job_id(rule.name, received.event, spec.index), rule=rule.name,
                        kind=spec.kind, options=options, event=received.event, target=target,
                        created_at=now)
        if context is not None and getattr(kind, "incident", False):  # plain: no enrichment
            _attach_to(job, context)
        self._decide(outcome, rule.name, spec.kind, "accepted", options=options, job=job.id)
        if self._loop_guard is not None and spec.kind in self._object_kinds:
            # Known at once, before any replica delivers it: the object's next events may
            # arrive before the call is made (a kind acting on objects names one in `target`,
            # or a raw call in `path`).
            self._loop_guard.record(str(options.get("target") or options.get("path") or ""))
        if self._held is not None and hasattr(kind, "send_batch"):
            self._held.append(job)  # a kind that writes batches: the batch's jobs spooled at once
        else:
            self._submit(job)

    def _silenced(self, outcome: Outcome, rule: Rule, spec: ActionSpec,
                  options: dict[str, Any]) -> bool:
        """True (decided and counted) when a silence mutes this action: it is not run."""
        assert self._silences is not None
        silence = self._silences.muted(rule.name, spec.kind, outcome.event, options)
        if silence is None:
            return False
        self._decide(outcome, rule.name, spec.kind, "silenced", f"silence {silence.id}",
                     options=options)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rule %s: %s silenced for event %s by silence %s", rule.name, spec.kind,
                      outcome.event.get("uuid", "?"), silence.id)
        return True

    def _group(self, outcome: Outcome, rule: Rule, spec: ActionSpec, context: dict[str, Any],
               event: Event, now: float) -> None:
        """A grouped action: the event joins its digest; options are rendered when it closes."""
        assert spec.group is not None
        try:
            by = spec.group.render_key(context)
        except TemplateError as exc:
            self._template_failed(outcome, rule, spec, exc)
            return
        if self._grouper is not None:
            self._grouper.add(rule.name, spec.index, spec.kind, by, spec.options["group"], event,
                              now, context.get("resource"))
        self._decide(outcome, rule.name, spec.kind, "grouped", f"group {by!r}")

    def _shadow(self, outcome: Outcome, rule: Rule, context: dict[str, Any]) -> None:
        """A `mode: shadow` rule: render and report each action as it would run, run none."""
        for spec in rule.actions:
            try:
                options = {"group": spec.group.render_key(context)} if spec.group is not None \
                    else spec.render(context)
            except TemplateError as exc:
                self._template_failed(outcome, rule, spec, exc)
                continue
            self._decide(outcome, rule.name, spec.kind, "shadow", "mode: shadow", options=options)
            log.info("rule %s (shadow) would run %s %s for event %s", rule.name, spec.kind,
                     _brief(options), outcome.event.get("uuid", "?"))

    # -- waiting for logs off this thread ---------------------------------------------
    def park_logs(self, journal: ParkedJournal, wake: Callable[[], object]) -> None:
        """Wait for containers' logs (`enrich: logs`) off this thread, and for inspects under
        way (`enrich: resource`, with an enricher that starts them early: `resource_started`):
        an event whose logs or resource are not in yet is kept in `journal` and set aside,
        the events after it go on, and it is processed (its `when`, throttle, actions) once
        they are in, from `resume_parked()`, which `wake` makes the engine's thread call.
        Events of one object stay in order: a later event of an object that has one set aside
        waits behind it. Call before events come (and `recover_parked()` first)."""
        self._journal = journal
        self._wake = wake
        self._resource_started = getattr(self._enricher, "resource_started", None)

    def _logs_rules_of(self, rules: Rules) -> frozenset[Rule]:
        """The rules of this rule set that read logs into their context."""
        return self._waiting_rules(rules)[0]

    def _waiting_rules(self, rules: Rules) -> tuple[frozenset[Rule], frozenset[Rule]]:
        """The rules of this rule set that read logs into their context, and those that may
        wait off this thread (those, and the ones that inspect when inspects start early)."""
        seen, found, waiting = self._logs_rules
        if seen is not rules:
            every = getattr(rules, "rules", ())
            found = frozenset(rule for rule in every
                              if rule.enrichment is not None and rule.enrichment.logs is not None
                              and not rule.plain)
            waiting = found | frozenset(rule for rule in every if rule.enrich) \
                if self._resource_started is not None else found
            self._logs_rules = (rules, found, waiting)
        return found, waiting

    def _inspect_under_way(self, event: Event, matched: Sequence[Rule],
                           quiet: frozenset[Rule] | None) -> Future[Any] | None:
        """The inspect a matched rule with `enrich: resource` (not quiet) will wait for, while
        it is under way; None when none will (or it is done: `resource` answers at once)."""
        started = self._resource_started
        if started is None or not any(rule.enrich and (quiet is None or rule not in quiet)
                                      for rule in matched):
            return None
        try:
            future = started(event)
        except Exception as exc:  # noqa: BLE001 - then the engine thread inspects, as before
            report_internal_error("enrich", exc, self._metrics)
            return None
        return None if future is None or future.done() else future

    def _logs_specs(self, matched: Sequence[Rule],
                    quiet: frozenset[Rule] | None) -> list[LogsSpec]:
        """The log caps the matched rules read (each once; none for a quiet rule)."""
        logs_rules = self._logs_rules_of(self.rules)
        specs: list[LogsSpec] = []
        for rule in matched:
            if rule in logs_rules and (quiet is None or rule not in quiet) \
                    and rule.enrichment is not None and rule.enrichment.logs is not None \
                    and rule.enrichment.logs not in specs:
                specs.append(rule.enrichment.logs)
        return specs

    def _park(self, received: Received, event: Event, matched: Sequence[Rule],
              quiet: frozenset[Rule] | None) -> Any:
        """Set the event aside if it waits for logs or an inspect under way (or its object has
        an event set aside): _PARKED; else the logs read already (for `_run_rules`), or
        None."""
        waiting = self._waiting_rules(self.rules)[1]
        parked = self._parked_objects
        if not parked and waiting.isdisjoint(matched):
            return None
        obj = _object_of(event)
        specs = self._logs_specs(matched, quiet)
        inspect = self._inspect_under_way(event, matched, quiet)
        if not specs and inspect is None and obj not in parked:
            return None
        assert self._attacher is not None
        waits: dict[Any, Future[Any]] = {
            spec: self._attacher.logs_started(event, spec) for spec in specs}
        if inspect is not None:
            waits[_RESOURCE] = inspect
        if obj not in parked and all(future.done() for future in waits.values()):
            return _attached(waits)
        while len(self._parked) >= MAX_PARKED:  # bounded: wait for the oldest
            head = self._parked[0]
            wait_futures(list(head.waits.values()), timeout=LOGS_BUDGET_AWAY * 2)
            if not self._resume_ready(None):
                break
        entry = _Parked(f"{self._park_prefix}-{next(self._park_ids)}", obj, received, event,
                        matched, quiet, waits)
        self._parked.append(entry)
        parked[obj] += 1
        self._to_journal.append(entry)
        self.parked_total += 1
        self._metrics.logs_waited.inc()
        self._metrics.logs_waiting.inc()
        wake = self._wake
        if wake is not None and waits:
            entry.wake_when_ready(wake)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event %s waits for %s off the engine thread (%d waiting)",
                      event.get("uuid", "?"),
                      " and ".join(["logs"] * bool(specs) + ["resource"] * (inspect is not None)
                                   ) or "the one before it", len(self._parked))
        return _PARKED

    def _resume_ready(self, show: Callable[[Processed], object] | None) -> int:
        """Process the events set aside whose logs are in (each after the earlier ones of its
        object); how many."""
        blocked: set[str] = set()
        kept: deque[_Parked] = deque()
        shown: list[Processed] = []
        resumed = 0
        for entry in self._parked:
            if entry.obj in blocked or not entry.ready():
                blocked.add(entry.obj)
                kept.append(entry)
                continue
            resumed += 1
            self._metrics.logs_waiting.dec()
            self._parked_objects[entry.obj] -= 1
            if not self._parked_objects[entry.obj]:
                del self._parked_objects[entry.obj]
            self._unjournal.append(entry.key)
            try:
                attached = _attached(entry.waits)
                outcome = self._run_rules(entry.received, entry.event, entry.matched,
                                          entry.quiet, attached)
                if show is not None:
                    show((entry.event, outcome.rules, outcome.decisions))
                elif hooks.processing:
                    shown.append((entry.event, outcome.rules, outcome.decisions))
            except Exception as exc:  # noqa: BLE001 - as in the batch's loop
                report_internal_error("engine", exc, self._metrics)
        self._parked = kept
        if shown:
            hooks.on_processed_batch(shown)
        return resumed

    @property
    def waiting(self) -> int:
        """Events set aside now, waiting for their logs."""
        return len(self._parked)

    def resume_parked(self) -> None:
        """Process the events set aside whose logs are in now (the engine's thread, woken)."""
        if self._parked or self._to_journal or self._unjournal:
            self.process_batch(_NO_EVENTS)

    def settle_parked(self, timeout: float) -> int:
        """At shutdown: wait up to `timeout` for the logs still awaited and process those
        events; how many stay set aside (kept in the journal for the next start)."""
        deadline = time.monotonic() + timeout
        while self._parked and time.monotonic() < deadline:
            waits = [f for entry in self._parked for f in entry.waits.values() if not f.done()]
            if waits:
                wait_futures(waits, timeout=max(0.0, deadline - time.monotonic()))
            before = len(self._parked)
            self.process_batch(_NO_EVENTS)
            if len(self._parked) == before and not waits:
                break
        if self._to_journal or self._unjournal:
            self._write_journal()
        return len(self._parked)

    def recover_parked(self) -> int:
        """At start: process the events a crash left set aside, oldest first, with the rules
        in force now and the logs read now (what the Engine still holds; none, and one
        warning, for a container removed since); how many. Their logs are asked all at once
        (MAX_PARKED events at a time, on the attacher's waiting threads), then each event is
        processed in order with its own."""
        journal = self._journal
        if journal is None:
            return 0
        items = journal.parked_list()
        for first in range(0, len(items), MAX_PARKED):
            chunk = items[first:first + MAX_PARKED]
            started = [self._recovering(record) for _, record in chunk]
            wait_futures([future for begun in started if begun is not None
                          for future in begun[3].values()], timeout=LOGS_BUDGET_AWAY * 2)
            for (key, _), begun in zip(chunk, started, strict=True):
                if begun is not None:
                    received, event, matched, waits = begun
                    attached = {("logs", spec): future.result() if future.done() else []
                                for spec, future in waits.items()}
                    self._held = []
                    try:
                        self._run_rules(received, event, matched, None, attached)
                    except Exception as exc:  # noqa: BLE001 - one bad record never stops the rest
                        report_internal_error("engine", exc, self._metrics)
                    finally:
                        held, self._held = self._held, None
                        if held:
                            self._submit_many(held)
                journal.parked_done([key])
        if items:
            log.info("%d event(s) left waiting for logs by the last run processed", len(items))
        return len(items)

    def _recovering(self, record: dict[str, Any]) -> tuple[
            Received, Event, Sequence[Rule], dict[LogsSpec, Future[list[str]]]] | None:
        """A kept event to process again, its logs asked already; None when no rule matches
        it now (or the record is not one)."""
        event = record.get("event")
        at = record.get("received_at")
        try:
            if not isinstance(event, dict):
                return None
            received = Received(event, float(at) if isinstance(at, (int, float))
                                else self._clock())
            matched = self.rules.matched(event)
            if not matched:
                return None
            attacher = self._attacher
            waits = {spec: attacher.logs_started(event, spec)
                     for spec in self._logs_specs(matched, None)} if attacher is not None else {}
        except Exception as exc:  # noqa: BLE001 - one bad record never stops the rest
            report_internal_error("engine", exc, self._metrics)
            return None
        return received, event, matched, waits

    def _write_journal(self) -> None:
        """Keep this batch's new events set aside, forget those processed (their actions are
        spooled by now). One set aside and processed in the same batch is neither."""
        assert self._journal is not None
        new, self._to_journal = self._to_journal, []
        done, self._unjournal = self._unjournal, []
        gone = set(done)
        keep = [(entry.key, {"event": entry.event, "received_at": entry.received.received_at})
                for entry in new if entry.key not in gone]
        added = {entry.key for entry in new}
        forget = [key for key in done if key not in added]
        try:
            if keep:
                self._journal.parked_add(keep)
            if forget:
                self._journal.parked_done(forget)
        except Exception as exc:  # noqa: BLE001 - the store away: wait for those here instead
            report_internal_error("engine", exc, self._metrics)
            if keep:
                self.settle_parked(LOGS_BUDGET * 2)

    # -- helpers ---------------------------------------------------------------------
    def _quiet(self, rule: Rule) -> bool:
        """True when every action of the rule is inactive right now (checked per event:
        log levels can change)."""
        for spec in rule.actions:
            kind = self._kinds.get(spec.kind)
            if kind is None or not kind.inactive(spec.options):
                return False
        return True

    def _too_old(self, event: Event, received_at: float) -> bool:
        when = parse_datetime(event.get("datetime"))
        return when is not None and received_at - when > self._max_event_age

    def _attach(self, event: Event, rule: Rule, now: float,
                attached: dict[Any, Any]) -> dict[Any, Any]:
        """Read the logs and history `rule` asks for into `attached` (once per spec and event):
        `attached[rule.name]` holds the names its templates see."""
        assert self._attacher is not None and rule.enrichment is not None
        names: dict[str, Any] = {}
        logs, history = rule.enrichment.logs, rule.enrichment.history
        if logs is not None:
            if ("logs", logs) not in attached:
                attached["logs", logs] = self._attacher.logs(event, logs)
            names["logs"] = attached["logs", logs]
        if history is not None:
            if ("history", history) not in attached:
                attached["history", history] = self._attacher.history(event, history, now)
            names["history"] = attached["history", history]
        attached[rule.name] = names
        return attached

    def _enrich(self, event: Event) -> Any:
        if self._enricher is None:
            return None
        try:
            return self._enricher.resource(event)
        except Exception as exc:  # noqa: BLE001 - enrichment failure must not stop the rule
            report_internal_error("enrich", exc, self._metrics)
            return None

    def _template_failed(self, outcome: Outcome, rule: Rule, spec: ActionSpec | None,
                         exc: TemplateError) -> None:
        self._metrics.template_errors.labels(rule=rule.name).inc()
        where = f"action {spec.index + 1} ({spec.kind})" if spec is not None else "rule"
        log.warning("rule %s: template failed for event %s in %s: %s; skipping it",
                    rule.name, outcome.event.get("uuid", "?"), where, exc)
        kinds = [spec.kind] if spec is not None else [s.kind for s in rule.actions]
        for kind in kinds:
            self._decide(outcome, rule.name, kind, "failed", f"template error: {exc}")

    def _decide_all(self, outcome: Outcome, rule: Rule, status: str, reason: str) -> None:
        for spec in rule.actions:
            self._decide(outcome, rule.name, spec.kind, status, reason)
        if status == "throttled":
            log.info("rule %s throttled for event %s", rule.name, outcome.event.get("uuid", "?"))
            hooks.on_throttled(rule.name, outcome.event)
        elif status == "skipped":
            log.info("rule %s skipped for event %s: %s", rule.name,
                     outcome.event.get("uuid", "?"), reason)

    def _decide(self, outcome: Outcome, rule: str, kind: str, status: str, reason: str = "",
                options: dict[str, Any] | None = None, job: str = "") -> None:
        outcome.decisions.append(Decision(rule, kind, status, options, reason, job))
        if status in ("throttled", "skipped", "failed", "grouped", "shadow", "silenced"):
            self._count_action(kind, status)

    def _count_action(self, kind: str, outcome: str) -> None:
        child = self._action_children.get((kind, outcome))
        if child is None:
            child = self._metrics.actions.labels(kind=kind, outcome=outcome)
            self._action_children[(kind, outcome)] = child
        child.inc()


def _brief(options: dict[str, Any], limit: int = 300) -> str:
    """Rendered options for a log line (headers left out: they may hold tokens), cut at `limit`
    characters."""
    shown = {k: v for k, v in options.items() if k != "headers"}
    text = json.dumps(shown, sort_keys=True, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "..."


class _QuietPlan:
    """Which rules of a rule set do nothing visible right now, asked once per batch.

    Candidates are the rules without `when` or `throttle` and with no action on objects (so
    neither the loop guard nor the event's age changes what they do); they are grouped by
    their actions' kinds and options, and each group's actions are asked `inactive()` once
    per batch: a log level changed at run time takes effect at the next batch.
    """

    def __init__(self, rules: Rules, kinds: Mapping[str, KindTraits],
                 object_kinds: frozenset[str]) -> None:
        self.rules = rules
        groups: dict[tuple[tuple[str, str], ...], list[Rule]] = {}
        actions: dict[tuple[tuple[str, str], ...], list[ActionSpec]] = {}
        for rule in getattr(rules, "rules", ()):
            if rule.when is not None or rule.throttle is not None \
                    or not object_kinds.isdisjoint(rule.kinds):
                continue
            key = tuple((spec.kind, json.dumps(spec.options, sort_keys=True, default=str))
                        for spec in rule.actions)
            groups.setdefault(key, []).append(rule)
            actions.setdefault(key, list(rule.actions))
        self._groups = [(actions[key], tuple(members)) for key, members in groups.items()]
        self._verdicts: tuple[bool, ...] | None = None
        self._quiet: frozenset[Rule] = frozenset()

    def quiet(self, kinds: Mapping[str, KindTraits]) -> frozenset[Rule]:
        verdicts = tuple(all(kinds.get(spec.kind) is not None
                             and kinds[spec.kind].inactive(spec.options) for spec in specs)
                         for specs, _ in self._groups)
        if verdicts != self._verdicts:
            self._verdicts = verdicts
            self._quiet = frozenset(rule for verdict, (_, members) in zip(verdicts, self._groups,
                                                                          strict=True)
                                    if verdict for rule in members)
        return self._quiet


class _AskEach:
    """A batch's answers when its one-call match raised: each event's own matched(), asked
    in its turn (the event that raises is reported where it was, the others answered)."""

    __slots__ = ("_events", "_match")

    def __init__(self, events: Sequence[Event], match: Callable[[Event], Sequence[Rule]]) -> None:
        self._events = events
        self._match = match

    def __getitem__(self, index: int) -> Sequence[Rule]:
        return self._match(self._events[index])

    def __len__(self) -> int:
        return len(self._events)


def _count_key(matched: Sequence[Rule], quiet: frozenset[Rule]) -> Hashable | None:
    """What a match counts under, when every rule matched is quiet (a rule's name, or the
    rules' tuple for several: one count for them all); None when one is not."""
    if not quiet.issuperset(matched):
        return None
    return matched[0].name if len(matched) == 1 else tuple(matched)


def _never(event: Event) -> bool:
    """No loop guard: no event is self-caused."""
    return False


_NONE: frozenset[int] = frozenset()
_NO_EVENTS: list[Received] = []
_PARKED: Any = object()  # _park's answer: the event was set aside
_RESOURCE: Any = object()  # the key of the resource awaited, among the logs in `attached`


def _attached(waits: Mapping[Any, Future[Any]]) -> dict[Any, Any]:
    """What the done waits of an event brought, as `_run_rules` takes them: the logs by
    ("logs", spec), the resource (None when its inspect was cancelled: eventd closing)."""
    attached: dict[Any, Any] = {}
    for key, future in waits.items():
        if key is _RESOURCE:
            try:
                attached[_RESOURCE] = future.result()
            except Exception:  # noqa: BLE001 - cancelled: closing; the rules see no resource
                attached[_RESOURCE] = None
        else:
            attached["logs", key] = future.result()
    return attached
_NO_RULES: frozenset[Rule] = frozenset()
_NO_CONTEXT: Mapping[str, Any] = {}  # what a constant action's options are rendered with
_EVENT = attrgetter("event")
_INTERNAL = attrgetter("internal")
_TYPE = itemgetter("type")


def _object_of(event: Event) -> str:
    """What keeps events in order while one waits: the object they are about."""
    uri = event.get("resource_uri")
    if isinstance(uri, str) and uri:
        return uri
    return f"{event.get('type')}/{event.get('id')}"


def _type_label(kind: Any) -> tuple[str, ...]:
    """An event type's label: the type itself if documented, else `other`."""
    return (kind if kind in KNOWN_TYPES else "other",)


class _Unset:
    pass


_UNSET: Any = _Unset()


def _attach_to(job: ActionJob, context: Mapping[str, Any]) -> None:
    """An incident kind's job carries the logs and a history summary (not every event)."""
    if context.get("logs"):
        job.context["logs"] = list(context["logs"])
    history = context.get("history")
    if isinstance(history, dict):
        job.context["history"] = {k: history[k] for k in ("summary", "count", "exit_codes")
                                  if k in history}
