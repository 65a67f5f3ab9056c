"""Compile a rule's `match:` into closures at load, and find the rules an event matches fast.

Semantics (the rule-file reference):
- every key of a match mapping must hold (AND); an empty mapping matches every event;
- `any: [m, ...]`, `all: [m, ...]` and `not: m` combine whole match mappings, so fields
  named any/all/not cannot be matched directly;
- on a field: a scalar is equality, a list is "any of", a mapping holds operators (ANDed):
  glob, regex (re.search), in, gt/gte/lt/lte, exists, not;
- dotted keys (`data.errorMessage`) reach into nested objects; a key holding dots is one
  quoted segment (`attributes."com.docker.compose.service"`);
- on a list-valued field (parents) a condition holds when any element matches, `not: X`
  holds when no element matches X, and `exists` is about the field itself;
- a missing field fails equality, glob, regex, in and comparisons, but equality with `false`
  holds (eventd's own flags `backfilled` / `caused_by_eventd` are absent when false);
- `exists: true` needs the field present and not null; `not: X` holds on a missing field
  whenever X does not (`action: {not: delete}` holds when there is no action);
- numbers never equal booleans, and comparisons ignore non-numbers.

The index that finds an event's candidate rules fast is `eventd.ruleset.index`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventd.fields import MISSING, FieldPathError, split_path
from eventd.fields import field_getter as _getter

Path = tuple[str | int, ...]
Predicate = Callable[[Mapping[str, Any]], bool]
FieldTest = Callable[[Any], bool]  # the field's value, or MISSING -> holds?

COMBINATORS = ("any", "all", "not")
OPERATORS = ("glob", "regex", "not", "exists", "in", "gt", "gte", "lt", "lte")


_NUMBERS = (int, float)


class MatchProblem(Exception):
    """A match that does not compile (e.g. a bad regex); `path` points at the value."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """A rule's match as closures, plus what the index needs."""

    predicate: Predicate  # the whole match
    residual: Predicate  # the match minus the conditions the index already guarantees
    types: frozenset[str] | None  # the event types the rule can match; None = any
    actions: frozenset[str] | None  # the event actions it can match; None = any
    states: frozenset[str] | None = None  # the event states it can match; None = any
    #: (field, value) when the residual is one plain field equal to (or a list holding) a
    #: string: the index then tests it inline, without a Python call per event
    residual_equals: tuple[str, str] | None = None


def _true(event: Mapping[str, Any]) -> bool:
    return True


#: the residual of a rule the index decides alone (RuleSet answers it without a call)
always_true = _true


def _all(predicates: Sequence[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    if not predicates:
        return _true
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        a, b = predicates
        return lambda x: a(x) and b(x)
    preds = tuple(predicates)

    def every(x: Any) -> bool:
        for p in preds:
            if not p(x):
                return False
        return True
    return every


def _any(predicates: Sequence[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    preds = tuple(predicates)

    def some(x: Any) -> bool:
        for p in preds:
            if p(x):
                return True
        return False
    return some


def _lift(test: FieldTest) -> FieldTest:
    """Apply an element test to a field: any element of a list, nothing when missing."""
    def field(value: Any) -> bool:
        if type(value) is list:
            for item in value:
                if test(item):
                    return True
            return False
        return value is not MISSING and test(value)
    return field


def _text_test(find: Callable[[str], Any]) -> FieldTest:
    """A pattern test on a string field or on any string element of a list field."""
    def field(value: Any) -> bool:
        if type(value) is str:
            return find(value) is not None
        if type(value) is list:
            for item in value:
                if type(item) is str and find(item) is not None:
                    return True
        return False
    return field


def _element_equals(expected: Any) -> FieldTest:
    if isinstance(expected, bool) or expected is None:
        return lambda x: x is expected
    if isinstance(expected, _NUMBERS):
        return lambda x: type(x) in _NUMBERS and x == expected
    return lambda x: x == expected


def _equals(expected: Any) -> FieldTest:
    if isinstance(expected, str):
        return lambda v: v == expected or (type(v) is list and expected in v)
    lifted = _lift(_element_equals(expected))
    if expected is False:
        return lambda v: v is MISSING or lifted(v)
    return lifted


def _one_of(options: Sequence[Any]) -> FieldTest:
    if all(isinstance(o, str) for o in options):
        choices = frozenset(options)

        def is_str_in(x: Any) -> bool:
            return type(x) is str and x in choices
        lifted = _lift(is_str_in)
        return lambda v: (v in choices) if type(v) is str else lifted(v)
    result = _lift(_any([_element_equals(o) for o in options]))
    if any(o is False for o in options):
        inner = result
        return lambda v: v is MISSING or inner(v)
    return result


def _compare(op: str, bound: float) -> FieldTest:
    tests: dict[str, FieldTest] = {
        "gt": lambda x: type(x) in _NUMBERS and x > bound,
        "gte": lambda x: type(x) in _NUMBERS and x >= bound,
        "lt": lambda x: type(x) in _NUMBERS and x < bound,
        "lte": lambda x: type(x) in _NUMBERS and x <= bound,
    }
    return _lift(tests[op])


def _exists(want: bool) -> FieldTest:
    return lambda value: (value is not MISSING and value is not None) is want


def _negate(inner: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda x: not inner(x)


def _regex(pattern: str, path: Path) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise MatchProblem(path, f"bad regex {pattern!r}: {exc}") from None


def compile_condition(condition: Any, path: Path) -> FieldTest:
    """Compile one field's condition (scalar, list, or operator mapping) into a field test."""
    if isinstance(condition, list):
        return _one_of(condition)
    if not isinstance(condition, dict):
        return _equals(condition)
    tests: list[FieldTest] = []
    for op, arg in condition.items():
        where = path + (op,)
        if op == "glob":
            tests.append(_text_test(re.compile(fnmatch.translate(arg)).match))
        elif op == "regex":
            tests.append(_text_test(_regex(arg, where).search))
        elif op == "in":
            tests.append(_one_of(arg))
        elif op in ("gt", "gte", "lt", "lte"):
            tests.append(_compare(op, arg))
        elif op == "exists":
            tests.append(_exists(bool(arg)))
        elif op == "not":
            tests.append(_negate(compile_condition(arg, where)))
        else:
            raise MatchProblem(where, f"unknown operator {op!r}")
    return _all(tests)


def _field(field: str, test: FieldTest, condition: Any = None) -> Predicate:
    if '"' in field:  # a quoted segment (`attributes."com.docker.compose.service"`)
        get = _getter(field)
        return lambda event: test(get(event))
    if "." not in field and isinstance(condition, str):  # the common case, inlined
        def equals(event: Mapping[str, Any]) -> bool:
            value = event.get(field)
            return value == condition or (type(value) is list and condition in value)
        return equals
    if "." not in field:
        return lambda event: test(event.get(field, MISSING))
    get = _getter(field)
    return lambda event: test(get(event))


def _compile_mapping(match: Mapping[str, Any], path: Path, skip: frozenset[str],
                     problems: list[MatchProblem]) -> Predicate:
    predicates: list[Predicate] = []
    for key, value in match.items():
        where = path + (key,)
        try:
            if key == "any":
                predicates.append(_any([_compile_mapping(m, where + (i,), frozenset(), problems)
                                        for i, m in enumerate(value)]))
            elif key == "all":
                predicates.append(_all([_compile_mapping(m, where + (i,), frozenset(), problems)
                                        for i, m in enumerate(value)]))
            elif key == "not":
                predicates.append(_negate(_compile_mapping(value, where, frozenset(), problems)))
            elif key not in skip:
                try:
                    split_path(key)
                except FieldPathError as exc:
                    raise MatchProblem(where, str(exc)) from None
                predicates.append(_field(key, compile_condition(value, where), value))
        except MatchProblem as exc:
            problems.append(exc)
    return _all(predicates)


def _fixed(condition: Any) -> frozenset[str] | None:
    """The string values a field is pinned to, when its condition is plain equality."""
    if isinstance(condition, str):
        return frozenset((condition,))
    if isinstance(condition, list) and condition and all(isinstance(c, str) for c in condition):
        return frozenset(condition)
    return None


def compile_match(match: Mapping[str, Any], path: Path = ()) -> CompiledMatch:
    """Compile a match mapping; raise the first MatchProblem after collecting all of them."""
    problems = compile_problems(match, path)
    if problems:
        raise problems[0]
    return _compile(match, path, [])


def compile_problems(match: Mapping[str, Any], path: Path = ()) -> list[MatchProblem]:
    """Every problem in a match mapping (bad regexes...)."""
    problems: list[MatchProblem] = []
    _compile(match, path, problems)
    return problems


def _compile(match: Mapping[str, Any], path: Path, problems: list[MatchProblem]) -> CompiledMatch:
    types = _fixed(match.get("type"))
    actions = _fixed(match.get("action"))
    states = _fixed(match.get("state"))
    skip = frozenset(k for k, pinned in (("type", types), ("action", actions), ("state", states))
                     if pinned)
    left = [(key, value) for key, value in match.items() if key not in skip]
    residual_equals = None
    if len(left) == 1:  # the case _field inlines as `equals`: the same test, exactly
        key, value = left[0]
        if key not in ("any", "all", "not") and '"' not in key and "." not in key \
                and isinstance(value, str) and isinstance(key, str):
            residual_equals = (key, value)
    unused: list[MatchProblem] = []  # the same problems as above
    residual = _compile_mapping(match, path, skip, unused)
    return CompiledMatch(
        predicate=_compile_mapping(match, path, frozenset(), problems),
        residual=residual, types=types, actions=actions, states=states,
        residual_equals=None if unused else residual_equals,
    )
