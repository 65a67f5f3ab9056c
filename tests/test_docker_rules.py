"""Rules on Docker Engine events: quoted path segments for label keys with dots (both sources),
and the sample rules in rules/docker/."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from eventd.fields import MISSING, FieldPathError, field_getter, split_path
from eventd.ruleset.loader import load_rules
from eventd.sources.docker.mapping import engine_event

DIE = {"Type": "container", "Action": "die", "scope": "local", "time": 1795794162,
       "timeNano": 1795794162788755016,
       "Actor": {"ID": "abc123", "Attributes": {"com.docker.compose.service": "web",
                                                "exitCode": "3", "name": "web-1"}}}


@pytest.mark.parametrize("path, parts", [
    ("type", ("type",)), ("data.errorMessage", ("data", "errorMessage")),
    ('attributes."com.docker.compose.service"', ("attributes", "com.docker.compose.service")),
    ('"a.b"', ("a.b",)), ('"a.b"."c.d".e', ("a.b", "c.d", "e")),
])
def test_split_path(path, parts):
    assert split_path(path) == parts


@pytest.mark.parametrize("path", ['a."b', 'a."b"c', 'a.""', 'a."b".', 'a.b"c"', '""'])
def test_bad_paths_are_refused(path):
    with pytest.raises(FieldPathError):
        split_path(path)


def test_a_quoted_segment_reads_a_key_holding_dots():
    event = engine_event(DIE)
    assert field_getter('attributes."com.docker.compose.service"')(event) == "web"
    assert field_getter("attributes.com.docker.compose.service")(event) is MISSING
    assert field_getter('attributes."com.docker.nothing"')(event) is MISSING


def rules(tmp_path: Path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return load_rules([path], {})


def names(ruleset, event) -> list[str]:
    return [rule.name for rule in ruleset.match(event)]


def test_rules_reach_a_dotted_label_on_docker_events(tmp_path: Path):
    ruleset = rules(tmp_path, """
        rules:
          - name: web-died
            match:
              type: container
              action: die
              attributes."com.docker.compose.service": web
              attributes.exitCode: {not: "0"}
            actions: [{log: {message: "{{ event.name }} exited {{ event.attributes.exitCode }}"}}]
          - name: db-died
            match: {attributes."com.docker.compose.service": {glob: "db*"}}
            actions: [{log: {message: x}}]
    """)
    assert names(ruleset, engine_event(DIE)) == ["web-died"]
    clean = engine_event({**DIE, "Actor": {"ID": "abc", "Attributes": {
        "com.docker.compose.service": "web", "exitCode": "0"}}})
    assert names(ruleset, clean) == []


def test_rules_reach_a_dotted_key_on_docker_cloud_events_too(tmp_path: Path):
    ruleset = rules(tmp_path, """
        rules:
          - name: dotted
            match: {type: container, data."a.b": 1}
            actions: [{log: {message: x}}]
    """)
    event = {"type": "container", "action": "update", "state": "Running", "parents": [],
             "resource_uri": "/api/app/v1/container/x/", "uuid": "u", "data": {"a.b": 1}}
    assert names(ruleset, event) == ["dotted"]
    assert names(ruleset, dict(event, data={"a": {"b": 1}})) == []


def test_the_prefilter_reads_quoted_segments_as_matching_does(tmp_path: Path):
    # Enough rules on one field for the prefilter to group them (eventd.ruleset.prefilter).
    text = "rules:\n" + "".join(
        f"  - name: svc{i}\n    match: {{attributes.\"com.docker.compose.service\": svc{i}}}\n"
        f"    actions: [{{log: {{message: x}}}}]\n" for i in range(20))
    ruleset = rules(tmp_path, text)
    event = engine_event({**DIE, "Actor": {"ID": "a", "Attributes": {
        "com.docker.compose.service": "svc7"}}})
    assert names(ruleset, event) == ["svc7"]


# -- the sample rules -----------------------------------------------------------------------------
SAMPLES = Path(__file__).resolve().parent.parent / "rules" / "docker"


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_samples_are_valid_against_the_schema(sample: Path):
    import jsonschema
    import yaml

    from eventd.ruleset.loader import schema

    data = yaml.safe_load(sample.read_text(encoding="utf-8"))
    assert [e.message for e in jsonschema.Draft202012Validator(schema()).iter_errors(data)] == []


def test_samples_match_the_events_they_are_for():
    ruleset = load_rules([SAMPLES], {})

    def event(action: str, **attributes: str) -> dict:
        return engine_event({**DIE, "Action": action,
                             "Actor": {"ID": "abc", "Attributes": {"name": "w", **attributes}}})

    assert names(ruleset, event("die", exitCode="3")) == ["docker-container-died"]
    assert names(ruleset, event("die", exitCode="0")) == []
    assert names(ruleset, event("oom")) == ["docker-container-oom"]
    labelled = {"eventd.restart": "true"}
    assert names(ruleset, event("health_status: unhealthy", **labelled)) == \
        ["docker-restart-unhealthy"]
    assert names(ruleset, event("health_status: unhealthy")) == []
    assert names(ruleset, event("health_status: healthy", **labelled)) == []


def test_the_schema_describes_every_field_of_both_sources():
    from eventd.ruleset.loader import schema
    from eventd.sources.docker.vocabulary import FIELDS

    described = schema()["$defs"]["match"]["properties"]
    for field in FIELDS:
        if field in ("status", "from"):  # the Engine's deprecated copies: matchable, not advertised
            continue
        assert field in described, field
        assert described[field]["description"].startswith(("docker.", "Both sources.")), field
    for field in ("type", "action", "state", "resource_uri", "parents", "data", "uuid", "datetime"):
        assert field in described, field


# -- eventd check knows which source the rules are for --------------------------------------------
def check_lines(tmp_path: Path, text: str, *args: str, environ: dict | None = None) -> tuple[int, str]:
    import io

    from eventd.cli import build_parser
    from eventd.commands import check

    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    out, err = io.StringIO(), io.StringIO()
    parsed = build_parser().parse_args(["check", *args, str(path)])
    code = check.run(parsed, environ or {}, out, err)
    return code, out.getvalue() + err.getvalue()


TYPOS = """
    rules:
      - name: typos
        match:
          type: containr
          action: dei
          attributes."com.docker.compose.service": web
        actions: [{log: {message: x}}]
      - name: health
        match: {type: container, action: health_status, state: unhealty}
        actions: [{log: {message: x}}]
      - name: exec
        match: {action: exec_start, state: "sh -c date", Actor.Attributes.name: web}
        actions: [{log: {message: x}}]
"""


def test_check_source_docker_warns_about_engine_typos_only(tmp_path: Path):
    code, text = check_lines(tmp_path, TYPOS, "--source", "docker", "--strict")
    assert code == 1
    warnings = [line for line in text.splitlines() if "warning:" in line]
    assert len(warnings) == 3, text
    assert "unknown object type 'containr' (did you mean 'container'?); the Engine API lists" \
        in warnings[0]
    assert "unknown action 'dei' (did you mean 'die'?)" in warnings[1]
    assert "unknown state 'unhealty' (did you mean 'unhealthy'?); the Engine API lists: " \
           "starting, healthy, unhealthy" in warnings[2]


def test_check_reads_the_source_from_the_environment_and_defaults_to_docker_cloud(tmp_path: Path):
    sample = (SAMPLES / "restart-unhealthy.yaml").read_text()
    code, text = check_lines(tmp_path, sample, "--strict", environ={"EVENTD_SOURCE": "docker"})
    assert code == 0 and "warning" not in text
    code, text = check_lines(tmp_path, sample, "--strict")
    assert code == 1 and "unknown event field 'attributes'" in text
    assert "unknown action 'health_status'" in text


def test_the_docker_daemon_loads_its_samples_without_typo_warnings(caplog):
    import logging

    from eventd.pipeline import rule_vocabulary

    with caplog.at_level(logging.WARNING, logger="eventd.ruleset.loader"):
        ruleset = load_rules([SAMPLES], {}, rule_vocabulary("docker"))
    assert len(ruleset) == 3 and caplog.records == []
