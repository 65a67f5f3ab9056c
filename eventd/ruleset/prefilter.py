"""Cheap group tests that rule out many candidate rules at once, before their own predicates.

The type/action/state index leaves the rules that share an event's type, action and state.
In a large rule set most of those still cannot match: they also pin a parent, a URI pattern
or a field that the event does not have. Each such rule gets one *guard*, a condition its
match requires anyway:

- `field: "value"`            one dict lookup for every rule pinning that field to a string;
- `field: {regex|glob: ...}`  one search with all the rules' regexes (a glob: its longest
                              literal part) joined in a single regex, then halves of it
                              to find which rules a hit concerns;
- `field: {exists: true}`     one presence check for all of them.

A guard only ever rules a candidate *out* when the rule's own predicate would fail too; the
survivors are checked with their full predicates, in load order. So the result is exactly
the plain scan's, at a cost that no longer grows with rules that cannot match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from eventd.fields import MISSING
from eventd.fields import field_getter as _getter

if TYPE_CHECKING:
    from eventd.ruleset.model import Rule

Predicate = Callable[[Mapping[str, Any]], bool]
Candidate = tuple["Rule", Predicate]

#: Below this many candidates a plain scan is as fast as any plan.
MIN_CANDIDATES = 8


def _guard(match: Mapping[str, Any], pinned: frozenset[str]) -> tuple[str, str, Any] | None:
    """The best group-testable condition the rule requires: (kind, field, argument)."""
    found: dict[str, tuple[str, str, Any]] = {}
    for field, condition in match.items():
        if field in ("any", "all", "not") or field in pinned:
            continue
        if isinstance(condition, str):
            found.setdefault("eq", ("eq", field, condition))
        elif isinstance(condition, dict):
            if isinstance(condition.get("regex"), str):
                found.setdefault("pattern", ("pattern", field, condition["regex"]))
            elif isinstance(condition.get("glob"), str):
                literal = _glob_literal(condition["glob"])
                if literal:  # a glob holds only where its longest literal part appears
                    found.setdefault("pattern", ("pattern", field, re.escape(literal)))
            elif condition.get("exists") is True:
                found.setdefault("exists", ("exists", field, None))
    for kind in ("eq", "pattern", "exists"):
        if kind in found:
            return found[kind]
    return None


def _glob_literal(glob: str) -> str:
    """The longest run of plain characters in a glob (3 or more), or ""."""
    parts = re.split(r"\*|\?|\[[^\]]*\]?", glob)
    longest = max(parts, key=len, default="")
    return longest if len(longest) >= 3 else ""


def _joined(sources: Sequence[str]) -> re.Pattern[str] | None:
    """All patterns in one regex; None when they do not combine (e.g. inline global flags)."""
    try:
        return re.compile("|".join(f"(?:{source})" for source in sources))
    except re.error:
        return None


class _PatternTree:
    """Patterns of one field, joined by halves, so a hit narrows down in log(n) searches.

    One joined regex answers "does any pattern match?", but a single common pattern (say
    `*/stack/*`) would then unlock every rule of the group. Splitting the group in halves,
    each with its own joined regex, finds the rules whose patterns match in about
    2 * log2(n) searches per matching pattern.
    """

    __slots__ = ("search", "left", "right", "members")

    def __init__(self, search: Callable[[str], Any],
                 members: Sequence[tuple[int, Candidate, str]]) -> None:
        self.search = search
        self.left: _PatternTree | None = None
        self.right: _PatternTree | None = None
        self.members = tuple((p, c) for p, c, _ in members)
        if len(members) > 2:
            half = len(members) // 2
            left, right = _joined([m[2] for m in members[:half]]), _joined(
                [m[2] for m in members[half:]])
            if left is not None and right is not None:
                self.left = _PatternTree(left.search, members[:half])
                self.right = _PatternTree(right.search, members[half:])

    def collect(self, value: str, out: list[tuple[int, Candidate]]) -> None:
        """Add the members whose pattern may match `value` (the root already matched)."""
        if self.left is None or self.right is None:
            out.extend(self.members)
            return
        for child in (self.left, self.right):
            if child.search(value) is not None:
                child.collect(value, out)


class Plan:
    """The candidates for one (type, action, state), with their guards grouped."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.size = len(candidates)
        unguarded: list[tuple[int, Candidate]] = []
        equal: dict[str, dict[str, list[tuple[int, Candidate]]]] = {}
        patterns: dict[str, list[tuple[int, Candidate, str]]] = {}
        present: dict[str, list[tuple[int, Candidate]]] = {}
        for position, candidate in enumerate(candidates):
            rule = candidate[0]
            pinned = frozenset(k for k, v in (("type", rule.compiled.types),
                                              ("action", rule.compiled.actions),
                                              ("state", rule.compiled.states)) if v)
            guard = _guard(rule.match, pinned)
            if guard is None:
                unguarded.append((position, candidate))
            elif guard[0] == "eq":
                equal.setdefault(guard[1], {}).setdefault(guard[2], []).append((position, candidate))
            elif guard[0] == "pattern":
                patterns.setdefault(guard[1], []).append((position, candidate, guard[2]))
            else:
                present.setdefault(guard[1], []).append((position, candidate))
        self._unguarded = unguarded
        # (field, getter for dotted fields or None, ...): plain fields are read inline.
        self._equal = [(f, _getter(f) if "." in f or '"' in f else None,
                        {v: tuple(c) for v, c in by_value.items()})
                       for f, by_value in equal.items()]
        self._patterns: list[tuple[str, Any, Callable[[str], Any], _PatternTree]] = []
        for field, members in patterns.items():
            joined = _joined([source for _, _, source in members])
            if joined is None:
                unguarded.extend((p, c) for p, c, _ in members)
            else:
                self._patterns.append((field, _getter(field) if "." in field or '"' in field else None,
                                       joined.search, _PatternTree(joined.search, members)))
        self._present = [(f, _getter(f) if "." in f or '"' in f else None, tuple(c))
                         for f, c in present.items()]
        unguarded.sort(key=_position)  # patterns that would not join were appended last
        self._unguarded_candidates = tuple(c for _, c in unguarded)

    def match(self, event: Mapping[str, Any]) -> list[Rule]:
        """The rules whose match holds, in load order."""
        extra: list[tuple[int, Candidate]] | None = None
        repeats = False  # a list field may hit the same rule through two elements
        get = event.get
        for field, getter, by_value in self._equal:
            value = get(field, MISSING) if getter is None else getter(event)
            if type(value) is str:
                hits = by_value.get(value)
                if hits:
                    extra = [*(extra or ()), *hits]
            elif type(value) is list:
                for item in value:
                    if type(item) is str:
                        hits = by_value.get(item)
                        if hits:
                            extra = [*(extra or ()), *hits]
                            repeats = True
        for field, getter, search, tree in self._patterns:
            value = get(field, MISSING) if getter is None else getter(event)
            if type(value) is str:
                if search(value) is not None:
                    found: list[tuple[int, Candidate]] = []
                    tree.collect(value, found)
                    extra = [*(extra or ()), *found]
            elif type(value) is list:
                found = []
                for item in value:
                    if type(item) is str and search(item) is not None:
                        tree.collect(item, found)
                if found:
                    extra = [*(extra or ()), *found]
                    repeats = True
        for field, getter, members in self._present:
            value = get(field, MISSING) if getter is None else getter(event)
            if value is not MISSING and value is not None:
                extra = [*(extra or ()), *members]
        if extra is None:  # the common case: only the unguarded rules are left, in order
            return [rule for rule, residual in self._unguarded_candidates if residual(event)]
        if repeats:
            extra = list({position: item for position, item in ((i[0], i) for i in extra)}
                         .values())
        survivors = sorted(self._unguarded + extra, key=_position)
        return [rule for _, (rule, residual) in survivors if residual(event)]


def _position(item: tuple[int, Candidate]) -> int:
    return item[0]
