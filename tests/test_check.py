"""`check_paths`: each kind of problem, with its exact FILE:LINE:COL, all reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventd.errors import RuleError
from eventd.ruleset.loader import Problem, check_paths, load_rules

DATA = Path(__file__).parent / "data" / "rules"
BROKEN = DATA / "broken"
KNOWN = "known: alertmanager, audit, dockercloud, log, webhook"
NAMES = "known: event, parent, object, rule, now, resource"
RULE_KEYS = ("expected one of: name, description, enabled, match, throttle, enrich, when, "
             "allow_self_caused, actions")


def lines(*paths: Path | str, environ: dict[str, str] | None = None) -> list[str]:
    return [str(p) for p in check_paths([str(p) for p in paths], environ or {})]


@pytest.mark.parametrize("name, expected", [
    ("syntax.yaml", ["4:12: YAML syntax error: expected ',' or '}', but got ':'"]),
    ("unknown-key.yaml", [
        "2:5: rule typo: missing required key 'actions'",
        f"4:5: rule typo: unknown key 'acitons' (did you mean 'actions'?); {RULE_KEYS}"]),
    ("wrong-type.yaml", ["3:14: rule wrong: enabled: expected true or false, "
                         "got a string ('yes please')"]),
    ("bad-regex.yaml", ["4:24: rule regex: match.parents.regex: bad regex '/service/([': "
                        "unterminated character set at position 10"]),
    ("template-syntax.yaml", [
        "5:24: rule tpl: actions[0].log.message: template syntax error: unexpected end of "
        "template, expected 'end of print statement'. (template line 1)"]),
    ("template-name.yaml", [
        "6:20: rule tpl-name: actions[0].log.message: template uses unknown name 'evnt' "
        f"(did you mean 'event'?); {NAMES}"]),
    ("unknown-kind.yaml", [
        f"6:9: rule kind: unknown action kind 'webhok' (did you mean 'webhook'?); {KNOWN}"]),
    ("unset-var.yaml", [
        "5:24: rule env: environment variable EVENTD_TEST_UNSET_VARIABLE is not set "
        "(set it, or give a default: ${EVENTD_TEST_UNSET_VARIABLE:-...})"]),
    ("missing-key.yaml", ["2:5: rule no-match: missing required key 'match'"]),
])
def test_each_problem_at_its_line_and_column(name: str, expected: list[str]) -> None:
    path = BROKEN / name
    assert lines(path) == [f"{path}:{e}" for e in expected]


def test_all_problems_of_a_file_at_once_sorted() -> None:
    path = BROKEN / "many.yaml"
    assert lines(path) == [f"{path}:{e}" for e in [
        f"3:5: rule many: unknown key 'nmae' (did you mean 'name'?); {RULE_KEYS}",
        "5:15: rule many: unknown key 'glbo' (did you mean 'glob'?) in match.state; "
        "expected one of: glob, regex, not, exists, in, gt, gte, lt, lte",
        "6:24: rule many: match.parents.regex: bad regex '([': "
        "unterminated character set at position 1",
        f"7:21: rule many: throttle.key: template uses unknown name 'evnt' "
        f"(did you mean 'event'?); {NAMES}",
        "7:43: rule many: throttle.window: 'ten minutes' is not a duration "
        "(seconds, or e.g. 30s, 10m, 1h)",
        "8:11: rule many: when: template syntax error: unexpected end of template, "
        "expected 'end of print statement'. (template line 1)",
        f"10:9: rule many: unknown action kind 'lgo' (did you mean 'log'?); {KNOWN}",
        "11:24: rule many: environment variable EVENTD_TEST_UNSET_VARIABLE is not set "
        "(set it, or give a default: ${EVENTD_TEST_UNSET_VARIABLE:-...})",
        "11:64: rule many: actions[1].log.level: 'loud' is not one of "
        "['debug', 'info', 'warning', 'error']",
    ]]


def test_duplicate_name_reported_at_the_second_definition() -> None:
    directory = DATA / "duplicate"
    assert lines(directory) == [
        f"{directory}/b.yaml:6:11: rule same: duplicate rule name 'same' "
        f"(first defined at {directory}/a.yaml:2)"]


def test_all_files_checked_at_once_and_sorted_by_file() -> None:
    found = lines(BROKEN / "wrong-type.yaml", BROKEN / "bad-regex.yaml", "no/such/file.yaml")
    assert [line.split(": ")[0] for line in found] == [
        f"{BROKEN}/bad-regex.yaml:4:24", f"{BROKEN}/wrong-type.yaml:3:14", "no/such/file.yaml:1:1"]
    assert found[-1] == "no/such/file.yaml:1:1: no such file or directory"


def test_whole_directory_reports_every_broken_file() -> None:
    problems = check_paths([BROKEN], {})
    assert {Path(p.file).name for p in problems} == {
        p.name for p in BROKEN.glob("*.yaml")}


def test_file_label_is_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("rules").mkdir()
    Path("rules/x.yaml").write_text("rules:\n  - name: 1\n", encoding="utf-8")
    assert [str(p) for p in check_paths(["rules"], {})] == [
        "rules/x.yaml:2:5: missing required key 'match'",
        "rules/x.yaml:2:5: missing required key 'actions'",
        "rules/x.yaml:2:11: name: expected a string, got a number (1)",
    ]


@pytest.mark.parametrize("text, expected", [
    ("rules: {}\n", "1:8: rules: expected a list or null, got a mapping"),
    ("- a\n", "1:1: expected a mapping, got a list"),
    ("rule: []\n", "1:1: unknown key 'rule' (did you mean 'rules'?); expected one of: rules"),
    ("rules:\n- name: a\n  match: {type: container}\n  actions: [{log: {message: a}, "
     "webhook: {url: 'http://h/'}}]\n",
     "4:13: rule a: actions[0]: an action is one mapping {kind: options}, got 2 keys"),
    ("rules:\n- name: a\n  match: {type: container}\n  actions: [{log: hi}]\n",
     "4:19: rule a: actions[0].log: expected a mapping, got a string ('hi')"),
    ("rules:\n- name: a\n  match: {state: {}}\n  actions: [{log: {message: a}}]\n",
     "3:18: rule a: match.state: an empty mapping; give at least one operator"),
    ("rules:\n- name: a\n  match: {state: [[1]]}\n  actions: [{log: {message: a}}]\n",
     "3:19: rule a: match.state[0]: expected a string or a number or true or false or null, "
     "got a list"),
    ("rules:\n- name: a\n  match: {}\n  enrich: everything\n  actions: [{log: {message: a}}]\n",
     "4:11: rule a: enrich: 'everything' is not one of ['resource']"),
    ("rules:\n- name: a\n  match: {}\n  actions: [{log: {message: a}}]\n  name: b\n",
     "5:3: rule b: duplicate key 'name'"),
    ("rules:\n- name: a\n  match: {}\n  throttle: {key: k}\n  actions: [{log: {message: a}}]\n",
     "4:13: rule a: throttle: missing required key 'window'"),
    ("rules:\n- name: a\n  match: {}\n  when: '{{ x }}'\n  actions: [{log: {message: a}}]\n",
     "4:9: rule a: when: template uses unknown name 'x'; " + NAMES),
    ("rules:\n\t- name: a\n", "2:1: YAML syntax error: found character '\\t' that cannot "
     "start any token"),
    ("a: 1\n---\nb: 2\n", "2:1: YAML syntax error: but found another document"),
])
def test_structure_problems(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    assert lines(path) == [f"{path}:{expected}"]


def test_problem_format_without_a_rule() -> None:
    assert Problem("f.yaml", 3, 7, None, "boom").format() == "f.yaml:3:7: boom"
    assert str(Problem("f.yaml", 3, 7, "r", "boom")) == "f.yaml:3:7: rule r: boom"


def test_load_rules_raises_with_every_problem() -> None:
    with pytest.raises(RuleError) as caught:
        load_rules([BROKEN / "many.yaml", DATA / "duplicate"], {})
    assert len(caught.value.problems) == 10
    assert all(isinstance(p, Problem) for p in caught.value.problems)
    message = str(caught.value)
    assert message.startswith("10 problems in rule files:\n")
    assert "duplicate rule name 'same'" in message
