"""Load rule files: YAML with positions, `${VAR}` expansion, JSON-Schema checks, compiled rules.

Every problem in every file is collected before anything is reported, and each names
`FILE:LINE:COL` of the offending key or value, so `eventd check` can list them all at once.
The rule format itself is described in `rules_schema.json` (printed by `eventd schema`) and,
for matching, in `eventd.ruleset.matching`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import yaml

from eventd.actions import ACTIONS, UnknownActionKind, resolve
from eventd.errors import ConfigError, RuleError
from eventd.ruleset import templates
from eventd.ruleset.interpolate import InterpolationError, expand
from eventd.ruleset.matching import CompiledMatch, RuleSet, compile_match, compile_problems
from eventd.settings import parse_duration

__all__ = ["ActionSpec", "Problem", "Rule", "RuleSet", "ThrottleSpec", "check_paths",
           "load_rules", "schema"]

JsonPath = tuple[str | int, ...]
_SCALARS = (str, int, float, bool, type(None))
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rule file, with where it is (line and column from 1)."""

    file: str
    line: int
    col: int
    rule: str | None
    message: str

    def format(self) -> str:
        """`FILE:LINE:COL: rule NAME: message`, as compilers print it, so editors can jump."""
        where = f"{self.file}:{self.line}:{self.col}: "
        return where + (f"rule {self.rule}: " if self.rule else "") + self.message

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """At most one run per rendered `key` per `window` seconds."""

    key: str  # the template source
    window: float
    _render: templates.Renderer = field(repr=False, compare=False)

    def render_key(self, context: Mapping[str, Any]) -> str:
        """The throttle key for one event (raises TemplateError)."""
        return str(self._render(context))


@dataclass(frozen=True, eq=False, slots=True)
class ActionSpec:
    """One `{kind: options}` entry of a rule, its templates compiled."""

    kind: str
    index: int  # position in the rule's actions, from 0
    options: dict[str, Any]  # as written, after ${VAR} expansion
    rule: str
    _render: templates.Renderer = field(repr=False)

    def render(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """The options with every template rendered (raises TemplateError naming rule+action)."""
        result: dict[str, Any] = self._render(context)
        return result


@dataclass(frozen=True, eq=False, slots=True)
class Rule:
    """A loaded, validated rule; `compiled` holds its match as closures."""

    name: str
    description: str
    enabled: bool
    throttle: ThrottleSpec | None
    enrich: str | None
    when: templates.Condition | None
    allow_self_caused: bool
    actions: tuple[ActionSpec, ...]
    file: str
    line: int
    match: Mapping[str, Any] = field(default_factory=dict, repr=False)
    compiled: CompiledMatch = field(default=None, repr=False)  # type: ignore[assignment]
    _kinds: frozenset[str] = field(init=False, repr=False, default=frozenset())

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the rule's `match` holds for `event`."""
        return self.compiled.predicate(event)

    def throttle_key(self, context: Mapping[str, Any]) -> str:
        """The rendered throttle key ("" when the rule has no throttle)."""
        return "" if self.throttle is None else self.throttle.render_key(context)

    def when_holds(self, context: Mapping[str, Any]) -> bool:
        """Whether `when` holds (True without one); raises TemplateError."""
        return True if self.when is None else self.when.holds(context)

    @property
    def kinds(self) -> frozenset[str]:
        """The action kinds this rule uses (computed once: the engine asks on every match)."""
        return self._kinds

    def __post_init__(self) -> None:
        object.__setattr__(self, "_kinds", frozenset(a.kind for a in self.actions))


# --- the schema ------------------------------------------------------------------------------

@functools.cache
def _base_schema() -> dict[str, Any]:
    text = importlib.resources.files("eventd.ruleset").joinpath("schema.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_base_schema())


def schema() -> dict[str, Any]:
    """The JSON Schema of rule files, with the options schema of every kind that loads."""
    result = copy.deepcopy(_base_schema())
    kinds: dict[str, Any] = {}
    for name in ACTIONS:
        cls = _kind_class(name)
        options = getattr(cls, "schema", None) if cls is not None else None
        sub = copy.deepcopy(options) if isinstance(options, dict) else {"type": "object"}
        sub.setdefault("$id", f"urn:eventd:action:{name}")  # its own `#/...` refs keep working
        kinds[name] = sub
    action = result["$defs"]["action"]
    action["properties"] = kinds
    action["propertyNames"] = {"enum": sorted(ACTIONS)}
    return result


def _kind_class(name: str) -> Any:
    try:
        return resolve(name)
    except Exception:
        return None


# --- YAML with positions ---------------------------------------------------------------------

class _MarkLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    """A SafeLoader we only use to compose nodes (which carry marks) and construct scalars."""


class _Issue(NamedTuple):
    path: JsonPath
    at_key: bool
    message: str


class _Doc:
    """A parsed file: data, where each value and key started, and issues found so far."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.data: Any = None
        self.values: dict[JsonPath, tuple[int, int]] = {}
        self.keys: dict[JsonPath, tuple[int, int]] = {}
        self.issues: list[_Issue] = []

    def where(self, path: JsonPath, at_key: bool = False) -> tuple[int, int]:
        if at_key and path in self.keys:
            return self.keys[path]
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, (1, 1))

    def rule_name(self, path: JsonPath) -> str | None:
        if len(path) >= 2 and path[0] == "rules" and isinstance(self.data, dict):
            rules = self.data.get("rules")
            if isinstance(rules, list) and isinstance(path[1], int) and path[1] < len(rules):
                rule = rules[path[1]]
                if isinstance(rule, dict) and isinstance(rule.get("name"), str):
                    return str(rule["name"])
        return None

    def problem(self, issue: _Issue) -> Problem:
        line, col = self.where(issue.path, issue.at_key)
        return Problem(self.label, line, col, self.rule_name(issue.path), issue.message)


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _build(loader: _MarkLoader, node: yaml.Node, path: JsonPath, environ: Mapping[str, str],
           doc: _Doc) -> Any:
    if len(path) > _MAX_DEPTH:
        raise yaml.MarkedYAMLError(problem="nested too deeply (a recursive alias?)",
                                   problem_mark=node.start_mark)
    doc.values[path] = _pos(node.start_mark)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                doc.values[path + ("?",)] = _pos(key_node.start_mark)
                doc.issues.append(_Issue(path + ("?",), False, "keys must be plain strings"))
                continue
            key = key_node.value  # the text as written: `on:` stays "on", not True
            key_path = path + (key,)
            doc.keys[key_path] = _pos(key_node.start_mark)
            if key in mapping:
                doc.issues.append(_Issue(key_path, True, f"duplicate key {key!r}"))
            mapping[key] = _build(loader, value_node, key_path, environ, doc)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, child, path + (i,), environ, doc)
                for i, child in enumerate(node.value)]
    value = loader.construct_object(node)
    if not isinstance(value, _SCALARS):  # dates, binary: keep the text
        value = node.value
    if isinstance(value, str) and "$" in value:
        try:
            expanded = expand(value, environ)
        except InterpolationError as exc:
            doc.issues.extend(_Issue(path, False, m) for m in exc.problems)
            return value
        # an unquoted `${TIMEOUT:-5}` becomes what `5` would have been: a number
        value = _plain(loader, expanded) if node.style is None and expanded != value else expanded
    return value


def _plain(loader: _MarkLoader, text: str) -> Any:
    tag = loader.resolve(yaml.ScalarNode, text, (True, False))
    try:
        value = loader.construct_object(yaml.ScalarNode(tag, text))
    except yaml.YAMLError:
        return text
    return value if isinstance(value, _SCALARS) else text


def _parse(doc: _Doc, text: str, environ: Mapping[str, str]) -> None:
    loader = _MarkLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            doc.data = _build(loader, node, (), environ, doc)
    finally:
        loader.dispose()


# --- checking ----------------------------------------------------------------------------------

_TYPE_NAMES = {"string": "a string", "number": "a number", "integer": "an integer",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "null"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _label(path: JsonPath) -> str:
    """`match.state`, `actions[1].webhook.url` (relative to the rule when inside one)."""
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        path = path[2:]
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _at(label: str, message: str) -> str:
    return f"{label}: {message}" if label else message


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _schema_issues(error: jsonschema.ValidationError, prefix: JsonPath = ()) -> list[_Issue]:
    path = prefix + tuple(error.absolute_path)
    label, kind, instance = _label(path), error.validator, error.instance
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        where = f" in {label}" if label else ""
        return [_Issue(path + (key,), True, f"unknown key {key!r}{_did_you_mean(key, known)}"
                       f"{where}; expected one of: {', '.join(known)}")
                for key in instance if key not in known
                and not any(re.search(p, key) for p in patterns)]
    if kind == "required" and isinstance(instance, dict):
        return [_Issue(path, False, _at(label, f"missing required key {key!r}"))
                for key in error.validator_value if key not in instance]
    if kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) \
            else [error.validator_value]
        names = " or ".join(_TYPE_NAMES.get(str(w), str(w)) for w in wanted)
        return [_Issue(path, False, _at(label, f"expected {names}, got {_describe(instance)}"))]
    if kind == "minItems" and instance == []:
        return [_Issue(path, False, _at(label, "must not be empty"))]
    if kind in ("minProperties", "maxProperties") and path[-2:-1] == ("actions",):
        return [_Issue(path, False, f"{label}: an action is one mapping {{kind: options}}, "
                                    f"got {len(instance)} keys")]
    if kind == "minProperties":
        return [_Issue(path, False, f"{label}: an empty mapping; give at least one operator")]
    if kind == "pattern" and error.validator_value.startswith("^\\s*[0-9]"):
        return [_Issue(path, False, f"{label}: {instance!r} is not a duration "
                                    "(seconds, or e.g. 30s, 10m, 1h)")]
    return [_Issue(path, False, _at(label, error.message))]


class _Checker:
    """Checks and compiles the rules of many files, remembering names across files."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[Problem] = []
        self.rules: list[Rule] = []
        self.names: dict[str, tuple[str, int]] = {}

    def file(self, label: str, path: Path) -> None:
        doc = _Doc(label)
        try:
            text = path.read_text("utf-8")
            _parse(doc, text, self.environ)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = _pos(mark) if mark else (1, 1)
            detail = exc.problem or exc.context or "invalid YAML"
            self.problems.append(Problem(label, line, col, None, f"YAML syntax error: {detail}"))
            return
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            self.problems.append(Problem(label, 1, 1, None, f"cannot read: {exc}"))
            return
        if doc.data is None:  # an empty file, or only comments
            doc.data = {}
        unexpanded = {i.path for i in doc.issues}
        doc.issues.extend(i for e in _validator().iter_errors(doc.data) for i in _schema_issues(e))
        bad = {i.path for i in doc.issues}
        rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        for index, raw in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(raw, dict):
                self._rule(doc, index, raw, bad, unexpanded)
        seen: set[tuple[JsonPath, bool, str]] = set()
        for issue in doc.issues:
            if issue not in seen:
                seen.add(issue)
                self.problems.append(doc.problem(issue))

    def _rule(self, doc: _Doc, index: int, raw: dict[str, Any], bad: set[JsonPath],
              unexpanded: set[JsonPath]) -> None:
        base: JsonPath = ("rules", index)
        start = len(doc.issues)

        def clean(*part: str | int) -> bool:
            prefix = base + part
            return not any(p[:len(prefix)] == prefix for p in bad)

        def clean_schema(*part: str | int) -> bool:
            prefix = base + part
            return not any(p[:len(prefix)] == prefix for p in bad - unexpanded)

        name = raw.get("name")
        if isinstance(name, str) and name:
            line = doc.values.get(base, (1, 1))[0]
            if name in self.names:
                first_file, first_line = self.names[name]
                doc.issues.append(_Issue(base + ("name",), False,
                                         f"duplicate rule name {name!r} "
                                         f"(first defined at {first_file}:{first_line})"))
            else:
                self.names[name] = (doc.label, line)
        else:
            name = f"#{index + 1}"
        match = raw.get("match")
        compiled = None
        if isinstance(match, dict):
            found = [p for key, value in match.items() if clean("match", key)
                     for p in compile_problems({key: value}, base + ("match",))]
            doc.issues.extend(_Issue(p.path, False, _at(_label(p.path), p.message))
                              for p in found)
            if not found and clean("match"):
                compiled = compile_match(match, base + ("match",))
        throttle = raw.get("throttle")
        window = 0.0
        if isinstance(throttle, dict):
            if clean("throttle", "window") and "window" in throttle:
                try:
                    window = parse_duration(throttle["window"], "throttle.window")
                except ConfigError as exc:
                    doc.issues.append(_Issue(base + ("throttle", "window"), False, str(exc)))
            if clean("throttle", "key") and isinstance(throttle.get("key"), str):
                self._templates(doc, base + ("throttle", "key"), throttle["key"])
        when = raw.get("when")
        if clean("when") and isinstance(when, str):
            doc.issues.extend(_Issue(base + ("when",), False, f"when: {m}")
                              for m in templates.check_condition(when))
        actions = raw.get("actions")
        for i, item in enumerate(actions if isinstance(actions, list) else []):
            if clean_schema("actions", i) and isinstance(item, dict) and len(item) == 1:
                kind, options = next(iter(item.items()))
                self._action(doc, base + ("actions", i, kind), kind, options, unexpanded)
        if len(doc.issues) > start or any(p[:2] == base for p in bad) or compiled is None:
            return
        assert isinstance(match, dict) and isinstance(actions, list)
        self.rules.append(Rule(
            name=name, description=raw.get("description", ""), enabled=raw.get("enabled", True),
            throttle=None if throttle is None else ThrottleSpec(
                throttle["key"], window,
                templates.compile_tree(throttle["key"], name, "throttle.key")),
            enrich=raw.get("enrich"),
            when=None if when is None else templates.Condition(when, name),
            allow_self_caused=raw.get("allow_self_caused", False),
            actions=tuple(
                ActionSpec(kind, i, options, name, templates.compile_tree(
                    options, name, f"action {i + 1} ({kind}) options"))
                for i, (kind, options) in enumerate(next(iter(a.items())) for a in actions)),
            file=doc.label, line=doc.values.get(base, (1, 1))[0], match=match,
            compiled=compiled))

    def _templates(self, doc: _Doc, path: JsonPath, value: Any) -> None:
        doc.issues.extend(_Issue(path + sub, False, _at(_label(path + sub), message))
                          for sub, message in templates.check_tree(value))

    def _action(self, doc: _Doc, path: JsonPath, kind: str, options: dict[str, Any],
                unexpanded: set[JsonPath]) -> None:
        """Check one action: its kind, its options (kind schema + validate()), its templates.

        Options holding a `${VAR}` that could not be expanded were already reported: schema
        errors at those values are left out, and validate() (whose messages have no exact
        position) is skipped for that action.
        """
        expansion_failed = any(p[:len(path)] == path for p in unexpanded)
        try:
            cls = resolve(kind)
        except UnknownActionKind as exc:
            doc.issues.append(_Issue(path, True, exc.message))
            return
        except ImportError:
            cls = None  # the kind is registered but not importable yet: accept any mapping
        except Exception as exc:
            doc.issues.append(_Issue(path, True, f"action kind {kind!r} failed to load: {exc!r}"))
            return
        if cls is not None:
            kind_schema = getattr(cls, "schema", None)
            try:
                if isinstance(kind_schema, dict):
                    validator = jsonschema.Draft202012Validator(kind_schema)
                    for error in validator.iter_errors(options):
                        doc.issues.extend(i for i in _schema_issues(error, path)
                                          if i.path not in unexpanded)
                messages = cls.validate(options) \
                    if hasattr(cls, "validate") and not expansion_failed else []
            except Exception as exc:  # a broken kind must not hide the other problems
                doc.issues.append(_Issue(path, True,
                                         f"action kind {kind!r} could not check options: {exc!r}"))
                messages = []
            doc.issues.extend(_Issue(path, False, _at(_label(path), m)) for m in messages)
        self._templates(doc, path, options)


def _files(paths: Sequence[str | Path], checker: _Checker) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for given in paths:
        label, path = str(given), Path(given)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.suffix in (".yaml", ".yml") and child.is_file():
                    found.append((os.path.join(label, child.name), child))
        elif path.exists():
            found.append((label, path))
        else:
            checker.problems.append(Problem(label, 1, 1, None, "no such file or directory"))
    return found


def _check(paths: Sequence[str | Path], environ: Mapping[str, str]) -> _Checker:
    checker = _Checker(environ)
    for label, path in _files(paths, checker):
        checker.file(label, path)
    checker.problems.sort(key=lambda p: (p.file, p.line, p.col))
    return checker


def check_paths(paths: Sequence[str | Path], environ: Mapping[str, str]) -> list[Problem]:
    """Every problem in every rule file under `paths`, sorted by file, line and column."""
    return _check(paths, environ).problems


def load_rules(paths: Sequence[str | Path], environ: Mapping[str, str]) -> RuleSet:
    """Load, validate and compile rule files; raise RuleError listing every problem."""
    checker = _check(paths, environ)
    if checker.problems:
        count = len(checker.problems)
        raise RuleError(f"{count} problem{'s' if count > 1 else ''} in rule files:\n"
                        + "\n".join(p.format() for p in checker.problems),
                        problems=list(checker.problems))
    return RuleSet(checker.rules)
