"""The format of rule test files (`eventd test`), as a JSON Schema, and reading one.

A test file names rule files and lists tests; each test gives events (inline, or a JSON-lines
file recorded with `run --record`) and what must come of them. Paths are relative to the test
file. `eventd schema --tests` prints the schema. What is wrong with a test file is said as
`eventd check` says it of a rule file: `FILE:LINE:COL: message`, with a did-you-mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from eventd.errors import MalformedEvent
from eventd.events import parse_event
from eventd.ruleset.diagnostics import at, label, schema_issues
from eventd.ruleset.model import Problem
from eventd.ruleset.positions import Issue, JsonPath

_ACTION = {
    "type": "object",
    "description": "one action of a matched rule, as the engine decided it",
    "required": ["rule", "kind"],
    "additionalProperties": False,
    "properties": {
        "rule": {"type": "string"},
        "kind": {"type": "string", "description": "log, webhook, alertmanager, dockercloud, audit"},
        "status": {"enum": ["run", "throttled", "skipped", "failed", "shadow", "grouped"],
                   "default": "run",
                   "description": "run: accepted (it would be called); grouped: the event joined "
                                  "a digest group (see `groups`); shadow: a `mode: shadow` rule"},
        "options": {"type": "object",
                    "description": "a subset of the rendered options: every key given must be "
                                   "there with this value; keys left out are not compared"},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:eventd:rule-tests",
    "title": "eventd rule tests (eventd test FILE...)",
    "type": "object",
    "required": ["rule_files", "tests"],
    "additionalProperties": False,
    "patternProperties": {"^x-": {"description": "ignored: a place for YAML anchors"}},
    "properties": {
        "rule_files": {"type": "array", "minItems": 1, "items": {"type": "string"},
                       "description": "rule files (or directories), relative to this file"},
        "source": {"enum": ["dockercloud", "docker"], "default": "dockercloud",
                   "description": "whose events the rules are for (the names `eventd check` "
                                  "warns about): Docker Cloud's or a Docker Engine's"},
        "env": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "values of ${VAR} in the rules; the real environment is not read, "
                               "so a test gives the same result everywhere"},
        "tests": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/test"}},
    },
    "$defs": {
        "test": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "oneOf": [{"required": ["events"]}, {"required": ["events_file"]}],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "events": {"type": "array", "items": {"type": "object"},
                           "description": "events as the stream sends them; throttles and groups "
                                          "follow their `datetime`, not the wall clock"},
                "events_file": {"type": "string",
                                "description": "a JSON-lines file of events (run --record), "
                                               "relative to this file"},
                "resources": {"type": "object", "additionalProperties": {},
                              "description": "what `enrich: resource` reads, by resource URI "
                                             "(absent: the rule sees resource = none)"},
                "logs": {"type": "object",
                         "additionalProperties": {"type": "array", "items": {"type": "string"}},
                         "description": "what `enrich: logs` reads, by resource URI: the "
                                        "container's output lines (redacted and cut as live)"},
                "expect": {"type": "array", "items": {"$ref": "#/$defs/expectation"}},
                "groups": {"type": "array", "items": {"$ref": "#/$defs/group"},
                           "description": "every digest sent by a grouped webhook, in the order "
                                          "they close (groups still open after the last event "
                                          "close then)"},
                "never": {"type": "array", "items": {"type": "string"},
                          "description": "rules that must match none of the events"},
            },
        },
        "expectation": {
            "type": "object",
            "required": ["event"],
            "additionalProperties": False,
            "properties": {
                "event": {"type": "integer", "minimum": 0,
                          "description": "the event's position in the test's events, from 0"},
                "rules": {"type": "array", "items": {"type": "string"},
                          "description": "exactly the rules that match the event, in order"},
                "actions": {"type": "array", "items": _ACTION,
                            "description": "exactly the actions of the matched rules, in order"},
            },
        },
        "group": {
            "type": "object",
            "required": ["rule"],
            "additionalProperties": False,
            "properties": {
                "rule": {"type": "string"},
                "kind": {"type": "string", "default": "webhook"},
                "count": {"type": "integer", "minimum": 1},
                "options": {"type": "object", "description": "a subset of the rendered options"},
            },
        },
    },
}


class TestFileError(Exception):
    """A test file that cannot be read or does not follow the format; `problems`: one line each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


@dataclass
class RuleTest:
    """One test of a file: its events and what is expected of them."""

    name: str
    events: list[dict[str, Any]]
    resources: dict[str, Any] = field(default_factory=dict)
    expect: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] | None = None
    never: list[str] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TestFile:
    """A test file: the rule files it loads, their environment, its tests."""

    path: Path
    rule_files: list[Path]
    env: dict[str, str]
    tests: list[RuleTest]
    source: str = "dockercloud"


def read(path: Path) -> TestFile:
    """Read and check a test file; TestFileError says what is wrong and where."""
    try:
        text = path.read_text("utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise TestFileError(f"{path}: cannot read: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise TestFileError(f"{where}: YAML syntax error: "
                            f"{exc.problem or exc.context or 'invalid YAML'}") from None
    except yaml.YAMLError as exc:
        raise TestFileError(f"{path}: YAML syntax error: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an int of > 4300 digits, nesting too deep
        raise TestFileError(f"{path}: cannot read: a value YAML cannot convert "
                            f"({str(exc)[:200]})") from None
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data))
    if errors:
        issues = dict.fromkeys(issue for error in errors for issue in _issues(error))
        problems = sorted((_problem(path, text, issue) for issue in issues),
                          key=lambda p: (p.line, p.col))
        raise TestFileError(problems[0].format(), [p.format() for p in problems])
    base = path.parent
    tests = []
    for index, raw in enumerate(data["tests"]):
        events = raw.get("events")
        if events is None:
            events = _read_events(base / raw["events_file"])
        for number, expectation in enumerate(raw.get("expect", [])):
            if expectation["event"] >= len(events):
                raise TestFileError(_problem(path, text, Issue(
                    ("tests", index, "expect", number, "event"), False,
                    f"test {raw['name']!r}: expect[{number}] names event "
                    f"{expectation['event']}, but the test has {len(events)} "
                    f"event{'' if len(events) == 1 else 's'}")).format())
        tests.append(RuleTest(raw["name"], [dict(e) for e in events], dict(raw.get("resources", {})),
                              list(raw.get("expect", [])), raw.get("groups"),
                              list(raw.get("never", [])), dict(raw.get("logs", {}))))
    return TestFile(path, [base / p for p in data["rule_files"]], dict(data.get("env", {})), tests,
                    data.get("source", "dockercloud"))


def _issues(error: jsonschema.ValidationError) -> list[Issue]:
    """A schema error in the words `eventd check` uses (unknown keys get a did-you-mean)."""
    path: JsonPath = tuple(error.absolute_path)
    if error.validator == "oneOf" and path[:1] == ("tests",):
        return [Issue(path, False, at(label(path), "a test gives its events in `events` or in "
                                                   "`events_file`, one of the two"))]
    return schema_issues(error)


def _problem(path: Path, text: str, issue: Issue) -> Problem:
    """The issue at the line and column where its key (or value) is in the file."""
    line, col = _position(text, issue.path, issue.at_key)
    return Problem(str(path), line, col, None, issue.message)


def _position(text: str, path: JsonPath, at_key: bool) -> tuple[int, int]:
    """Where `path` starts in the YAML text (its key's start if `at_key`); the closest enclosing
    value when it cannot be followed (a merge key, an alias)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 1, 1
    mark = node.start_mark if node is not None else None
    for depth, part in enumerate(path):
        child = key = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    key, child = key_node, value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        last = depth == len(path) - 1
        mark = key.start_mark if (last and at_key and key is not None) else child.start_mark
        node = child
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _read_events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TestFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(dict(parse_event(line)))
        except MalformedEvent as exc:
            raise TestFileError(f"{path}:{number}: not an event ({exc.reason})") from None
    return events


def schema_text() -> str:
    """The schema, as `eventd schema --tests` prints it."""
    return json.dumps(SCHEMA, indent=2)
