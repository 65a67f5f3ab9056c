"""`eventd test FILE...`: rule unit tests, as `promtool test rules` is for Prometheus rules.

Each test runs its events through the rules with the engine itself, on a clock that follows
the events' `datetime` (so throttles and digest groups behave as they would live), with an
in-memory store and enrichment read from the test's `resources`: nothing is called and
nothing is written. It prints PASS or FAIL per test, with a diff of expected and actual,
and returns 1 if a test failed, 2 if a file could not be used.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from eventd.actions import ACTIONS, resolve
from eventd.alerts.groups import GroupedAction, Grouper
from eventd.attachments import Attacher
from eventd.commands.testfile import RuleTest, TestFileError, read
from eventd.engine import Engine
from eventd.errors import RuleError
from eventd.events import Event, Received, parse_datetime
from eventd.ops.metrics import Metrics
from eventd.pipeline import rule_vocabulary
from eventd.records import ActionJob
from eventd.ruleset.loader import load_rules
from eventd.stores.memory import MemoryStore

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
#: the clock of events without a `datetime` before any that has one (2026-01-01T00:00:00Z)
START = 1_767_225_600.0


class _TestKind:
    """An action kind's capabilities, without the kind: it names a target and calls nothing."""

    def __init__(self, name: str) -> None:
        self.name = name
        try:
            self._kind: Any = resolve(name)
        except ImportError:  # its library is not installed: a rule using it does not load
            self._kind = None
        self.per_event = bool(getattr(self._kind, "per_event", False))
        self.acts_on_objects = bool(getattr(self._kind, "acts_on_objects", False))

    def inactive(self, options: dict[str, Any]) -> bool:
        """A log line shows whatever the log level; other kinds decide from their options
        alone (an alertmanager action without a url), so they are asked, without an instance."""
        if self.name == "log" or self._kind is None:
            return False
        try:
            return bool(self._kind.inactive(None, options))
        except Exception:  # noqa: BLE001 - a kind that needs its instance: it is active
            return False

    def target(self, options: dict[str, Any]) -> str:
        return self.name


class _Resources:
    """`enrich: resource` and `enrich: logs` answered from the test's `resources` and `logs`,
    by resource URI."""

    def __init__(self, resources: dict[str, Any], logs: dict[str, list[str]]) -> None:
        self._resources = resources
        self._logs = logs

    def resource(self, event: Event) -> Any:
        return self._resources.get(str(event.get("resource_uri", "")))

    def logs(self, event: Event, lines: int, max_bytes: int, budget: float) -> list[str] | None:
        found = self._logs.get(str(event.get("resource_uri", "")))
        return None if found is None else [str(line) for line in found][-lines:]


@dataclass
class Actual:
    """What the rules did with a test's events."""

    rules: list[list[str]] = field(default_factory=list)  # per event
    actions: list[list[dict[str, Any]]] = field(default_factory=list)  # per event
    groups: list[dict[str, Any]] = field(default_factory=list)


def run(paths: Sequence[Path], out: IO[str]) -> int:
    """Run every test of every file (a directory: its *.yaml / *.yml files); the exit code."""
    passed = failed = unusable = 0
    for path in _files(paths, out):
        if path is None:
            unusable += 1
            continue
        try:
            tests = read(path)
            # the files a test names may be anyone's: quote nothing of one that is no rule file
            ruleset = load_rules(tests.rule_files, tests.env, rule_vocabulary(tests.source),
                                 quote_other_files=False)
        except TestFileError as exc:
            for problem in exc.problems:
                print(f"ERROR {problem}", file=out)
            unusable += 1
            continue
        except RuleError as exc:
            print(f"ERROR {path}: the rules do not load: {exc}", file=out)
            unusable += 1
            continue
        unknown = _unknown_rules(tests.tests, ruleset)
        if unknown:
            print(f"ERROR {path}: {unknown}", file=out)
            unusable += 1
            continue
        for test in tests.tests:
            expected, actual = compare(test, run_test(ruleset, test))
            if expected == actual:
                passed += 1
                print(f"PASS {path}: {test.name}", file=out)
                continue
            failed += 1
            print(f"FAIL {path}: {test.name}", file=out)
            for line in difflib.unified_diff(_yaml(expected), _yaml(actual), "expected", "actual",
                                             lineterm=""):
                print(f"  {line}", file=out)
    total = passed + failed
    print(f"{total} test{'s' if total != 1 else ''}: {passed} passed, {failed} failed"
          + (f"; {unusable} file{'s' if unusable != 1 else ''} could not be used" if unusable
             else ""), file=out)
    if unusable:
        return EXIT_UNUSABLE
    return EXIT_FAILED if failed else EXIT_OK


def _unknown_rules(tests: Sequence[RuleTest], ruleset: Any) -> str:
    """A message naming the first rule a test expects that is not loaded (a typo would
    otherwise pass as "never matched"), or ""."""
    for test in tests:
        named = list(test.never) + [g["rule"] for g in test.groups or []]
        for expectation in test.expect:
            named += list(expectation.get("rules", []))
            named += [a["rule"] for a in expectation.get("actions", [])]
        for name in named:
            if name not in ruleset.by_name:
                close = difflib.get_close_matches(name, list(ruleset.by_name), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return (f"test {test.name!r} names rule {name!r}{hint}, which its rule files do "
                        f"not define (or disable)")
    return ""


def _files(paths: Sequence[Path], out: IO[str]) -> list[Path | None]:
    found: list[Path | None] = []
    for path in paths:
        try:
            if path.is_dir():
                found.extend(sorted(p for p in path.iterdir()
                                    if p.suffix in (".yaml", ".yml") and p.is_file()))
            elif path.exists():
                found.append(path)
            else:
                print(f"ERROR {path}: no such file or directory", file=out)
                found.append(None)
        except OSError as exc:  # no permission to list or look at it: one line, not a trace
            print(f"ERROR {path}: cannot read: {exc.strerror or exc}", file=out)
            found.append(None)
    return found


def run_test(ruleset: Any, test: RuleTest) -> Actual:
    """Run one test's events through the engine, on the events' clock; nothing leaves it."""
    clock = [START]
    metrics = Metrics()
    store = MemoryStore()
    jobs: list[ActionJob] = []
    grouped: list[ActionJob] = []
    kinds = {name: _TestKind(name) for name in ACTIONS}

    def lookup(rule: str, index: int) -> GroupedAction | None:
        found = ruleset.by_name.get(rule)
        return found.actions[index] if found is not None and index < len(found.actions) else None

    grouper = Grouper(store, grouped.append, metrics, lookup, lambda kind, options: kind)
    enricher = _Resources(test.resources, test.logs)
    engine = Engine(ruleset, jobs.append, kinds, store, metrics, enricher=enricher,
                    clock=lambda: clock[0], grouper=grouper,
                    attacher=Attacher(enricher, store, metrics))  # history: in this store
    actual = Actual()
    for event in test.events:
        when = parse_datetime(event.get("datetime"))
        clock[0] = when if when is not None else clock[0]
        grouper.due(clock[0])
        outcome = engine.process(Received(event=dict(event), received_at=clock[0]))
        actual.rules.append(list(outcome.rules) if outcome is not None else [])
        actual.actions.append([] if outcome is None else [
            {"rule": d.rule, "kind": d.kind, "status": "run" if d.status == "accepted" else d.status,
             **({"options": d.options} if d.options is not None else {})}
            for d in outcome.decisions])
    grouper.due(math.inf)  # groups still open close at their own time
    actual.groups = [{"rule": job.rule, "kind": job.kind,
                      "count": job.context.get("group", {}).get("count"), "options": job.options}
                     for job in grouped]
    return actual


def compare(test: RuleTest, actual: Actual) -> tuple[dict[str, Any], dict[str, Any]]:
    """The expected outcome and the actual one seen through it (only what it names, options
    only as far as it gives them): the test passes when the two are equal."""
    expected: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    if test.expect:
        expected["expect"], seen["expect"] = [], []
        for expectation in test.expect:
            index = expectation["event"]
            exp: dict[str, Any] = {"event": index}
            act: dict[str, Any] = {"event": index}
            if "rules" in expectation:
                exp["rules"], act["rules"] = list(expectation["rules"]), actual.rules[index]
            if "actions" in expectation:
                exp["actions"] = [_normal(a) for a in expectation["actions"]]
                act["actions"] = _project_list(actual.actions[index], exp["actions"])
            expected["expect"].append(exp)
            seen["expect"].append(act)
    if test.groups is not None:
        expected["groups"] = [{k: g[k] if k != "kind" else g.get("kind", "webhook")
                               for k in ("rule", "kind", "count", "options") if k in g or k == "kind"}
                              for g in test.groups]
        seen["groups"] = _project_list(actual.groups, expected["groups"])
    if test.never:
        matched = {rule for rules in actual.rules for rule in rules}
        expected["never"] = list(test.never)
        seen["never"] = [rule for rule in test.never if rule not in matched]
    return expected, seen


def _normal(action: dict[str, Any]) -> dict[str, Any]:
    result = dict(action)
    if result.get("status") == "run":
        del result["status"]
    return result


def _project_list(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[Any]:
    projected: list[Any] = []
    for number, item in enumerate(actual):
        shape = expected[number] if number < len(expected) else {}
        result = {k: v for k, v in item.items() if k != "options" and
                  not (k == "status" and v == "run") and (k in shape or k in ("rule", "kind"))}
        if "options" in shape and "options" in item:
            result["options"] = _project(item["options"], shape["options"])
        elif "options" in shape:
            result["options"] = None
        if "status" not in result and item.get("status") not in (None, "run"):
            result["status"] = item["status"]
        projected.append(result)
    return projected


def _project(actual: Any, expected: Any) -> Any:
    """`actual` cut down to the keys `expected` names (recursively), so that a subset compares."""
    if isinstance(actual, dict) and isinstance(expected, dict):
        return {k: _project(actual[k], expected[k]) for k in expected if k in actual}
    if isinstance(actual, list) and isinstance(expected, list) and len(actual) == len(expected):
        return [_project(a, e) for a, e in zip(actual, expected, strict=True)]
    return actual


class _Dumper(yaml.SafeDumper):  # type: ignore[misc,unused-ignore]
    """Writes a value out in full each time (no `&id001` anchors), so diffs show it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(value: Any) -> list[str]:
    text: str = yaml.dump(value, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=100)
    return text.splitlines()
