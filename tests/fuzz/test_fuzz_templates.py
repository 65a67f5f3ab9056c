"""Templates: random template strings in the sandbox give a rendered string or TemplateError.

`check` (load time) never raises; a template it accepts renders to text or raises TemplateError,
within the limits of eventd.ruleset.limits, whatever it does.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventd.errors import TemplateError
from eventd.ruleset.templates import ENV, Condition, Text, build_context, check, check_condition

EVENT = {"type": "container", "action": "update", "state": "Stopped", "uuid": "u", "n": 3,
         "parents": ["/api/app/v1/ns/service/5/", "/api/app/v1/ns/stack/6/"],
         "resource_uri": "/api/app/v1/ns/container/7/", "data": {"errorMessage": "x"}}
CONTEXT = build_context(EVENT, "r", 0.0, {"exit_code": 1, "name": "web", "list": [1, 2]})

names = st.sampled_from(["event", "event.state", "event.parents", "event.n", "parent.service",
                         "object.uuid", "rule", "now", "resource", "resource.list", "x", "loop",
                         "range(5)", "lipsum", "namespace()", "dict(a=1)", "cycler(1, 2)"])
literals = (st.integers(-10**6, 10**6).map(str) | st.sampled_from(
    ["'a'", "''", "'{}'", "'%s'", "'%05d'", "[1, 2]", "{'a': 1}", "none", "true", "10**8",
     "'x' * 1000", "9**99", "1.5", "(1, 'b')"]))
operators = st.sampled_from([" + ", " - ", " * ", " / ", " // ", " % ", " ** ", " ~ ", " and ",
                             " or ", " == ", " < ", " in ", " is defined and "])
filters = st.sampled_from(sorted(ENV.filters)) | st.just("bogus")
arguments = st.lists(literals | names, max_size=2).map(lambda a: "(" + ", ".join(a) + ")")


@st.composite
def expressions(draw: st.DrawFn, depth: int = 3) -> str:
    kind = draw(st.integers(0, 5 if depth else 1))
    if kind == 0:
        return draw(names)
    if kind == 1:
        return draw(literals)
    sub = draw(expressions(depth - 1))
    if kind == 2:
        return sub + draw(operators) + draw(expressions(depth - 1))
    if kind == 3:
        return f"{sub}|{draw(filters)}" + (draw(arguments) if draw(st.booleans()) else "")
    if kind == 4:
        return f"{sub}.{draw(st.sampled_from(['upper', 'format', 'center', 'join', 'replace']))}" \
               + draw(arguments)
    return f"({sub})[{draw(literals)}]"


SHAPES = ["{{ %s }}", "{% if %s %}y{% endif %}", "{% for i in %s %}{{ i }}{% endfor %}",
          "{% set v = %s %}{{ v }}", "text ", "{#", "{{ %s ", "%s }}", "{% for i in %s %}",
          "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(%s) }}", "{{ (%s) ~ (%s) }}"]


@st.composite
def templates(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        shape = draw(st.sampled_from(SHAPES))
        while "%s" in shape:
            shape = shape.replace("%s", draw(expressions()), 1)
        parts.append(shape)
    source = "".join(parts)
    if draw(st.booleans()):  # cut short, as a typo does
        source = source[:draw(st.integers(0, len(source)))]
    return source


@given(templates())
def test_random_templates_render_or_raise_template_error(source: str) -> None:
    problems = check(source)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    if problems:
        return
    try:
        assert isinstance(Text(source, "r", "w").render(CONTEXT), str)
    except TemplateError as exc:
        assert exc.rule == "r"


@given(expressions())
def test_random_conditions_hold_or_raise_template_error(source: str) -> None:
    if check_condition(source):
        return
    try:
        assert Condition(source, "r").holds(CONTEXT) in (True, False)
    except TemplateError as exc:
        assert exc.rule == "r"


@given(st.text(max_size=60))
def test_any_text_is_checked_without_raising(source: str) -> None:
    problems = check(source)
    if not problems:
        try:
            Text(source, "r", "w").render(CONTEXT)
        except TemplateError:
            pass
