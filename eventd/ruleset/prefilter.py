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

A plan also remembers its answers (`MatchCache`): its rules read only a few fields besides
type, action and state (say `parents`), and events about the same objects repeat those
values, so an event whose values were seen before gets the same rules back in one dict
lookup. The values are the sender's data: only plain ones are kept (strings of bounded
length, null, absent, lists of strings), a value is kept only the second time it is seen,
and the cache is bounded in entries and characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from eventd.fields import MISSING, FieldPathError, split_path
from eventd.fields import field_getter as _getter
from eventd.ruleset.matching import always_true as _always

if TYPE_CHECKING:
    from eventd.ruleset.model import Rule

Predicate = Callable[[Mapping[str, Any]], bool]
Candidate = tuple["Rule", Predicate]

#: Below this many candidates a plain scan is as fast as any plan: two candidates with a test
#: left (a glob on parents beside a catch-all) cost more scanned than remembered.
MIN_CANDIDATES = 2
#: joins a list field's elements for one search of literals (none holds it)
_SEPARATOR = "\0"


def _guard(match: Mapping[str, Any],
           pinned: frozenset[str]) -> tuple[str, str, Any, bool, str | None] | None:
    """The best group-testable condition the rule requires: (kind, field, argument, whole,
    the literal a glob's pattern escapes).

    `whole` is true when that condition is all the rule requires beyond its indexed type,
    action and state, and the group test decides it exactly (a string equality, a glob
    `*literal*`, `exists: true`): a candidate it finds then needs no check of its own.
    """
    found: dict[str, tuple[str, str, Any, bool, str | None]] = {}
    alone = sum(1 for field in match if field not in pinned) == 1
    for field, condition in match.items():
        if field in ("any", "all", "not") or field in pinned:
            continue
        if isinstance(condition, str):
            found.setdefault("eq", ("eq", field, condition, alone, None))
        elif isinstance(condition, dict):
            if isinstance(condition.get("regex"), str):
                found.setdefault("pattern", ("pattern", field, condition["regex"], False, None))
            elif isinstance(condition.get("glob"), str):
                glob = condition["glob"]
                literal = _glob_literal(glob)
                if literal:  # a glob holds only where its longest literal part appears
                    exact = alone and len(condition) == 1 and glob == f"*{literal}*"
                    found.setdefault("pattern", ("pattern", field, re.escape(literal), exact,
                                                 literal))
            elif condition.get("exists") is True:
                found.setdefault("exists", ("exists", field, None, alone and len(condition) == 1,
                                            None))
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


#: A candidate in a plan: its load-order position, the rule, and the predicate still to
#: check (None when the group test that found it decided the whole match).
Entry = tuple[int, "Rule", Predicate | None]


class _PatternTree:
    """Patterns of one field, joined by halves, so a hit narrows down in log(n) searches.

    One joined regex answers "does any pattern match?", but a single common pattern (say
    `*/stack/*`) would then unlock every rule of the group. Splitting the distinct patterns
    in halves, each with its own joined regex, finds the ones that match in about
    2 * log2(n) searches per matching pattern; a leaf is one pattern and every rule using it.
    """

    __slots__ = ("search", "left", "right", "members", "check")

    def __init__(self, search: Callable[[str], Any],
                 sources: Sequence[tuple[str, tuple[Entry, ...]]]) -> None:
        self.search = search
        self.left: _PatternTree | None = None
        self.right: _PatternTree | None = None
        self.members = tuple(entry for _, entries in sources for entry in entries)
        self.check = any(entry[2] is not None for entry in self.members)
        if len(sources) > 1:
            half = len(sources) // 2
            left = _joined([source for source, _ in sources[:half]])
            right = _joined([source for source, _ in sources[half:]])
            if left is not None and right is not None:
                self.left = _PatternTree(left.search, sources[:half])
                self.right = _PatternTree(right.search, sources[half:])

    def collect(self, value: str, out: list[Entry]) -> bool:
        """Add the members whose pattern may match `value` (the root already matched);
        whether any of those needs its own check."""
        if self.left is None or self.right is None:
            out.extend(self.members)
            return self.check
        check = False
        for child in (self.left, self.right):
            if child.search(value) is not None:
                check = child.collect(value, out) or check
        return check


#: The answers a rule set's plans remember at most, over all of them ...
CACHE_ENTRIES = 4096
#: ... the characters of the values they hold at most, and per answer.
CACHE_CHARS = 262_144
KEY_CHARS = 512
#: The first sightings remembered (as hashes) so that a value is kept the second time.
SEEN_MAX = 4096
_NO_KEY: Any = object()  # a value that is not kept: the plan scans
_ONLY_STR = {str}


class MatchCache:
    """The answers of a rule set's plans, by the values their rules read; bounded.

    A value is kept only when seen a second time (a value seen once, such as a new
    object's URI, costs a hash in a bounded set, not an entry). Once full, nothing is
    added; after as many misses as it holds entries, it starts over, so the values kept
    follow what the stream carries now.
    """

    __slots__ = ("tables", "entries", "chars", "misses", "seen", "strings", "results")

    def __init__(self) -> None:
        self.tables: list[dict[Any, tuple[Rule, ...]]] = []
        self.entries = 0
        self.chars = 0  # of the strings kept, each once (plans share a parent's URI)
        self.misses = 0
        self.seen: set[int] = set()
        self.strings: dict[str, str] = {}
        self.results: dict[tuple[Rule, ...], tuple[Rule, ...]] = {}

    def table(self) -> dict[Any, tuple[Rule, ...]]:
        """A new plan's own table, cleared with the others."""
        table: dict[Any, tuple[Rule, ...]] = {}
        self.tables.append(table)
        return table

    def admit(self, table: dict[Any, tuple[Rule, ...]], key: Any, chars: int,
              result: Sequence[Rule]) -> None:
        """Keep `result` for `key` (of `chars` characters) if it is the key's second miss."""
        if self.entries >= CACHE_ENTRIES or self.chars + chars > CACHE_CHARS:
            self.misses += 1
            if self.misses >= CACHE_ENTRIES:  # full of values the stream no longer carries
                self.clear()
            return
        seen = self.seen
        mark = hash(key)
        # While under half full, a value is kept the first time it is seen; past that, only
        # the second (one-off values then cost a hash, not an entry).
        if self.entries >= CACHE_ENTRIES // 2 and mark not in seen:
            if len(seen) >= SEEN_MAX:
                seen.clear()
            seen.add(mark)
            return
        key, added = self._shared(key)
        answer = tuple(result)
        table[key] = self.results.setdefault(answer, answer)
        self.entries += 1
        self.chars += added

    def _shared(self, value: Any) -> tuple[Any, int]:
        """`value` made of the strings already kept (each kept once); the characters added."""
        kind = type(value)
        if kind is str:
            kept = self.strings.setdefault(value, value)
            return kept, len(value) if kept is value else 0
        if kind is tuple:
            items, added = [], 0
            for item in value:
                item, more = self._shared(item)
                items.append(item)
                added += more
            return tuple(items), added
        return value, 0

    def clear(self) -> None:
        for table in self.tables:
            table.clear()
        self.entries = self.chars = self.misses = 0
        self.seen.clear()
        self.strings.clear()
        self.results.clear()


def _chars(value: Any) -> int:
    """The characters a kept value holds, or -1 when it is not kept (not plain, too long).

    Only exact types whose equality means the same to every rule: a str, None, absent, a
    list of str (as a tuple; 1 == True == 1.0 rules out numbers and booleans)."""
    kind = type(value)
    if kind is str:
        return len(value)
    if value is None or value is MISSING:
        return 0
    if kind is tuple:  # a list's elements (the lookup made the tuple from a list)
        if all(type(item) is str for item in value):
            return sum(map(len, value))
    return -1


def _dotted(field: str) -> bool:
    """Whether a field is read through eventd.fields.field_getter (not one plain key)."""
    return "." in field or '"' in field


def _head(field: str) -> str:
    """A field path's first segment: an event without that key reads the field as absent."""
    try:
        return split_path(field)[0]
    except FieldPathError:  # read as a plain key (field_getter)
        return field


def _read_paths(match: Any, out: set[str]) -> None:
    """Every field path a match mapping reads (any/all/not included)."""
    if not isinstance(match, Mapping):
        return
    for key, value in match.items():
        if key in ("any", "all"):
            for item in value if isinstance(value, list) else ():
                _read_paths(item, out)
        elif key == "not":
            _read_paths(value, out)
        else:
            out.add(key)


class Plan:
    """The candidates for one (type, action, state), with their guards grouped."""

    def __init__(self, candidates: Sequence[Candidate], cache: MatchCache | None = None) -> None:
        self.size = len(candidates)
        # The fields the candidates' residuals read: the key of the plan's remembered
        # answers. A type, action or state the index pins (a plain value or list) is left
        # out; read otherwise (`action: {not: update}`, a glob, inside `any`) it is part of
        # the key, since keys of several (type, action, state) share a plan.
        paths: set[str] = set()
        for rule, _ in candidates:
            compiled = rule.compiled
            indexed = {field for field, values in (("type", compiled.types),
                                                   ("action", compiled.actions),
                                                   ("state", compiled.states)) if values}
            _read_paths({k: v for k, v in rule.match.items() if k not in indexed}
                        if indexed else rule.match, paths)
        # plain fields first, then the dotted ones (the key's layout: see `plain`, `tail`)
        self._fields = tuple((f, _getter(f) if _dotted(f) else None)
                             for f in sorted(paths, key=lambda f: (_dotted(f), f)))
        self._one = self._fields[0][0] if len(self._fields) == 1 \
            and self._fields[0][1] is None else None
        self._cache = cache
        self._table: dict[Any, tuple[Rule, ...]] | None = \
            cache.table() if cache is not None else None
        #: read by RuleSet.match for the usual answer inline (a list value's key is its tuple)
        self.one, self.table = self._one, self._table
        #: for RuleSet.match's inline key of a plan reading several fields: the plain ones,
        #: and the first segment of the dotted ones (at most one: None when there is none,
        #: or more than one). An event without that key reads every dotted field as absent,
        #: so the key is the plain fields' values followed by `tail` (MISSING for each).
        dotted = [f for f, getter in self._fields if getter is not None]
        self.plain = tuple(f for f, getter in self._fields if getter is None)
        self.tail: tuple[Any, ...] = (MISSING,) * len(dotted)
        heads = {_head(f) for f in dotted}
        self.head: str | None = heads.pop() if len(heads) == 1 else None
        self.many = self._table is not None and self._one is None \
            and (not dotted or self.head is not None)
        unguarded: list[Entry] = []
        equal: dict[str, dict[str, list[Entry]]] = {}
        patterns: dict[str, dict[str, list[Entry]]] = {}
        present: dict[str, list[Entry]] = {}
        literals: dict[str, str] = {}  # pattern source -> the glob literal it escapes
        for position, (rule, residual) in enumerate(candidates):
            pinned = frozenset(k for k, v in (("type", rule.compiled.types),
                                              ("action", rule.compiled.actions),
                                              ("state", rule.compiled.states)) if v)
            guard = _guard(rule.match, pinned)
            if guard is None:  # a residual always true is None: nothing left to check
                unguarded.append((position, rule, None if residual is _always else residual))
                continue
            kind, field, argument, whole, literal = guard
            entry: Entry = (position, rule, None if whole else residual)
            if kind == "eq":
                equal.setdefault(field, {}).setdefault(argument, []).append(entry)
            elif kind == "pattern":
                patterns.setdefault(field, {}).setdefault(argument, []).append(entry)
                if literal is not None:
                    literals[argument] = literal
            else:
                present.setdefault(field, []).append(entry)
        # (field, getter for dotted fields or None, ...): plain fields are read inline.
        self._equal = [(f, _getter(f) if "." in f or '"' in f else None,
                        {v: tuple(c) for v, c in by_value.items()})
                       for f, by_value in equal.items()]
        self._equal_keys = [(f, g, by_value, by_value.keys(),
                             frozenset(v for v, c in by_value.items()
                                       if any(e[2] is not None for e in c)))
                            for f, g, by_value in self._equal]
        self._patterns: list[tuple[str, Any, Callable[[str], Any], _PatternTree, bool]] = []
        for field, by_source in patterns.items():
            sources = [(source, tuple(entries)) for source, entries in by_source.items()]
            joined = _joined([source for source, _ in sources])
            if joined is None:
                unguarded.extend((p, rule, rule.compiled.residual) for _, entries in sources
                                 for p, rule, _ in entries)
            else:
                # Only literals (from globs), none holding NUL: then a list's elements joined
                # by NUL can be searched at once, since no literal spans two of them.
                only_literals = all(source in literals and _SEPARATOR not in literals[source]
                                    for source, _ in sources)
                self._patterns.append((field, _getter(field) if "." in field or '"' in field else None,
                                       joined.search, _PatternTree(joined.search, sources),
                                       only_literals))
        self._present = [(f, _getter(f) if "." in f or '"' in f else None, tuple(c),
                          any(e[2] is not None for e in c)) for f, c in present.items()]
        unguarded.sort(key=_position)  # patterns that would not join were appended last
        self._unguarded = unguarded
        self._unguarded_candidates = tuple((rule, residual) for _, rule, residual in unguarded)
        self._unguarded_check = any(residual is not None for _, _, residual in unguarded)
        #: what no group test adds to, when none of those rules has a test left: the usual
        #: answer, handed out as is (a scan's answer is never mutated)
        self._unguarded_rules: tuple[Rule, ...] | None = None if self._unguarded_check \
            else tuple(rule for _, rule, _ in unguarded)

    def match(self, event: Mapping[str, Any]) -> list[Rule]:
        """The rules whose match holds, in load order (remembered by the values they read)."""
        return list(self.matched(event))

    def matched(self, event: Mapping[str, Any]) -> Sequence[Rule]:
        """As match(), but a remembered answer is the cache's own tuple (never mutate it)."""
        table = self._table
        if table is None:
            return self.scan(event)
        one = self._one
        if one is not None:  # the usual plan: its rules read one plain field (parents)
            key = event.get(one, MISSING)
            if type(key) is list:
                try:
                    key = tuple(key)
                    found = table.get(key)
                except TypeError:  # an element that is not hashable
                    return self.scan(event)
            elif type(key) is tuple:  # not from JSON: would look like a list's key
                return self.scan(event)
            else:
                try:
                    found = table.get(key)
                except TypeError:
                    return self.scan(event)
        else:
            key = self._key(event)
            if key is _NO_KEY:
                return self.scan(event)
            found = table.get(key)
        if found is not None:
            return found
        result = self.scan(event)
        chars = _chars(key) if one is not None else self._key_chars(key)
        if 0 <= chars <= KEY_CHARS and self._cache is not None:
            self._cache.admit(table, key, chars, result)
        return result

    def _key(self, event: Mapping[str, Any]) -> Any:
        """The values the plan's rules read, as a key; _NO_KEY when one is not plain."""
        values: list[Any] = []
        add, get = values.append, event.get
        for field, getter in self._fields:
            value = get(field, MISSING) if getter is None else getter(event)
            kind = type(value)
            if kind is str or value is MISSING or value is None:
                add(value)
            elif kind is list:
                # only strings (in C: a generator made per list cost more than the scan)
                if value and set(map(type, value)) != _ONLY_STR:
                    return _NO_KEY
                add(tuple(value))
            else:
                return _NO_KEY
        return tuple(values)

    @staticmethod
    def _key_chars(key: tuple[Any, ...]) -> int:
        total = 0
        for value in key:
            chars = _chars(value)
            if chars < 0:
                return -1
            total += chars
        return total

    def scan(self, event: Mapping[str, Any]) -> Sequence[Rule]:
        """The rules whose match holds, in load order, by the group tests."""
        extra: list[Entry] = []
        repeats = False  # a list field may hit the same rule through two elements
        check = self._unguarded_check  # whether a survivor needs its own predicate
        get = event.get
        for field, getter, by_value, values, checked in self._equal_keys:
            value = get(field, MISSING) if getter is None else getter(event)
            if type(value) is str:
                hits = by_value.get(value)
                if hits:
                    extra.extend(hits)
                    check = check or value in checked
            elif type(value) is list:
                try:  # whether the list holds a value some rule pins, in one C call
                    if values.isdisjoint(value):
                        continue
                    found = values & value
                except TypeError:  # an element that is not hashable: one by one
                    found = {item for item in value if type(item) is str and item in by_value}
                for item in found:  # a rule pins one value: no rule comes twice
                    extra.extend(by_value[item])
                check = check or not checked.isdisjoint(found)
        for field, getter, search, tree, literal in self._patterns:
            value = get(field, MISSING) if getter is None else getter(event)
            if type(value) is str:
                if search(value) is not None:
                    repeats = repeats or bool(extra)
                    check = tree.collect(value, extra) or check
            elif type(value) is list:
                if literal:
                    try:
                        value = _SEPARATOR.join(value)
                    except TypeError:  # an element that is not a string
                        value = _SEPARATOR.join(item for item in value if type(item) is str)
                    if search(value) is not None:
                        repeats = repeats or bool(extra)
                        check = tree.collect(value, extra) or check
                    continue
                for item in value:
                    if type(item) is str and search(item) is not None:
                        repeats = repeats or bool(extra)
                        check = tree.collect(item, extra) or check
        for field, getter, members, members_check in self._present:
            value = get(field, MISSING) if getter is None else getter(event)
            if value is not MISSING and value is not None:
                repeats = repeats or bool(extra)
                extra.extend(members)
                check = check or members_check
        if not extra:  # the common case: only the unguarded rules are left, in order
            if self._unguarded_rules is not None:
                return self._unguarded_rules
            return [rule for rule, residual in self._unguarded_candidates
                    if residual is None or residual(event)]
        if repeats:  # one entry per position (the same entry each time)
            extra = list({entry[0]: entry for entry in extra}.values())
        # Positions are unique, so sorting compares positions only.
        survivors = sorted(self._unguarded + extra) if self._unguarded else sorted(extra)
        if not check:  # every survivor was decided by its group test: no Python per rule
            return list(map(_RULE, survivors))
        return [rule for _, rule, residual in survivors if residual is None or residual(event)]


def _position(item: Entry) -> int:
    return item[0]


_RULE = itemgetter(1)
