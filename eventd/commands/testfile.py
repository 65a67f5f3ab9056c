"""The format of rule test files (`eventd test`), as a JSON Schema, and reading one.

A test file names rule files and lists tests; each test gives events (inline, or a JSON-lines
file recorded with `run --record`) and what must come of them. Paths are relative to the test
file. `eventd schema --tests` prints the schema.
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
    """A test file that cannot be read or does not follow the format."""


@dataclass
class RuleTest:
    """One test of a file: its events and what is expected of them."""

    name: str
    events: list[dict[str, Any]]
    resources: dict[str, Any] = field(default_factory=dict)
    expect: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] | None = None
    never: list[str] = field(default_factory=list)


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
        data = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TestFileError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise TestFileError(f"{path}: YAML syntax error: {exc}") from None
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data),
                    key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top)"
        raise TestFileError(f"{path}: {where}: {first.message}")
    base = path.parent
    tests = []
    for raw in data["tests"]:
        events = raw.get("events")
        if events is None:
            events = _read_events(base / raw["events_file"])
        for number, expectation in enumerate(raw.get("expect", [])):
            if expectation["event"] >= len(events):
                raise TestFileError(f"{path}: test {raw['name']!r}: expect[{number}] names event "
                                    f"{expectation['event']}, but there are {len(events)} events")
        tests.append(RuleTest(raw["name"], [dict(e) for e in events], dict(raw.get("resources", {})),
                              list(raw.get("expect", [])), raw.get("groups"),
                              list(raw.get("never", []))))
    return TestFile(path, [base / p for p in data["rule_files"]], dict(data.get("env", {})), tests,
                    data.get("source", "dockercloud"))


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
