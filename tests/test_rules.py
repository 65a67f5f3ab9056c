"""Loading rules: the dataclasses, ${VAR} expansion, the schema, the samples, the log action."""

from __future__ import annotations

import logging
from pathlib import Path

import jsonschema
import pytest
import yaml

from eventd.actions.log import LogAction
from eventd.errors import RuleError, TemplateError
from eventd.records import ActionJob
from eventd.ruleset.interpolate import InterpolationError, expand
from eventd.ruleset.loader import ActionSpec, Rule, ThrottleSpec, check_paths, load_rules, schema
from eventd.ruleset.templates import build_context

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "rules"
DATA = Path(__file__).parent / "data" / "rules"
SERVICE = "/api/app/v1/acme/service/09cbcf8d-a727-40d9-b420-c8e18b7fa55b/"
CLUSTER = "/api/infra/v1/acme/nodecluster/5516df0b-721e-4470-b350-741ff22e63a0/"
CONTAINER_STOPPED = {
    "type": "container", "action": "update", "parents": [SERVICE],
    "resource_uri": "/api/app/v1/acme/container/c1dd4e1e-1356-411c-8613-e15146633640/",
    "state": "Stopped", "uuid": "6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01",
    "datetime": "2016-06-01T10:15:02Z",
}


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- loading -----------------------------------------------------------------------------------

def test_directory_loads_yaml_and_yml_sorted_and_skips_other_files() -> None:
    ruleset = load_rules([DATA / "good"], {})
    assert [r.name for r in ruleset.rules] == ["crashed", "node-down"]
    assert [r.name for r in ruleset.disabled] == ["disabled-one"]
    assert len(ruleset) == 2
    crashed = ruleset.by_name["crashed"]
    assert crashed.file == f"{DATA / 'good'}/10-basic.yaml"
    assert crashed.line == 3
    assert crashed.enabled is True and crashed.description == ""
    assert crashed.throttle is None and crashed.when is None and crashed.enrich is None
    assert crashed.allow_self_caused is False
    assert crashed.kinds == frozenset({"log"})
    assert ruleset.match(CONTAINER_STOPPED) == [crashed]


def test_yaml_anchors_under_x_keys_are_allowed() -> None:
    node_down = load_rules([DATA / "good" / "40-anchors.yaml"], {}).by_name["node-down"]
    assert node_down.actions[0].options == {
        "message": "{{ rule }}: {{ event.type }} {{ event.state }}", "level": "error"}


@pytest.mark.parametrize("text", ["", "# nothing\n", "rules:\n", "rules: []\n"])
def test_empty_files_are_valid(tmp_path: Path, text: str) -> None:
    assert len(load_rules([write(tmp_path, text)], {})) == 0


def test_rule_api(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: crash
    description: a container stopped
    match: {type: container, state: Stopped}
    throttle: {key: "{{ parent.service }}", window: 10m}
    enrich: resource
    when: "{{ resource.exit_code != 0 }}"
    allow_self_caused: true
    actions:
      - log: {message: "{{ object.uuid }} exit {{ resource.exit_code }}", level: warning}
      - webhook: {url: "http://127.0.0.1:9/x", json: {text: "{{ event.state }}", n: 3}}
""")
    rule = load_rules([path], {}).rules[0]
    assert isinstance(rule, Rule)
    assert rule.description == "a container stopped"
    assert isinstance(rule.throttle, ThrottleSpec) and rule.throttle.window == 600.0
    assert rule.throttle.key == "{{ parent.service }}"
    assert rule.enrich == "resource" and rule.allow_self_caused is True
    assert rule.kinds == frozenset({"log", "webhook"})
    assert all(isinstance(a, ActionSpec) for a in rule.actions)
    assert [(a.kind, a.index) for a in rule.actions] == [("log", 0), ("webhook", 1)]
    assert rule.matches(CONTAINER_STOPPED)
    assert not rule.matches(dict(CONTAINER_STOPPED, state="Running"))

    context = build_context(CONTAINER_STOPPED, rule.name, 0.0, {"exit_code": 1})
    assert rule.throttle_key(context) == SERVICE
    assert rule.when_holds(context) is True
    assert rule.when_holds(build_context(CONTAINER_STOPPED, rule.name, 0.0,
                                         {"exit_code": 0})) is False
    assert rule.actions[0].render(context) == {
        "message": "c1dd4e1e-1356-411c-8613-e15146633640 exit 1", "level": "warning"}
    assert rule.actions[1].render(context) == {
        "url": "http://127.0.0.1:9/x", "json": {"text": "Stopped", "n": 3}}

    without = build_context(CONTAINER_STOPPED, rule.name, 0.0, {"name": "x"})
    with pytest.raises(TemplateError) as caught:
        rule.actions[0].render(without)
    assert caught.value.rule == "crash"
    assert str(caught.value) == ("rule 'crash': action 1 (log) options.message: "
                                 "'dict object' has no attribute 'exit_code'")
    with pytest.raises(TemplateError, match="rule 'crash': when: "):
        rule.when_holds(without)


def test_plain_rules_render_constant_options_without_a_context(tmp_path: Path) -> None:
    """A rule with constant options, no `when`, no throttle is `plain` (the engine builds it no
    template context); each render still hands out a fresh dict, so a kind that changes its
    job's options cannot change the next job's."""
    path = write(tmp_path, """\
rules:
  - name: plain
    match: {}
    actions:
      - audit: {path: /tmp/a.jsonl, fsync: 1000}
  - name: templated
    match: {}
    actions:
      - log: {message: "{{ event.state }}"}
  - name: conditional
    match: {}
    when: "{{ event.state == 'Stopped' }}"
    actions:
      - audit: {path: /tmp/a.jsonl}
  - name: shadowed
    mode: shadow
    match: {}
    actions:
      - audit: {path: /tmp/a.jsonl}
""")
    plain, templated, conditional, shadowed = load_rules([path], {}).rules
    assert plain.plain and plain.actions[0].constant
    assert not templated.plain and not templated.actions[0].constant
    assert not conditional.plain and conditional.actions[0].constant
    assert not shadowed.plain
    first = plain.actions[0].render({})
    assert first == {"path": "/tmp/a.jsonl", "fsync": 1000}
    first["path"] = "/elsewhere"
    assert plain.actions[0].render({}) == {"path": "/tmp/a.jsonl", "fsync": 1000}


def test_durations(tmp_path: Path) -> None:
    text = "rules:\n" + "".join(
        f"  - {{name: r{i}, match: {{}}, throttle: {{key: k, window: {w}}}, "
        f"actions: [{{log: {{message: m}}}}]}}\n"
        for i, w in enumerate(["30s", "10m", "1h", "45", "2.5", "500ms"]))
    ruleset = load_rules([write(tmp_path, text)], {})
    assert [r.throttle.window for r in ruleset.rules if r.throttle] == [
        30.0, 600.0, 3600.0, 45.0, 2.5, 0.5]


def test_duplicate_names_in_one_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n- {name: a, match: {}, actions: [{log: {message: m}}]}\n"
                           "- {name: a, match: {}, actions: [{log: {message: m}}]}\n")
    assert [str(p) for p in check_paths([path], {})] == [
        f"{path}:3:10: rule a: duplicate rule name 'a' (first defined at {path}:2)"]


def test_load_rules_raises_rule_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as caught:
        load_rules([tmp_path / "missing.yaml"], {})
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'missing.yaml'}: no such file or directory"]


# --- ${VAR} ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("${A}", "alpha"),
    ("x-${A}-y", "x-alpha-y"),
    ("${MISSING:-fallback}", "fallback"),
    ("${EMPTY:-fallback}", "fallback"),
    ("${EMPTY-fallback}", ""),
    ("${MISSING-fallback}", "fallback"),
    ("${A:-fallback}", "alpha"),
    ("${MISSING:-}", ""),
    ("$${A}", "${A}"),
    ("cost $5 and $$", "cost $5 and $$"),
    ("{{ event.x }}", "{{ event.x }}"),
])
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "alpha", "EMPTY": ""}) == expected


def test_expand_errors_name_every_variable() -> None:
    with pytest.raises(InterpolationError) as caught:
        expand("${ONE} and ${TWO}", {})
    assert caught.value.problems == [
        "environment variable ONE is not set (set it, or give a default: ${ONE:-...})",
        "environment variable TWO is not set (set it, or give a default: ${TWO:-...})"]
    with pytest.raises(InterpolationError, match="malformed variable reference"):
        expand("${1abc}", {})


def test_variables_in_rule_files(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: ${RULE_NAME:-hook}
    match: {type: "${TYPE}", state: "$${literal}"}
    actions:
      - webhook:
          url: "${HOOK_URL}"
          timeout: ${HOOK_TIMEOUT:-2.5}
          json: {quoted: "${HOOK_TIMEOUT:-7}"}
""")
    rule = load_rules([path], {"TYPE": "node", "HOOK_URL": "http://127.0.0.1:1/h"}).rules[0]
    assert rule.name == "hook"
    assert rule.match == {"type": "node", "state": "${literal}"}
    # an unquoted value becomes what it would have been if written directly; quoted stays text
    assert rule.actions[0].options == {
        "url": "http://127.0.0.1:1/h", "timeout": 2.5, "json": {"quoted": "7"}}
    assert [str(p) for p in check_paths([path], {"HOOK_URL": "http://127.0.0.1:1/h"})
            if not p.is_warning] == [
        f"{path}:3:19: rule hook: environment variable TYPE is not set "
        "(set it, or give a default: ${TYPE:-...})"]


# --- schema and samples ------------------------------------------------------------------------

def test_schema_is_valid_json_schema_and_lists_every_kind() -> None:
    document = schema()
    jsonschema.Draft202012Validator.check_schema(document)
    action = document["$defs"]["action"]
    assert set(action["properties"]) == {"log", "webhook", "alertmanager", "dockercloud", "audit",
                                          "docker", "postgres", "nats", "mqtt", "amqp",
                                          "pagerduty", "slack", "opsgenie", "msteams"}
    assert action["properties"]["log"]["required"] == ["message"]
    validator = jsonschema.Draft202012Validator(document)
    bad = {"rules": [{"name": "x", "match": {}, "actions": [{"lgo": {}}]}]}
    assert not validator.is_valid(bad)


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_samples_are_valid_against_the_schema(sample: Path) -> None:
    data = yaml.safe_load(sample.read_text(encoding="utf-8"))
    errors = [e.message for e in jsonschema.Draft202012Validator(schema()).iter_errors(data)]
    assert errors == []


def test_every_sample_loads_with_an_empty_environment() -> None:
    assert check_paths([SAMPLES], {}) == []
    ruleset = load_rules([SAMPLES], {})
    assert {"container-crashed", "node-unreachable", "action-failed", "audit-everything",
            "redeploy-stopped", "stream-gap"} <= set(ruleset.by_name)
    names = [r.name for r in ruleset.match(CONTAINER_STOPPED)]
    assert names == ["audit-everything", "container-crashed", "redeploy-stopped"]
    redeploy = ruleset.by_name["redeploy-stopped"]
    context = build_context(CONTAINER_STOPPED, redeploy.name, 0.0)
    assert redeploy.throttle_key(context) == SERVICE
    assert redeploy.actions[-1].render(context) == {"call": "redeploy", "target": SERVICE}
    audit = ruleset.by_name["audit-everything"].actions[0].options
    assert audit == {"path": "state/audit.jsonl"}


def test_samples_render_against_the_events_they_match() -> None:
    ruleset = load_rules([SAMPLES], {"ALERT_WEBHOOK_URL": "http://127.0.0.1:1/a"})
    events = [
        (dict(CONTAINER_STOPPED), {"exit_code": 137, "name": "web-1"}),
        ({"type": "node", "action": "update", "parents": [CLUSTER], "state": "Unreachable",
          "resource_uri": "/api/infra/v1/acme/node/fc1a5bb9/", "datetime": "x"}, None),
        ({"type": "action", "action": "update", "parents": [SERVICE], "state": "Failed",
          "resource_uri": "/api/audit/v1/action/7eaf7fff/", "datetime": "x"}, None),
        ({"type": "eventd", "action": "stream", "parents": [], "state": "disconnected",
          "resource_uri": "/eventd/stream/", "datetime": "x"}, None),
        ({"type": "eventd", "action": "stream", "parents": [], "state": "connected",
          "gap_seconds": 3.2, "resource_uri": "/eventd/stream/", "datetime": "x"}, None),
    ]
    rendered = {}
    for event, resource in events:
        for rule in ruleset.match(event):
            context = build_context(event, rule.name, 0.0, resource)
            assert rule.when_holds(context)
            rule.throttle_key(context)
            # a grouped action renders when its group closes, with `group` (here: of one event)
            grouped = dict(context, group={"key": "k", "count": 1, "events": [event]})
            rendered[rule.name] = [a.render(grouped if a.group else context) for a in rule.actions]
    assert set(rendered) == {"audit-everything", "container-crashed", "redeploy-stopped",
                             "node-unreachable", "action-failed", "stream-gap"}
    assert rendered["container-crashed"][1]["json"]["text"] == \
        "container web-1 crashed: exit code 137"
    assert rendered["container-crashed"][1]["url"] == "http://127.0.0.1:1/a"
    assert rendered["stream-gap"][0]["message"] == "event stream connected after a gap of 3.2s"
    assert ruleset.match({"type": "eventd", "state": "connected", "gap_seconds": None}) == [
        ruleset.by_name["audit-everything"]]


# --- the log action ----------------------------------------------------------------------------

def _job(options: dict[str, str]) -> ActionJob:
    return ActionJob(id="j1", rule="my-rule", kind="log", options=options, event={},
                     target="log", created_at=0.0)


def test_log_action_logs_at_the_level_with_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    action = LogAction(None)
    assert LogAction.validate({"message": "m"}) == []
    assert action.target({"message": "m"}) == "log"
    assert (LogAction.name, LogAction.durable, LogAction.per_event) == ("log", False, False)
    with caplog.at_level(logging.INFO, logger="eventd.actions.log"):
        for options in ({"message": "hello", "level": "warning"},
                        {"message": "quiet", "level": "debug"}, {"message": "plain"}):
            job = _job(options)
            outbound = action.prepare(job)  # a local write: the gate's `local` policy
            assert outbound.policy == "local" and outbound.calls[0].address.scheme == "log"
            assert action.send(job, outbound) == "logged"
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("eventd.actions.log", "WARNING", "rule my-rule: hello"),
        ("eventd.actions.log", "INFO", "rule my-rule: plain")]


def test_log_options_are_checked_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n- {name: a, match: {}, actions: [{log: {level: info}}]}\n")
    assert [str(p) for p in check_paths([path], {})] == [
        f"{path}:2:40: rule a: actions[0].log: missing required key 'message'"]
