"""Sandboxed Jinja2 for rule templates: checked and compiled once at load, rendered per event.

Rendering uses `ImmutableSandboxedEnvironment` with `StrictUndefined`, so a misspelt field
fails loudly (as a TemplateError naming the rule) instead of rendering an empty string.
Output is always text (no native types); `None` renders as the empty string, so a missing
parent (`{{ parent.stack }}` for a container without a stack) gives "" rather than "None".
Strings without `{{`, `{%` or `{#` are plain strings and cost nothing at run time.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, meta, nodes
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateAssertionError, TemplateSyntaxError, UndefinedError
from jinja2.nodes import Template as JinjaAst
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from markupsafe import Markup

from eventd.errors import TemplateError
from eventd.events import iso_utc, object_ref, parents_by_type
from eventd.ruleset import limits

#: The names a template may use at the top level.
CONTEXT_NAMES = ("event", "parent", "object", "rule", "now", "resource", "logs", "history")
#: what the templates of a grouped action (`group: {by: ...}`) also see when their group closes
GROUP_NAMES = (*CONTEXT_NAMES, "group")
#: Parent types that are always present in `parent` (None when the event has no such parent).
PARENT_TYPES = ("service", "stack", "node", "nodecluster")

_FALSE_TEXT = frozenset({"", "false", "0", "none", "no", "off"})
_WHOLE_EXPRESSION = re.compile(r"\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*", re.S)

Renderer = Callable[[Mapping[str, Any]], Any]
TreePath = tuple[str | int, ...]


def _finalize(value: Any) -> Any:
    return "" if value is None else limits.built(value, "an output")


class _Formatter(SandboxedFormatter):
    """`str.format` in the sandbox, refusing huge widths (`'{:>100000000}'.format(1)`)."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        limits.check_format_spec(format_spec)
        return limits.built(super().format_field(value, format_spec), "a formatted field")


class _EscapeFormatter(_Formatter, SandboxedEscapeFormatter):
    """The same, for Markup strings."""


class _CodeGenerator(CodeGenerator):
    """Compiles `~` to a sized concatenation instead of a plain join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.eventd_concat(")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")")


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with resource limits on everything that builds values (eventd.ruleset.limits)."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    code_generator_class = _CodeGenerator
    concat = staticmethod(limits.output)  # a template's output, and each macro's
    eventd_concat = staticmethod(limits.concat)
    eventd_iter = staticmethod(limits.iterate)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: limits.guard_filter(name, func) for name, func in self.filters.items()}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limits.binop(operator, left, right)
        return limits.built(super().call_binop(context, operator, left, right), "an operation")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        args = limits.call(__obj, args, kwargs)
        return limits.built(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map`, with the width limits of _Formatter."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) \
                or value.__name__ not in ("format", "format_map") \
                or not isinstance(value.__self__, str):
            return None
        text: str = value.__self__
        formatter = _EscapeFormatter(self, escape=text.escape) if isinstance(text, Markup) \
            else _Formatter(self)
        is_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one positional argument")
                kwargs = args[0]
                args = ()
            limits.refuse_over(len(text) + text.count("{") * max(limits.largest(args),
                                                                 limits.largest(kwargs)),
                               "format()")
            return type(text)(formatter.vformat(text, args, kwargs))
        return functools.update_wrapper(wrapper, value)

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        """Compile, with every `{% for %}` iterating through limits.iterate (to check the time)."""
        for loop in source.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("eventd_iter"), [loop.iter], [],
                                   None, None, lineno=loop.lineno)
        return super()._generate(source, name, filename, defer_init)


ENV = _Environment(undefined=StrictUndefined, autoescape=False, finalize=_finalize,
                   keep_trailing_newline=True)


def is_template(text: str) -> bool:
    """True when `text` holds Jinja syntax and so needs rendering."""
    return "{{" in text or "{%" in text or "{#" in text


def _check_names(ast: JinjaAst, names: tuple[str, ...] = CONTEXT_NAMES) -> list[str]:
    problems = []
    for name in sorted(meta.find_undeclared_variables(ast)):
        if name in names or name in ENV.globals:
            continue
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"template uses unknown name {name!r}{hint}; "
                        f"known: {', '.join(names)}")
    return problems


def _syntax_message(exc: TemplateSyntaxError) -> str:
    return f"template syntax error: {exc.message} (template line {exc.lineno})"


def _assertion_message(exc: TemplateSyntaxError) -> str:
    """`No filter named 'bogus'.`, with a did-you-mean among the known filters or tests."""
    message = exc.message or str(exc)
    named = re.match(r"No (filter|test) named '([^']*)'", message)
    if named is not None:
        known = ENV.filters if named.group(1) == "filter" else ENV.tests
        close = difflib.get_close_matches(named.group(2), list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {named.group(1)} {named.group(2)!r}{hint} (template line {exc.lineno})"
    return _syntax_message(exc)


def check(source: str, names: tuple[str, ...] = CONTEXT_NAMES) -> list[str]:
    """Problems in a template at load time: syntax errors, unknown names, filters and tests.

    `names`: those a template may use (a grouped action's also sees `group`)."""
    try:
        ast = ENV.parse(source)
        problems = _check_names(ast, names)
        if not problems:
            _compiled(source)  # compiling also finds unknown filters and tests
    except TemplateAssertionError as exc:  # a subclass of TemplateSyntaxError
        return [_assertion_message(exc)]
    except TemplateSyntaxError as exc:
        return [_syntax_message(exc)]
    except RecursionError:
        return ["template nested too deeply"]
    except Exception as exc:  # Jinja folds constants while compiling: `{{ (0)[0] ~ 'x' }}` fails there
        return [f"template fails on its constants: {describe(exc)}"]
    return problems


def describe(exc: BaseException) -> str:
    """A one-line account of why rendering failed."""
    if isinstance(exc, SecurityError):
        return f"refused by the sandbox: {exc}"
    if isinstance(exc, (UndefinedError, JinjaTemplateError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _fail(rule: str, where: str, exc: BaseException) -> TemplateError:
    return TemplateError(f"rule {rule!r}: {where}: {describe(exc)}", rule=rule)


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    """Compile each distinct source once: rule sets repeat the same messages many times,
    and a compiled template costs tens of kilobytes. Templates are immutable, so sharing
    is safe."""
    return ENV.from_string(source)


class Text:
    """One compiled string template; render() raises TemplateError naming rule and place."""

    __slots__ = ("source", "rule", "where", "_render")

    def __init__(self, source: str, rule: str, where: str) -> None:
        self.source = source
        self.rule = rule
        self.where = where
        self._render = _compiled(source).render

    def render(self, context: Mapping[str, Any]) -> str:
        """Render with the given context, within the limits of eventd.ruleset.limits."""
        owner = limits.start()
        try:
            return str(self._render(context))
        except Exception as exc:  # anything a user's template can raise, e.g. ZeroDivisionError
            raise _fail(self.rule, self.where, exc) from exc
        finally:
            if owner:
                limits.stop()

    def __repr__(self) -> str:
        return f"Text({self.source!r})"


class Condition:
    """A `when:` condition: `{{ expr }}` or a bare `expr` is evaluated as an expression.

    Any other template is rendered, and the text counts as false when it is empty or one of
    false/0/none/no/off (case-insensitive).
    """

    __slots__ = ("source", "rule", "_expression", "_text")

    def __init__(self, source: str, rule: str) -> None:
        self.source = source
        self.rule = rule
        self._expression: Callable[..., Any] | None = None
        self._text: Text | None = None
        expr = _expression_of(source)
        if expr is not None:
            self._expression = ENV.compile_expression(expr, undefined_to_none=False)
        else:
            self._text = Text(source, rule, "when")

    def holds(self, context: Mapping[str, Any]) -> bool:
        """Evaluate; raise TemplateError when evaluation fails (including an undefined result)."""
        if self._text is not None:
            return self._text.render(context).strip().lower() not in _FALSE_TEXT
        assert self._expression is not None
        owner = limits.start()
        try:
            value = self._expression(context)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            return bool(value)
        except Exception as exc:
            raise _fail(self.rule, "when", exc) from exc
        finally:
            if owner:
                limits.stop()

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def _expression_of(source: str) -> str | None:
    whole = _WHOLE_EXPRESSION.fullmatch(source)
    if whole is not None:
        return whole.group("expr")
    if not is_template(source):
        return source
    return None


def check_condition(source: str) -> list[str]:
    """Load-time problems of a `when:` condition."""
    expr = _expression_of(source)
    problems = check(source if expr is None else "{{ " + expr + " }}")
    if not problems and expr is not None:
        try:
            ENV.compile_expression(expr, undefined_to_none=False)
        except TemplateSyntaxError as exc:  # e.g. `{{ a }} {{ b }}` is no single expression
            problems.append(_assertion_message(exc))
        except RecursionError:
            problems.append("template nested too deeply")
        except Exception as exc:  # constants folded while compiling, as in check()
            problems.append(f"template fails on its constants: {describe(exc)}")
    return problems


#: What templates may read under `parent` and `object`, and where `event` fields come from.
_ATTRIBUTES: dict[str, tuple[str, ...]] = {"parent": PARENT_TYPES, "object": ("type", "uuid")}


def warnings(source: str, enriched: bool, condition: bool = False) -> list[str]:
    """Likely typos in a template that still loads: `parent.servce`, `resource` without enrich."""
    if condition:
        expr = _expression_of(source)
        source = source if expr is None else "{{ " + expr + " }}"
    try:
        ast = ENV.parse(source)
        names = meta.find_undeclared_variables(ast)
    except Exception:  # noqa: BLE001 - whatever fails here was reported as an error by check()
        return []
    found: list[str] = []
    for node in ast.find_all(nodes.Getattr):
        target = node.node
        if isinstance(target, nodes.Name) and target.name in _ATTRIBUTES:
            known = _ATTRIBUTES[target.name]
            if node.attr not in known:
                close = difflib.get_close_matches(node.attr, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                found.append(f"template reads {target.name}.{node.attr}, which is never set{hint}; "
                             f"{target.name} has: {', '.join(known)}")
    if not enriched and "resource" in names:
        found.append("template uses `resource` but the rule has no `enrich: resource`, "
                     "so resource is always empty")
    return list(dict.fromkeys(found))


def warnings_tree(value: Any, enriched: bool, condition: bool = False,
                  path: TreePath = ()) -> list[tuple[TreePath, str]]:
    """warnings() of every template string inside `value`, with their paths."""
    found: list[tuple[TreePath, str]] = []
    if isinstance(value, str):
        if condition or is_template(value):
            found.extend((path, message) for message in warnings(value, enriched, condition))
    elif isinstance(value, dict):
        for key, sub in value.items():
            found.extend(warnings_tree(sub, enriched, False, path + (key,)))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found.extend(warnings_tree(sub, enriched, False, path + (i,)))
    return found


def compile_tree(value: Any, rule: str, where: str) -> Renderer:
    """Compile every template string inside `value`; the renderer returns fresh containers.

    All the templates of one tree (an action's options) share one render budget.
    """
    render = _tree(value, rule, where)
    if not has_template(value):
        return render

    def budgeted(context: Mapping[str, Any]) -> Any:
        owner = limits.start()
        try:
            return render(context)
        finally:
            if owner:
                limits.stop()
    return budgeted


def has_template(value: Any) -> bool:
    """Whether a template string is anywhere inside `value` (a string, dict or list)."""
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(has_template(v) for v in value)
    return False


def _tree(value: Any, rule: str, where: str) -> Renderer:
    if isinstance(value, dict) and all(v is None or isinstance(v, (str, int, float))
                                       for v in value.values()) and not has_template(value):
        return lambda context: value.copy()  # fresh, in one C call (an audit file's options)
    if isinstance(value, str):
        return Text(value, rule, where).render if is_template(value) else _constant(value)
    if isinstance(value, dict):
        items = [(key, _tree(sub, rule, f"{where}.{key}")) for key, sub in value.items()]
        return lambda context: {key: render(context) for key, render in items}
    if isinstance(value, list):
        parts = [_tree(sub, rule, f"{where}[{i}]") for i, sub in enumerate(value)]
        return lambda context: [render(context) for render in parts]
    return _constant(value)


def _constant(value: Any) -> Renderer:
    return lambda context: value


def check_tree(value: Any, path: TreePath = (),
               names: tuple[str, ...] = CONTEXT_NAMES) -> list[tuple[TreePath, str]]:
    """Load-time problems of every template string inside `value`, with their paths."""
    found: list[tuple[TreePath, str]] = []
    if isinstance(value, str):
        if is_template(value):
            found.extend((path, message) for message in check(value, names))
    elif isinstance(value, dict):
        for key, sub in value.items():
            found.extend(check_tree(sub, path + (key,), names))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found.extend(check_tree(sub, path + (i,), names))
    return found


def build_context(event: Mapping[str, Any], rule_name: str, now: float,
                  resource: Any = None) -> dict[str, Any]:
    """The names templates see: event, parent, object, rule, now, resource, logs, history."""
    parent: dict[str, Any] = dict.fromkeys(PARENT_TYPES)
    parent.update(parents_by_type(event.get("parents")))
    ref = object_ref(event.get("resource_uri"))
    return {
        "event": event,
        "parent": parent,
        "object": {"type": ref.type, "uuid": ref.uuid} if ref else {"type": None, "uuid": None},
        "rule": rule_name,
        "now": iso_utc(now),
        "resource": resource,
        "logs": [],  # `enrich: logs`: the container's last lines, redacted
        "history": None,  # `enrich: history`: eventd.ruleset.enrichment.history_view
    }
