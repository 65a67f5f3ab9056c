"""RuleSet: the loaded rules, indexed so that rules which cannot match an event cost it nothing.

Rules are indexed by their fixed `type`, `action` and `state` values; the rest of the
candidates' required conditions are grouped (eventd.ruleset.prefilter), so a large rule set
costs an event little more than a small one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from eventd.fields import MISSING
from eventd.ruleset.matching import Predicate, always_true
from eventd.ruleset.prefilter import MIN_CANDIDATES, MatchCache, Plan

if TYPE_CHECKING:
    from eventd.ruleset.model import Rule

__all__ = ["RuleSet"]

_OTHER: Any = object()  # the index key for a type/action no rule names
_KEY = itemgetter("type", "action", "state")
_MEMO_SIZE = 4096
Candidates = tuple[tuple["Rule", Predicate], ...]


class _Equals(tuple[Any, ...]):
    """(rule, field, value): the lone candidate whose residual is `field` equal to (or a
    list holding) the string `value` (CompiledMatch.residual_equals), tested inline."""

    __slots__ = ()


class _Fixed:
    """The answer itself, for a (type, action, state) whose every candidate the index decides
    alone (its residual is always true: a rule on type, action and state only, or none); a
    plain tuple, so that the engine's tuple() of it is no copy."""

    __slots__ = ("rules",)

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules


class RuleSet:
    """The enabled rules, in load order, with an index by event type and action."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        loaded = tuple(rules)
        self.rules: tuple[Rule, ...] = tuple(r for r in loaded if r.enabled)
        self.disabled: tuple[Rule, ...] = tuple(r for r in loaded if not r.enabled)
        self.by_name: dict[str, Rule] = {r.name: r for r in self.rules}
        self._table, self._other_row = self._build_index()
        #: when every rule names its types: the types some rule may match (an event of
        #: another string type has no candidates, found without building its index key);
        #: None when a rule matches any type
        self._live_types: frozenset[str] | None = None if any(self._other_row.values()) \
            else frozenset(self._table)
        self._memo: dict[tuple[Any, Any, Any], Candidates | Plan | _Equals | _Fixed] = {}
        #: the same by type, then action, then state (strings or None): matched_each's
        #: lookup, which builds no key tuple
        self._known: dict[str | None, dict[str | None, dict[str | None, Any]]] = {}
        #: one Plan per distinct candidate tuple: the (type, action, state) keys whose
        #: candidates are the same rules share its remembered answers (fewer misses)
        self._plans: dict[Candidates, Plan] = {}
        self._cache = MatchCache()  # the plans' remembered answers: a reload starts afresh

    def _build_index(self) -> tuple[dict[str, dict[Any, Candidates]], dict[Any, Candidates]]:
        types = {t for r in self.rules if r.compiled.types for t in r.compiled.types}
        actions = {a for r in self.rules if r.compiled.actions for a in r.compiled.actions}

        def row(event_type: Any) -> dict[Any, Candidates]:
            result: dict[Any, Candidates] = {}
            for action in [*actions, _OTHER]:
                result[action] = tuple(
                    (r, r.compiled.residual) for r in self.rules
                    if (r.compiled.types is None or event_type in r.compiled.types)
                    and (r.compiled.actions is None or action in r.compiled.actions))
            return result
        return {t: row(t) for t in types}, row(_OTHER)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Any:
        return iter(self.rules)

    def candidates(self, event_type: Any, action: Any, state: Any) -> Candidates:
        """The rules (with their residual predicates) an event of this type/action/state may match.

        A residual leaves out the conditions the index guarantees (fixed type, action and
        state), so it is only valid for candidates found with all three keys.
        """
        row = self._table.get(event_type, self._other_row)
        found = row.get(action)
        by_type_action = row[_OTHER] if found is None else found
        return tuple((rule, residual) for rule, residual in by_type_action
                     if rule.compiled.states is None or state in rule.compiled.states)

    def match(self, event: Mapping[str, Any]) -> list[Rule]:
        """The enabled rules whose match holds for `event`, in load order."""
        return list(self.matched(event))

    def matched(self, event: Mapping[str, Any]) -> Sequence[Rule]:
        """As match(), but possibly a tuple shared with later answers: a remembered answer is
        not copied, no match is an empty tuple. Never mutate it."""
        return self.matched_each((event,))[0]

    def matched_each(self, events: Iterable[Mapping[str, Any]]) -> list[Sequence[Rule]]:
        """matched() of each event, in order, in one call (the engine's, once per batch: a
        Python call per event cost as much as a third of its match). An event that raises
        stops the answers there, as matched() of it would raise."""
        answers: list[Sequence[Rule]] = []
        answer = answers.append
        live, known = self._live_types, self._known
        for event in events:
            if live is not None:  # most events of a small rule set: a type no rule names
                try:
                    kind = event["type"]
                except KeyError:
                    pass
                else:
                    if type(kind) is str and kind not in live:
                        answer(())
                        continue
            try:  # three string lookups: no key tuple to build, hash, compare and free
                candidates: Any = known[event["type"]][event["action"]][event["state"]]
            except (KeyError, TypeError):  # a field missing, not hashable; or not known yet
                candidates = self._candidates_of(event)
            if candidates is None:  # no index for this event: every rule's own predicate
                answer([r for r in self.rules if r.compiled.predicate(event)])
                continue
            if not candidates:  # most events of a small rule set: no rule names their type
                answer(())
                continue
            kind = type(candidates)  # one call for the tests (candidates: Any, as mypy narrows no alias)
            if kind is _Fixed:  # no rule has anything left to test: the answer, never mutated
                answer(candidates.rules)
                continue
            if kind is _Equals:  # one candidate, a field equal to a string: inline
                rule, field, condition = candidates
                got = event.get(field)
                answer((rule,) if got == condition or (type(got) is list and condition in got)
                       else ())
                continue
            if kind is Plan:
                # The plan's usual answer inline (a Python call per event costs ~500
                # instructions): its rules read one plain field, a list of strings or a string
                # whose answer the plan remembers; anything else is the plan's own match.
                one, table = candidates.one, candidates.table
                if one is not None and table is not None:
                    value: Any = event.get(one)
                    found_rules: Sequence[Rule] | None  # the cache's own tuple (never changed)
                    held = type(value)
                    if held is list:
                        try:
                            found_rules = table.get(tuple(value))
                        except TypeError:  # an element that is not hashable
                            found_rules = None
                        if found_rules is not None:
                            answer(found_rules)
                            continue
                    elif held is str:
                        found_rules = table.get(value)
                        if found_rules is not None:
                            answer(found_rules)
                            continue
                elif candidates.many:
                    # Several fields (a container's URI, parents, data.errorMessage): the key
                    # Plan._key makes, built here without its calls, when the event has no
                    # dotted field's first segment (the usual event: no `data`)
                    head = candidates.head
                    if head is None or head not in event:
                        values = []
                        for name in candidates.plain:
                            value = event.get(name, MISSING)
                            held = type(value)
                            if held is list:
                                value = tuple(value)
                            elif held is tuple:  # not from JSON: would look like a list's key
                                break
                            values.append(value)
                        else:
                            try:
                                found_rules = table.get((*values, *candidates.tail))
                            except TypeError:  # a value that is not hashable
                                found_rules = None
                            if found_rules is not None:
                                answer(found_rules)
                                continue
                answer(candidates.matched(event))
                continue
            if len(candidates) == 1:  # no list comprehension (a function made per call)
                rule, residual = candidates[0]
                answer((rule,) if residual(event) else ())
                continue
            answer([rule for rule, residual in candidates
                    if residual is None or residual(event)])
        return answers

    def _candidates_of(self, event: Mapping[str, Any]) -> Any:
        """The candidates by the (type, action, state) key (an absent field read as None);
        None when one of them is neither a string nor None (no index for the event)."""
        try:
            key = _KEY(event)  # one C call; an event without one of them is rare
        except KeyError:
            key = (event.get("type"), event.get("action"), event.get("state"))
        try:
            return self._memo[key]
        except KeyError:
            return self._remember(key)
        except TypeError:  # an unhashable type/action/state: no index, check every rule
            return None

    def _remember(self, key: tuple[Any, Any, Any]) -> Any:
        """The candidates of a (type, action, state) not seen yet (a Plan, _Equals, _Fixed or
        a tuple of (rule, residual or None)), kept while the memo has room; None when the key
        holds a value that is neither a string nor None (no index)."""
        if not all(k is None or isinstance(k, str) for k in key):
            return None
        found = self.candidates(*key)
        kept = len(self._memo) < _MEMO_SIZE  # type/action/state vocabularies are small
        candidates: Any  # a scan's tuple holds None for a residual always true
        if found and all(residual is always_true for _, residual in found):
            candidates = _Fixed(tuple(rule for rule, _ in found))
        elif len(found) >= MIN_CANDIDATES:
            plan = self._plans.get(found) if kept else None
            if plan is None:
                plan = Plan(found, self._cache if kept else None)
                if kept:
                    self._plans[found] = plan
            candidates = plan
        elif len(found) == 1 and found[0][0].compiled.residual_equals is not None:
            candidates = _Equals((found[0][0], *found[0][0].compiled.residual_equals))
        else:  # a residual always true is None: the scan below skips its call
            candidates = tuple((rule, None if residual is always_true else residual)
                               for rule, residual in found)
        if kept:  # type/action/state vocabularies are small
            self._memo[key] = candidates
            kind, action, state = key
            self._known.setdefault(kind, {}).setdefault(action, {})[state] = candidates
        return candidates
