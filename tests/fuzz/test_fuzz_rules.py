"""The rule loader and `check`: documents from the rule grammar, then mutated, give problems with
positions (or a rule set), never another exception; loaded rules render or raise TemplateError."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from eventd.errors import RuleError, TemplateError
from eventd.ruleset.loader import Problem, check, load_rules
from eventd.ruleset.templates import build_context
from tests.fuzz.test_fuzz_templates import templates as template_sources

FIELDS = ["type", "state", "action", "parents", "resource_uri", "data.errorMessage", "x.y"]
WORDS = ["container", "service", "Stopped", "Running", "update", "/api/app/v1/", "", "a b"]
TEMPLATES = ["{{ event.state }}", "{{ parent.service }}", "{{ object.uuid }}", "{{ rule }}",
             "{% if event.state %}x{% endif %}", "{{ event.parents|join(',') }}",
             "{{ resource.exit_code }}", "{{ now }}", "plain", "${HOME}", "${NOPE:-d}"]

scalars = st.sampled_from(WORDS) | st.integers(-5, 5) | st.booleans() | st.none()
operators = st.fixed_dictionaries({}, optional={
    "glob": st.sampled_from(["*/service/*", "[", "*"]),
    "regex": st.sampled_from(["/service/", "([", "^a$", "(?i)x"]),
    "in": st.lists(scalars, max_size=3), "exists": st.booleans(), "gt": st.integers(),
    "not": scalars})
conditions = scalars | st.lists(scalars, max_size=3) | operators


def matches(depth: int = 3) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.dictionaries(st.sampled_from(FIELDS), conditions, max_size=3)
    if depth == 0:
        return leaf
    inner = matches(depth - 1)
    return leaf | st.fixed_dictionaries({}, optional={
        "any": st.lists(inner, max_size=2), "all": st.lists(inner, max_size=2), "not": inner})


templates = st.sampled_from(TEMPLATES) | template_sources()
actions = st.one_of(
    st.builds(lambda m, level: {"log": {"message": m, **({"level": level} if level else {})}},
              templates, st.sampled_from([None, "info", "warning", "loud"])),
    st.builds(lambda url, text: {"webhook": {"url": url, "json": {"text": text}}},
              st.sampled_from(["http://127.0.0.1:9/h", "ftp://x", "{{ event.state }}"]), templates),
    st.builds(lambda call, target: {"dockercloud": {"call": call, "target": target}},
              st.sampled_from(["redeploy", "stop", "fly"]),
              st.sampled_from(["{{ parent.service }}", "/api/app/v1/service/x/"])),
    st.builds(lambda path: {"audit": {"path": path}}, st.sampled_from(["a.jsonl", ""])),
)
rules = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c", "crash-1"]), "match": matches(),
     "actions": st.lists(actions, min_size=1, max_size=3)},
    optional={"description": st.text(max_size=10), "enabled": st.booleans(),
              "throttle": st.fixed_dictionaries({"key": templates,
                                                 "window": st.sampled_from(["10m", "5", "x", -1])}),
              "enrich": st.sampled_from(["resource", "all"]), "when": templates,
              "allow_self_caused": st.booleans()})
documents = st.fixed_dictionaries({"rules": st.lists(rules, max_size=3)})


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A generated document, mutated as people and attackers do, as YAML text."""
    doc = draw(documents)
    rule_list = doc["rules"]
    for _ in range(draw(st.integers(0, 3))):
        if not rule_list:
            break
        rule = draw(st.sampled_from(rule_list))
        kind = draw(st.sampled_from(["rename", "retype", "nest", "share", "drop"]))
        key = draw(st.sampled_from(sorted(rule)))
        if kind == "rename":  # a typo in a key
            rule[key[:-1] + draw(st.sampled_from("aexz"))] = rule.pop(key)
        elif kind == "retype":  # a value of the wrong type
            rule[key] = draw(st.sampled_from([[], {}, 3, "text", None, [[1]], {"a": {"b": []}}]))
        elif kind == "nest":  # nesting (deeper: as text below; PyYAML's dumper would recurse)
            depth = draw(st.integers(1, 30))
            value: Any = {"type": "x"}
            for _ in range(depth):
                value = {"any": [value]}
            rule["match"] = value
        elif kind == "share":  # the same object in two places: PyYAML writes an alias
            rule_list.append(rule)
        else:
            del rule[key]
    text = yaml.safe_dump(doc, sort_keys=False) if draw(st.booleans()) else \
        yaml.dump(doc, Dumper=yaml.SafeDumper, default_flow_style=True)
    if draw(st.integers(0, 4)) == 0:  # nesting past the cap, written as text
        depth = draw(st.integers(30, 700))
        text += "x-deep: " + "[" * depth + "]" * depth + "\n"
    if draw(st.booleans()):  # a file cut short, or a stray character
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "{", "'", "*x", "&a", "\t", ": ", "{{ e"]))
    return text


_DIR = Path(tempfile.mkdtemp(prefix="eventd-fuzz-rules-"))
EVENT = {"type": "container", "action": "update", "state": "Stopped", "uuid": "u",
         "parents": ["/api/app/v1/ns/service/5/"], "resource_uri": "/api/app/v1/ns/container/7/"}


def assert_problems_have_positions(problems: list[Problem], path: Path) -> None:
    for problem in problems:
        assert isinstance(problem, Problem)
        assert problem.file == str(path) and problem.line >= 1 and problem.col >= 1
        assert problem.message and "\n" not in problem.format()
        assert problem.severity in ("error", "warning")


@given(mutated())
def test_mutated_rule_files_give_problems_or_rules_never_another_exception(text: str) -> None:
    path = _DIR / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    environ = {"HOME": "/home/someone"}
    result = check([path], environ)
    assert_problems_have_positions(result.problems, path)
    try:
        ruleset = load_rules([path], environ)
    except RuleError as exc:
        assert exc.problems == result.errors
        return
    assert not result.errors
    for rule in ruleset.rules:
        context = build_context(EVENT, rule.name, 0.0, {"exit_code": 1})
        try:
            rule.matches(EVENT)
            rule.when_holds(context)
            rule.throttle_key(context)
            for spec in rule.actions:
                spec.render(context)
        except TemplateError:
            pass


@given(st.text(max_size=300))
def test_any_text_as_a_rule_file(text: str) -> None:
    path = _DIR / "text.yaml"
    path.write_text(text, encoding="utf-8")
    assert_problems_have_positions(check([path], {}).problems, path)
