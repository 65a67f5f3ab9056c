"""`check_paths`: each kind of problem, with its exact FILE:LINE:COL, all reported at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from eventd.errors import RuleError
from eventd.ruleset.loader import Problem, check_paths, load_rules
from tests.daemon_helpers import emulator_env, write_rules
from tests.test_cli import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "rules"
BROKEN = DATA / "broken"
KNOWN = ("known: alertmanager, amqp, audit, docker, dockercloud, log, mqtt, msteams, nats, "
         "opsgenie, pagerduty, postgres, slack, webhook")
NAMES = "known: event, parent, object, rule, now, resource, logs, history"
RULE_KEYS = ("expected one of: name, description, enabled, match, throttle, enrich, when, "
             "allow_self_caused, actions, mode")


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
        f"{BROKEN}/bad-regex.yaml:4:24", f"{BROKEN}/wrong-type.yaml:3:14", "no/such/file.yaml"]
    assert found[-1] == "no/such/file.yaml: no such file or directory"  # no line:col to jump to


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
     "4:11: rule a: enrich: 'everything' is not one of resource, logs, history"),
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


# --- hostile and mistaken files (issue 12 part 2) -------------------------------------------

HOSTILE = DATA / "hostile"


def eventd_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`eventd check` as a user runs it; the timeout only guards against a hang (each takes < 1 s)."""
    full_env = {"PATH": os.environ.get("PATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-m", "eventd", "check", *args], capture_output=True,
                          text=True, timeout=30, env=full_env)


@pytest.mark.parametrize("name, expected", [
    ("unknown-filter.yaml", "5:24: rule bogus-filter: actions[0].log.message: unknown filter "
                            "'bogus' (template line 1)"),
    ("alias-bomb.yaml", "6:4: too many YAML nodes: more than 100000 once aliases are expanded "
                        "(the cap for a rule file)"),
    ("deep-any.yaml", "3:223: nested too deeply: more than 64 levels (the cap for a rule file)"),
])
def test_a_hostile_file_gets_one_line_and_exit_1(name: str, expected: str) -> None:
    path = HOSTILE / name
    done = eventd_check(str(path))
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [f"{path}:{expected}"]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].endswith(": 1 error")


@pytest.mark.parametrize("cap, text, expected", [
    ("size", "# " + "x" * (1024 * 1024) + "\n",
     "1:1: file too large: 1048579 bytes, more than the 1048576 a rule file may hold"),
    ("aliases", "x-a: &a 1\nx-b: [" + ", ".join(["*a"] * 1001) + "]\n",
     "2:4007: too many aliases: more than 1000 (the cap for a rule file)"),
])
def test_each_cap_says_which_cap_was_hit(tmp_path: Path, cap: str, text: str, expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    assert lines(path) == [f"{path}:{expected}"]


def test_typos_that_never_fire_are_warnings_with_did_you_mean() -> None:
    path = HOSTILE / "typos.yaml"
    done = eventd_check(str(path))
    assert done.returncode == 0
    found = [line.split(";")[0] for line in done.stdout.splitlines()]
    assert found == [f"{path}:{line}" for line in [
        "3:13: warning: rule typos: match.stat: unknown event field 'stat' (did you mean 'state'?)",
        "3:34: warning: rule typos: match.type: unknown object type 'servce' "
        "(did you mean 'service'?)",
        "3:42: warning: rule typos: match.acton: unknown event field 'acton' "
        "(did you mean 'action'?)",
        "5:24: warning: rule typos: actions[0].log.message: template reads parent.servce, "
        "which is never set (did you mean 'service'?)",
        "7:37: warning: rule stoped: match.state: unknown state 'Stoped' (did you mean 'Stopped'?)",
        "8:11: warning: rule stoped: when: template uses `resource` but the rule has no "
        "`enrich: resource`, so resource is always empty",
    ]] + ["2 rules in 1 file: ok, 6 warnings"]
    strict = eventd_check("--strict", str(path))
    assert strict.returncode == 1
    assert strict.stderr.splitlines()[-1] == "2 rules in 1 file: 6 warnings (--strict)"


def test_warnings_do_not_stop_rules_from_loading(caplog: pytest.LogCaptureFixture) -> None:
    ruleset = load_rules([HOSTILE / "typos.yaml"], {})
    assert [r.name for r in ruleset.rules] == ["typos", "stoped"]
    assert sum("warning: rule" in r.getMessage() for r in caplog.records) == 6


def test_known_vocabulary_gives_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n- name: a\n  match: {type: stack, state: Not Running, action: update,"
                    " data.errorMessage: {exists: true}, any: [{state: Partly running}]}\n"
                    "  enrich: resource\n  when: '{{ resource.x and parent.stack }}'\n"
                    "  actions: [{log: {message: '{{ object.type }}'}}]\n", encoding="utf-8")
    assert lines(path) == []


def test_success_says_what_was_checked(tmp_path: Path) -> None:
    done = eventd_check(str(DATA / "good"), str(ROOT / "rules"))
    assert done.returncode == 0, done.stdout
    count = len(load_rules([ROOT / "rules"], {}).rules)
    files = len(list((ROOT / "rules").glob("*.yaml")))
    assert done.stdout.splitlines() == [f"{count + 3} rules in {files + 4} files: ok"]


def test_a_path_without_rules_is_a_warning(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "none.yaml").write_text("rules: []\n", encoding="utf-8")
    done = eventd_check(str(empty), str(tmp_path / "none.yaml"))
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        f"{empty}:1:1: warning: holds no rule file (*.yaml, *.yml)",
        f"{tmp_path / 'none.yaml'}:1:1: warning: holds no rules",
        "0 rules in 1 file: ok, 2 warnings"]


def test_a_value_from_the_environment_is_never_printed() -> None:
    path = HOSTILE / "secret.yaml"
    done = eventd_check(str(path), env={"DOCKERCLOUD_APIKEY": "s3cr3t-api-key"})
    assert done.returncode == 1
    assert "s3cr3t" not in done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"{path}:5:60: rule leaky: actions[0].webhook.timeout: expected a number, "
        "got a string ('${DOCKERCLOUD_APIKEY}')"]


def test_a_secret_inside_a_longer_value_is_named_too(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n- name: a\n  match: {}\n  throttle: {key: k, window: 'x${TOKEN}'}\n"
                    "  actions: [{log: {message: m}}]\n", encoding="utf-8")
    found = lines(path, environ={"TOKEN": "abcdefgh"})
    assert found == [f"{path}:4:30: rule a: throttle.window: 'x${{TOKEN}}' is not a duration "
                     "(seconds, or e.g. 30s, 10m, 1h)"]


def test_a_missing_webhook_url_is_reported_once() -> None:
    path = HOSTILE / "webhook-no-url.yaml"
    assert lines(path) == [f"{path}:5:18: rule no-url: actions[0].webhook: missing required key 'url'"]


def _metric(port: int, name: str) -> float | None:
    """A sample from eventd's /metrics; None (never 0.0) when it is absent, so a test can fail."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


HOSTILE_LINES = {
    "unknown-filter.yaml": "rules.yaml:5:24: rule bogus-filter: actions[0].log.message: unknown "
                           "filter 'bogus' (template line 1)",
    "alias-bomb.yaml": "rules.yaml:6:4: too many YAML nodes: more than 100000 once aliases are "
                       "expanded (the cap for a rule file)",
    "deep-any.yaml": "rules.yaml:3:223: nested too deeply: more than 64 levels (the cap for a rule "
                     "file)",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LINES))
def test_run_exits_2_with_the_same_line(emulator, tmp_path: Path, name: str) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_bytes((HOSTILE / name).read_bytes())
    env = {"PATH": os.environ.get("PATH", ""), **emulator_env(emulator)}
    done = subprocess.run([sys.executable, "-m", "eventd", "run", "--rules", str(rules),
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=30, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["eventd: rules not loaded (1 problem):",
                                        f"  {rules}/{HOSTILE_LINES[name]}"]


def test_sighup_with_hostile_rules_keeps_the_old_ones(emulator, webhook_receiver, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", f"""\
        rules:
          - name: old
            match: {{type: service}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/old", json: {{uuid: "{{{{ event.uuid }}}}"}}}}
        """)
    port = free_port()
    log = tmp_path / "stderr.log"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **emulator_env(emulator)}
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "eventd", "run", "--rules", str(rules),
                                 "--state-dir", str(tmp_path / "state"),
                                 "--metrics-addr", f"127.0.0.1:{port}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert emulator.wait_for_connections(1, 20)
        wait_until(lambda: _reachable(port), 20)
        assert _metric(port, "eventd_rules_reload_success") == 1
        for name, line in sorted(HOSTILE_LINES.items()):
            rules.write_bytes((HOSTILE / name).read_bytes())
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda expected=f"{rules.parent}/{line}": expected in log.read_text(), 20,
                       message=f"the problem of {name} logged")
            assert _metric(port, "eventd_rules_reload_success") == 0
        sent = emulator.emit_event(type="service", state="Running")
        wait_until(lambda: webhook_receiver.requests, 20, message="the old rule still runs")
        assert [(r.path, r.json()["uuid"]) for r in webhook_receiver.requests] == [
            ("/old", sent["uuid"])]
        assert proc.poll() is None
        assert "Traceback" not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0


def _reachable(port: int) -> bool:
    try:
        return _metric(port, "eventd_rules_reload_success") is not None
    except requests.RequestException:
        return False


@pytest.mark.parametrize("text, expected", [
    # found by tests/fuzz: PyYAML's reader error was two lines, at 1:1 (defect 1)
    ("rules:\n  - name: a\x1f\n", "2:12: YAML syntax error: character #x001f is not allowed in "
                                  "YAML (a control character)"),
    # found by tests/fuzz: Jinja folds constants while compiling and raised there (defect 2)
    ("rules:\n- name: a\n  match: {}\n  actions: [{log: {message: \"{{ (0)[0] ~ 'x' }}\"}}]\n",
     "4:29: rule a: actions[0].log.message: template fails on its constants: int object has no "
     "element 0"),
    ("rules:\n- name: a\n  match: {}\n  when: \"(0)[0] ~ 'x'\"\n  actions: [{log: {message: m}}]\n",
     "4:9: rule a: when: template fails on its constants: int object has no element 0"),
])
def test_fuzzing_finds_stay_fixed(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    assert lines(path) == [f"{path}:{expected}"]


def test_a_path_that_does_not_exist_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Issue 21.5: `eventd check rules/` without rules/ said `rules/:1:1: ...` with exit 1."""
    done = eventd_check(str(tmp_path / "rules"), str(ROOT / "rules"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"eventd check: {tmp_path / 'rules'}: no such file or directory (`eventd init "
        f"{tmp_path / 'rules'}` writes the sample rules and their tests there)"]
    done = eventd_check(str(tmp_path / "x.yaml"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"eventd check: {tmp_path / 'x.yaml'}: no such file or directory"]
