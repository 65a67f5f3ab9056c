"""Load rule files into a RuleSet: read, parse with positions, check, compile.

Every problem in every file is collected before anything is reported, and each names
`FILE:LINE:COL` of the offending key or value, so `eventd check` can list them all at once.
The rule format itself is described in `schema.json` (printed by `eventd schema`) and,
for matching, in `eventd.ruleset.matching`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from eventd.actions import ACTIONS, UnknownActionKind, resolve
from eventd.errors import ConfigError, RuleError
from eventd.ruleset import templates
from eventd.ruleset.diagnostics import (
    DOCKERCLOUD,
    WARNING,
    Vocabulary,
    at,
    label,
    match_warnings,
    schema_issues,
)
from eventd.ruleset.enrichment import parse_enrich
from eventd.ruleset.index import RuleSet
from eventd.ruleset.matching import compile_match, compile_problems
from eventd.ruleset.model import ActionSpec, GroupSpec, Problem, Rule, ThrottleSpec
from eventd.ruleset.positions import MAX_FILE_BYTES, Doc, Issue, JsonPath, LimitExceeded, parse, pos
from eventd.ruleset.quickcheck import conforms
from eventd.settings import parse_duration

if TYPE_CHECKING:
    import jsonschema  # imported where a document is not plainly valid (~5 MiB)

__all__ = ["ActionSpec", "CheckResult", "Problem", "Rule", "RuleSet", "ThrottleSpec", "check",
           "check_paths", "load_rules", "schema"]

log = logging.getLogger(__name__)



@functools.cache
def _base_schema() -> dict[str, Any]:
    # pkgutil, not importlib.resources (and zipfile with it): 0.4 MiB less for `eventd run`
    data = pkgutil.get_data("eventd.ruleset", "schema.json")
    if data is None:
        raise FileNotFoundError("eventd.ruleset: schema.json")
    result: dict[str, Any] = json.loads(data)
    return result


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(_base_schema())


def _schema_errors(schema: dict[str, Any], instance: Any) -> list[jsonschema.ValidationError]:
    """jsonschema's errors, asked for only when the quick check does not say valid."""
    if conforms(schema, instance):
        return []
    import jsonschema

    validator = _validator() if schema is _base_schema() \
        else jsonschema.Draft202012Validator(schema)
    return list(validator.iter_errors(instance))


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


class _Checker:
    """Checks and compiles the rules of many files, remembering names across files."""

    def __init__(self, environ: Mapping[str, str], vocabulary: Vocabulary = DOCKERCLOUD,
                 quote_other_files: bool = True) -> None:
        self.environ = environ
        self.vocabulary = vocabulary  # the source's events, for the typo warnings
        #: False: a file that is not a rule file gets one line that quotes nothing of it
        self.quote_other_files = quote_other_files
        self.problems: list[Problem] = []
        self.rules: list[Rule] = []
        self.names: dict[str, tuple[str, int]] = {}
        self.files = 0
        self.found = 0  # rules found, valid or not

    def file(self, label: str, path: Path) -> None:
        """Check one file, adding its rules and its problems."""
        self.files += 1
        doc = Doc(label)
        text = ""
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise LimitExceeded(f"file too large: {size} bytes, more than the "
                                    f"{MAX_FILE_BYTES} a rule file may hold")
            text = path.read_text("utf-8")
            parse(doc, text, self.environ)
        except LimitExceeded as exc:
            self.problems.append(Problem(label, exc.line, exc.col, None, exc.message))
            return
        except RecursionError:  # a cap above should have stopped it first
            self.problems.append(Problem(label, 1, 1, None, "nested too deeply to read"))
            return
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = pos(mark) if mark else (1, 1)
            detail = exc.problem or exc.context or "invalid YAML"
            if not self.quote_other_files:  # PyYAML's words may quote it (an alias's name)
                detail = f"not shown here (`eventd check {label}` shows it)"
            self.problems.append(Problem(label, line, col, None, doc.scrub(f"YAML syntax error: {detail}")))
            return
        except yaml.reader.ReaderError as exc:  # a control character: say where, on one line
            before = text[:exc.position]
            line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
            self.problems.append(Problem(label, line, col, None,
                                         f"YAML syntax error: character #x{exc.character:04x} is not "
                                         "allowed in YAML (a control character)"))
            return
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            self.problems.append(Problem(label, 1, 1, None, f"cannot read: {_why(exc)}"))
            return
        except ValueError as exc:  # a YAML scalar Python refuses: an int of > 4300 digits
            self.problems.append(Problem(label, 1, 1, None,
                                         f"cannot read: a value YAML cannot convert ({_why(exc)})"))
            return
        if doc.data is None:  # an empty file, or only comments
            doc.data = {}
        if not self.quote_other_files and not (isinstance(doc.data, dict) and (
                not doc.data or "rules" in doc.data)):
            self.problems.append(Problem(label, 0, 0, None, "not a rule file (no top-level "
                                         "`rules:`); nothing of it is quoted"))
            return
        unexpanded = {i.path for i in doc.issues}
        doc.issues.extend(i for e in _schema_errors(_base_schema(), doc.data)
                          for i in schema_issues(e))
        bad = {i.path for i in doc.issues}
        rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        for index, raw in enumerate(rules if isinstance(rules, list) else []):
            self.found += 1
            if isinstance(raw, dict):
                self._rule(doc, index, raw, bad, unexpanded)
        seen: set[Issue] = set()
        for issue in doc.issues:
            if issue not in seen:
                seen.add(issue)
                self.problems.append(doc.problem(issue))

    def _rule(self, doc: Doc, index: int, raw: dict[str, Any], bad: set[JsonPath],
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
                doc.issues.append(Issue(base + ("name",), False,
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
            doc.issues.extend(Issue(p.path, False, at(label(p.path), p.message))
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
                    doc.issues.append(Issue(base + ("throttle", "window"), False, str(exc)))
            if clean("throttle", "key") and isinstance(throttle.get("key"), str):
                self._templates(doc, base + ("throttle", "key"), throttle["key"])
        enrichment = None
        if clean("enrich"):
            try:
                enrichment = parse_enrich(raw.get("enrich"))
            except ConfigError as exc:
                doc.issues.append(Issue(base + ("enrich",), False, str(exc)))
        when = raw.get("when")
        if clean("when") and isinstance(when, str):
            doc.issues.extend(Issue(base + ("when",), False, f"when: {m}")
                              for m in templates.check_condition(when))
        actions = raw.get("actions")
        for i, item in enumerate(actions if isinstance(actions, list) else []):
            if clean_schema("actions", i) and isinstance(item, dict) and len(item) == 1:
                kind, options = next(iter(item.items()))
                self._action(doc, base + ("actions", i, kind), kind, options, unexpanded)
        warnings = [w for w in self._warnings(doc, base, raw) if w.path not in unexpanded]
        if len(doc.issues) == start and not any(p[:2] == base for p in bad) and compiled is not None:
            assert isinstance(match, dict) and isinstance(actions, list)
            self.rules.append(Rule(
                name=name, description=raw.get("description", ""),
                enabled=raw.get("enabled", True),
                throttle=None if throttle is None else ThrottleSpec(
                    throttle["key"], window,
                    templates.compile_tree(throttle["key"], name, "throttle.key")),
                enrich="resource" if enrichment is not None and enrichment.resource else None,
                enrichment=enrichment,
                when=None if when is None else templates.Condition(when, name),
                allow_self_caused=raw.get("allow_self_caused", False),
                actions=tuple(
                    ActionSpec(kind, i, options, name, templates.compile_tree(
                        options, name, f"action {i + 1} ({kind}) options"), _group(options, name))
                    for i, (kind, options) in enumerate(next(iter(a.items())) for a in actions)),
                file=doc.label, line=doc.values.get(base, (1, 1))[0], match=match,
                compiled=compiled, mode=raw.get("mode", "live")))
        doc.issues.extend(warnings)

    def _warnings(self, doc: Doc, base: JsonPath, raw: dict[str, Any]) -> list[Issue]:
        """The likely typos of a rule: unknown fields, types, states, template names."""
        found: list[Issue] = []
        match = raw.get("match")
        if isinstance(match, dict):
            found.extend(match_warnings(match, base + ("match",), self.vocabulary))
        try:
            found_enrich = parse_enrich(raw.get("enrich"))
        except ConfigError:
            found_enrich = None
        enriched = found_enrich is not None and found_enrich.resource
        sources: list[tuple[JsonPath, Any, bool]] = [
            (base + ("when",), raw.get("when"), True),
            (base + ("throttle", "key"), (raw.get("throttle") or {}).get("key")
             if isinstance(raw.get("throttle"), dict) else None, False)]
        actions = raw.get("actions")
        for i, item in enumerate(actions if isinstance(actions, list) else []):
            if isinstance(item, dict) and len(item) == 1:
                kind, options = next(iter(item.items()))
                sources.append((base + ("actions", i, kind), options, False))
        for path, value, condition in sources:
            for sub, message in templates.warnings_tree(value, enriched, condition):
                found.append(Issue(path + sub, False, at(label(path + sub), message), WARNING))
        return found

    def _templates(self, doc: Doc, path: JsonPath, value: Any) -> None:
        grouped = isinstance(value, dict) and isinstance(value.get("group"), dict)
        names = templates.GROUP_NAMES if grouped else templates.CONTEXT_NAMES
        doc.issues.extend(Issue(path + sub, False, at(label(path + sub), message))
                          for sub, message in templates.check_tree(value, names=names))

    def _action(self, doc: Doc, path: JsonPath, kind: str, options: dict[str, Any],
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
            doc.issues.append(Issue(path, True, exc.message))
            return
        except ImportError:
            cls = None  # the kind is registered but not importable yet: accept any mapping
        except Exception as exc:
            doc.issues.append(Issue(path, True, f"action kind {kind!r} failed to load: {exc!r}"))
            return
        if cls is not None:
            kind_schema = getattr(cls, "schema", None)
            try:
                schema_found: list[Issue] = []
                if isinstance(kind_schema, dict):
                    for error in _schema_errors(kind_schema, options):
                        schema_found.extend(i for i in schema_issues(error, path)
                                            if i.path not in unexpanded)
                doc.issues.extend(schema_found)
                # validate() adds what a schema cannot say; after a schema error it would
                # only repeat it in other words (a missing url, reported twice)
                messages = cls.validate(options) if hasattr(cls, "validate") \
                    and not expansion_failed and not schema_found else []
            except Exception as exc:  # a broken kind must not hide the other problems
                doc.issues.append(Issue(path, True,
                                         f"action kind {kind!r} could not check options: {exc!r}"))
                messages = []
            doc.issues.extend(Issue(path, False, at(label(path), m)) for m in messages)
        self._templates(doc, path, options)


def _group(options: Any, rule: str) -> GroupSpec | None:
    """The digest of a grouped action (`group: {by: ...}`), its key template compiled."""
    group = options.get("group") if isinstance(options, dict) else None
    if not isinstance(group, dict) or not isinstance(group.get("by"), str):
        return None
    return GroupSpec(group["by"], templates.compile_tree(group["by"], rule, "group.by"))


def _files(given: str | Path) -> list[tuple[str, Path]] | None:
    """The rule files a path names, labelled as given; None when it does not exist. A path
    that cannot be listed or looked at (no permission) is given back as one file, whose
    reading then says why: one problem, never an OSError out of here."""
    name, path = str(given), Path(given)
    try:
        if path.is_dir():
            return [(os.path.join(name, child.name), child) for child in sorted(path.iterdir())
                    if child.suffix in (".yaml", ".yml") and _is_file(child)]
        return [(name, path)] if path.exists() else None
    except OSError:
        return [(name, path)]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return True  # unreadable: reading it says so


def _why(exc: BaseException) -> str:
    """An OSError's reason without repeating the path (the problem's label names it)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)[:200]


@dataclass(frozen=True)
class CheckResult:
    """What `check` found: the problems (errors and warnings), and how much it read."""

    problems: list[Problem]
    rules: int  # rules found, valid or not
    files: int
    ruleset: RuleSet = field(repr=False)

    @property
    def errors(self) -> list[Problem]:
        """The problems that stop the rules from loading."""
        return [p for p in self.problems if not p.is_warning]

    @property
    def warnings(self) -> list[Problem]:
        """The likely typos that load but probably never fire as meant."""
        return [p for p in self.problems if p.is_warning]


def check(paths: Sequence[str | Path], environ: Mapping[str, str],
          vocabulary: Vocabulary | None = None, *, quote_other_files: bool = True) -> CheckResult:
    """Check every rule file under `paths`: problems sorted by file, line and column.

    `vocabulary`: what the source's events hold (default: the Docker Cloud stream's).
    `quote_other_files=False` (for paths named by someone else: a rule test's `rule_files`):
    a file that is not a rule file (no top-level `rules:`, or not YAML) gets one problem that
    quotes none of its content, so /etc/shadow named there is not printed line by line.
    """
    checker = _Checker(environ, vocabulary or DOCKERCLOUD, quote_other_files)
    for given in paths:
        files = _files(given)
        if files is None:
            checker.problems.append(Problem(str(given), 0, 0, None, "no such file or directory"))
            continue
        before = (checker.found, len(checker.problems))
        for name, path in files:
            checker.file(name, path)
        if (checker.found, len(checker.problems)) == before:
            what = "no rule file (*.yaml, *.yml)" if not files else "no rules"
            checker.problems.append(Problem(str(given), 1, 1, None, f"holds {what}", WARNING))
    checker.problems.sort(key=lambda p: (p.file, p.line, p.col))
    return CheckResult(checker.problems, checker.found, checker.files, RuleSet(checker.rules))


def check_paths(paths: Sequence[str | Path], environ: Mapping[str, str]) -> list[Problem]:
    """Every problem (errors and warnings) in every rule file under `paths`, sorted."""
    return check(paths, environ).problems


def load_rules(paths: Sequence[str | Path], environ: Mapping[str, str],
               vocabulary: Vocabulary | None = None, *,
               quote_other_files: bool = True) -> RuleSet:
    """Load, validate and compile rule files; raise RuleError listing every error.

    Warnings (likely typos, against `vocabulary`) do not stop the load: each is logged once.
    """
    result = check(paths, environ, vocabulary, quote_other_files=quote_other_files)
    errors = result.errors
    if errors:
        count = len(errors)
        raise RuleError(f"{count} problem{'s' if count > 1 else ''} in rule files:\n"
                        + "\n".join(p.format() for p in errors), problems=list(errors))
    for problem in result.warnings:
        log.warning("%s", problem)
    return result.ruleset
