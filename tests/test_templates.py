"""Templates: the context, strict names, the sandbox, `when` conditions, option trees."""

from __future__ import annotations

import pytest

from eventd.errors import TemplateError
from eventd.ruleset.templates import Condition, Text, build_context, check, check_condition, compile_tree

SERVICE = "/api/app/v1/acme/service/09cbcf8d-a727-40d9-b420-c8e18b7fa55b/"
STACK = "/api/app/v1/acme/stack/46aca402-2109-4a70-a378-760cfed43816/"
EVENT = {
    "type": "container", "action": "update", "parents": [SERVICE, STACK],
    "resource_uri": "/api/app/v1/acme/container/c1dd4e1e-1356-411c-8613-e15146633640/",
    "state": "Stopped", "uuid": "6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01",
    "datetime": "2016-06-01T10:15:02Z",
}


def render(source: str, resource: object = None, event: dict | None = None) -> str:
    context = build_context(event or EVENT, "my-rule", 1464776102.0, resource)
    return Text(source, "my-rule", "action 0 (log) option message").render(context)


def test_context_names() -> None:
    assert render("{{ event.state }} {{ event.parents[1] }}") == f"Stopped {STACK}"
    assert render("{{ parent.service }}|{{ parent.stack }}") == f"{SERVICE}|{STACK}"
    assert render("{{ object.type }} {{ object.uuid }}") == \
        "container c1dd4e1e-1356-411c-8613-e15146633640"
    assert render("{{ rule }} at {{ now }}") == "my-rule at 2016-06-01T10:15:02Z"
    assert render("{{ resource.exit_code }}", resource={"exit_code": 137}) == "137"


def test_missing_parent_renders_empty_not_an_error() -> None:
    assert render("[{{ parent.node }}][{{ parent.nodecluster }}]") == "[][]"
    assert render("{{ parent.node is none }}") == "True"
    assert render("[{{ resource }}]") == "[]"


def test_object_of_an_event_without_resource_uri() -> None:
    assert render("{{ object.type is none }}", event={"type": "error"}) == "True"


def test_whole_template_values_stay_strings() -> None:
    assert render("{{ event.parents }}") == str([SERVICE, STACK])
    tree = compile_tree({"json": {"n": "{{ 1 + 1 }}", "raw": 5, "list": ["{{ rule }}", True]},
                         "plain": "no template"}, "my-rule", "action 0 (webhook) option")
    assert tree(build_context(EVENT, "my-rule", 0.0)) == {
        "json": {"n": "2", "raw": 5, "list": ["my-rule", True]}, "plain": "no template"}


def test_rendered_trees_are_fresh_each_time() -> None:
    tree = compile_tree({"a": ["x"]}, "r", "option")
    first = tree({})
    first["a"].append("y")
    assert tree({}) == {"a": ["x"]}


def test_undefined_name_raises_template_error_naming_rule_and_place() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ event.foo }}")
    assert caught.value.rule == "my-rule"
    assert str(caught.value) == ("rule 'my-rule': action 0 (log) option message: "
                                 "'dict object' has no attribute 'foo'")


def test_runtime_errors_become_template_errors() -> None:
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        render("{{ 1 / 0 }}")


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ event.__class__ }}",
    "{{ event.clear() }}",
    "{{ event.parents.append('x') }}",
    "{{ 'a' * 1000000 }}",
    "{{ 9 ** 99999999 }}",
])
def test_sandbox_escapes_are_refused(source: str) -> None:
    event = dict(EVENT, parents=list(EVENT["parents"]))
    with pytest.raises(TemplateError) as caught:
        render(source, event=event)
    assert caught.value.rule == "my-rule"
    assert event == EVENT  # nothing was mutated


def test_check_reports_syntax_errors_and_unknown_names() -> None:
    assert check("{{ event.state }}") == []
    assert check("{% for p in event.parents %}{{ p }}{% endfor %}{{ range(2) | list }}") == []
    assert check("{{ event.state ") == [
        "template syntax error: unexpected end of template, expected 'end of print statement'."
        " (template line 1)"]
    assert check("{{ evnt.state }} {{ parnet }} {{ zzz }}") == [
        "template uses unknown name 'evnt' (did you mean 'event'?); "
        "known: event, parent, object, rule, now, resource",
        "template uses unknown name 'parnet' (did you mean 'parent'?); "
        "known: event, parent, object, rule, now, resource",
        "template uses unknown name 'zzz'; known: event, parent, object, rule, now, resource",
    ]


@pytest.mark.parametrize("source, resource, expected", [
    ("{{ resource.exit_code not in (0, None) }}", {"exit_code": 1}, True),
    ("{{ resource.exit_code not in (0, None) }}", {"exit_code": 0}, False),
    ("{{ resource.exit_code not in (0, None) }}", {"exit_code": None}, False),
    ("resource.exit_code != 0", {"exit_code": 2}, True),  # a bare expression
    ("{{ event.state == 'Stopped' }}", None, True),
    ("{% if event.state == 'Running' %}yes{% endif %}", None, False),  # text: "" is false
    ("{% if event.state == 'Stopped' %}yes{% endif %}", None, True),
    ("{{ 'False' }}x", None, True),
    ("{% if true %}False{% endif %}", None, False),
])
def test_when_conditions(source: str, resource: object, expected: bool) -> None:
    context = build_context(EVENT, "my-rule", 0.0, resource)
    assert Condition(source, "my-rule").holds(context) is expected


def test_when_with_an_undefined_name_raises() -> None:
    context = build_context(EVENT, "my-rule", 0.0, {"other": 1})
    with pytest.raises(TemplateError) as caught:
        Condition("{{ resource.exit_code != 0 }}", "my-rule").holds(context)
    assert str(caught.value) == "rule 'my-rule': when: 'dict object' has no attribute 'exit_code'"
    with pytest.raises(TemplateError, match="has no attribute 'nope'"):
        Condition("{{ event.nope }}", "my-rule").holds(context)


def test_check_condition() -> None:
    assert check_condition("{{ resource.exit_code != 0 }}") == []
    assert check_condition("resourse.exit_code") == [
        "template uses unknown name 'resourse' (did you mean 'resource'?); "
        "known: event, parent, object, rule, now, resource"]
    assert check_condition("{{ resource.exit_code !=  }}")[0].startswith("template syntax error")
