"""`eventd test`: the shipped rule tests pass, a wrong expectation fails with a diff, a bad file
is exit 2, and nothing is called or written while tests run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from eventd.commands.testfile import SCHEMA
from eventd.ruleset.loader import load_rules

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "rules"


def eventd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventd", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_the_sample_rule_tests_pass() -> None:
    done = eventd("test", str(SAMPLES / "tests"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    passed = [line for line in done.stdout.splitlines() if line.startswith("PASS ")]
    assert len(passed) >= 16
    assert done.stdout.splitlines()[-1] == f"{len(passed)} tests: {len(passed)} passed, 0 failed"


def test_every_sample_rule_is_tested() -> None:
    tested: set[str] = set()
    for path in (SAMPLES / "tests").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        jsonschema.validate(data, SCHEMA)  # what `eventd schema --tests` prints
        for test in data["tests"]:
            for expectation in test.get("expect", []):
                tested.update(expectation.get("rules", []))
            tested.update(group["rule"] for group in test.get("groups", []))
    every = {rule.name for rule in load_rules(
        [SAMPLES, SAMPLES / "docker", SAMPLES / "postgres", SAMPLES / "bus",
         SAMPLES / "incidents"],
        {"EVENTD_PG_DSN": "postgresql://eventd@db.example/events?sslmode=verify-full",
         "EVENTD_NATS_URL": "tls://nats.example:4222",
         "EVENTD_MQTT_URL": "mqtts://broker.example:8883",
         "EVENTD_AMQP_URL": "amqps://rabbit.example"}).rules}
    assert every - tested == set()


def test_rule_tests_are_not_loaded_as_rules() -> None:
    # `--rules rules/` reads the files directly in the directory: rules/tests/ is not walked.
    ruleset = load_rules([SAMPLES], {})
    assert {Path(rule.file).parent for rule in ruleset.rules} == {SAMPLES}


def test_a_wrong_expectation_fails_with_a_diff_and_exit_1(tmp_path: Path) -> None:
    write(tmp_path / "rules.yaml", """\
        rules:
          - name: page
            match: {type: node, state: Unreachable}
            actions:
              - webhook: {url: "http://127.0.0.1:9/x", json: {text: "node {{ object.uuid }} down"}}
        """)
    write(tmp_path / "t.yaml", """\
        rule_files: [rules.yaml]
        tests:
          - name: right
            events: [{type: node, state: Unreachable, resource_uri: /api/infra/v1/node/n1/}]
            expect:
              - event: 0
                rules: [page]
                actions: [{rule: page, kind: webhook, options: {json: {text: node n1 down}}}]
          - name: wrong
            events: [{type: node, state: Unreachable, resource_uri: /api/infra/v1/node/n2/}]
            expect:
              - {event: 0, actions: [{rule: page, kind: webhook, options: {json: {text: node n1 down}}}]}
            never: [page]
        """)
    done = eventd("test", "t.yaml", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "PASS t.yaml: right"
    assert lines[1] == "FAIL t.yaml: wrong"
    assert "  -        text: node n1 down" in lines
    assert "  +        text: node n2 down" in lines
    assert "  -- page" in lines and "  +never: []" in lines  # `never: [page]`, yet it matched
    assert lines[-1] == "2 tests: 1 passed, 1 failed"


def test_a_file_that_cannot_be_used_is_exit_2_saying_why(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", """\
        rule_files: [missing.yaml]
        tests:
          - name: x
            events: []
        """)
    write(tmp_path / "bad.yaml", """\
        rule_files: [missing.yaml]
        tests:
          - name: x
            event: []
        """)
    write(tmp_path / "rules.yaml", """\
        rules:
          - {name: page, match: {type: node}, actions: [{log: {message: m}}]}
        """)
    write(tmp_path / "typo.yaml", """\
        rule_files: [rules.yaml]
        tests:
          - name: x
            events: []
            never: [pgae]
        """)
    done = eventd("test", "t.yaml", "bad.yaml", "nowhere.yaml", "typo.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ERROR bad.yaml:4:5: unknown key 'event' (did you mean 'events'?) in tests[0]; " \
        "expected one of: name, events, events_file, resources, logs, expect, groups, never" \
        in done.stdout
    assert "ERROR t.yaml: the rules do not load:" in done.stdout
    assert "missing.yaml: no such file or directory" in done.stdout
    assert "ERROR nowhere.yaml: no such file or directory" in done.stdout
    assert "ERROR typo.yaml: test 'x' names rule 'pgae' (did you mean 'page'?), which its rule " \
        "files do not define (or disable)" in done.stdout
    assert done.stdout.splitlines()[-1] == "0 tests: 0 passed, 0 failed; 4 files could not be used"


def test_nothing_is_called_or_written(tmp_path: Path, webhook_receiver, emulator) -> None:
    write(tmp_path / "rules.yaml", f"""\
        rules:
          - name: everything
            match: {{type: container}}
            enrich: resource
            throttle: {{key: "{{{{ event.resource_uri }}}}", window: 1m}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/hook", json: {{text: hi}}}}
              - alertmanager: {{url: "{webhook_receiver.url}"}}
              - dockercloud: {{call: redeploy, target: /api/app/v1/service/s1/}}
              - audit: {{path: "{tmp_path}/audit.jsonl"}}
        """)
    write(tmp_path / "t.yaml", """\
        rule_files: [rules.yaml]
        tests:
          - name: runs
            events: [{type: container, state: Stopped, resource_uri: /api/app/v1/container/c1/}]
            expect:
              - {event: 0, rules: [everything]}
        """)
    recorded = tmp_path / "events.jsonl"
    recorded.write_text(json.dumps({"type": "container", "uuid": "u1",
                                    "resource_uri": "/api/app/v1/container/c2/"}) + "\n")
    write(tmp_path / "t2.yaml", """\
        rule_files: [rules.yaml]
        tests:
          - name: from a recording
            events_file: events.jsonl
            expect:
              - {event: 0, rules: [everything]}
        """)
    before = sorted(p.name for p in tmp_path.iterdir())
    done = eventd("test", "t.yaml", "t2.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert webhook_receiver.requests == []
    assert emulator.rest_calls() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no state/, no audit file


def test_schema_tests_prints_the_test_file_schema() -> None:
    done = eventd("schema", "--tests")
    assert done.returncode == 0
    assert json.loads(done.stdout)["$id"] == "urn:eventd:rule-tests"


def test_a_shadow_rule_shows_what_it_would_run(tmp_path: Path) -> None:
    write(tmp_path / "rules.yaml", """\
        rules:
          - name: trial
            mode: shadow
            match: {type: service}
            actions:
              - dockercloud: {call: redeploy, target: "{{ event.resource_uri }}"}
        """)
    write(tmp_path / "t.yaml", """\
        rule_files: [rules.yaml]
        tests:
          - name: shadow
            events: [{type: service, state: Stopped, resource_uri: /api/app/v1/service/s1/}]
            expect:
              - event: 0
                rules: [trial]
                actions:
                  - {rule: trial, kind: dockercloud, status: shadow,
                     options: {call: redeploy, target: /api/app/v1/service/s1/}}
        """)
    done = eventd("test", "t.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_test_file_error_says_file_line_col_and_did_you_mean(tmp_path: Path) -> None:
    """Issue 21.5: a misspelt `tests:` gave "'tests' is a required property", no line, no hint."""
    write(tmp_path / "rules.yaml", """\
        rules:
          - {name: page, match: {type: node}, actions: [{log: {message: m}}]}
        """)
    write(tmp_path / "t.yaml", """\
        rule_files: [rules.yaml]
        test:
          - name: x
            events: [{type: node}]
        """)
    write(tmp_path / "u.yaml", """\
        rule_files: [rules.yaml]
        tests:
          - name: x
            events: [{type: node}]
            expect:
              - {event: 0, rules: [page]}
              - {event: 2, rules: [page]}
        """)
    done = eventd("test", "t.yaml", "u.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout.splitlines()[:-1] == [
        "ERROR t.yaml:1:1: missing required key 'tests'",
        "ERROR t.yaml:2:1: unknown key 'test' (did you mean 'tests'?); expected one of: "
        "rule_files, source, env, tests",
        "ERROR u.yaml:7:17: test 'x': expect[1] names event 2, but the test has 1 event"]


@pytest.mark.parametrize("content", [
    "root:$6$SECRETHASH:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",  # /etc/shadow
    "api_key: SECRETVALUE\n",  # a YAML mapping, but no rule file
    "password: *SECRETALIAS\n",  # not YAML: PyYAML's message names the alias
    "- SECRETITEM\n",  # a YAML list
])
def test_a_file_that_is_not_a_rule_file_is_never_quoted(tmp_path: Path, content: str) -> None:
    """Issue 20.13: `eventd test` printed the lines of any file named in `rule_files:`."""
    (tmp_path / "secret").write_text(content)
    write(tmp_path / "t.yaml", """\
        rule_files: [secret]
        tests:
          - name: x
            events: [{type: node}]
        """)
    done = eventd("test", "t.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "SECRET" not in done.stdout + done.stderr
    assert "\nsecret: not a rule file" in done.stdout or "\nsecret:1:" in done.stdout
