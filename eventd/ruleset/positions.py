"""Rule files as YAML with positions: every value and key keeps the line and column it started at.

Also where a file's size is capped (bytes, nodes once aliases are expanded, aliases, depth), so
that a hostile or broken file costs milliseconds and gets one clear line instead of a
`MemoryError` or a `RecursionError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import yaml

from eventd.ruleset.interpolate import InterpolationError, expand, references
from eventd.ruleset.model import Problem

JsonPath = tuple[str | int, ...]
_SCALARS = (str, int, float, bool, type(None))

#: The caps on what one rule file may hold (a real rule file is far below each).
MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 100_000  # values, counted as often as aliases repeat them
MAX_ALIASES = 1_000
MAX_DEPTH = 64  # nested mappings and lists

#: a quoted piece of a message (parsers quote the token they stopped at)
_QUOTED = re.compile(r"(['\"])([^'\"]{1,200})\1")


class LimitExceeded(Exception):
    """A rule file over one of the caps; `line` and `col` say where it was hit."""

    def __init__(self, message: str, line: int = 1, col: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


class _MarkLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    """A SafeLoader we only use to compose nodes (which carry marks) and construct scalars.

    Composing recurses once per level and merge keys multiply mappings: both are capped here,
    before they can exhaust the stack or memory.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def _next_mark(self) -> Any:
        parser: Any = self  # types-PyYAML leaves the parser's methods untyped
        return parser.peek_event().start_mark

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise LimitExceeded(f"too many aliases: more than {MAX_ALIASES} "
                                    "(the cap for a rule file)", *pos(self._next_mark()))
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise LimitExceeded(f"nested too deeply: more than {MAX_DEPTH} levels "
                                    "(the cap for a rule file)", *pos(self._next_mark()))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)
        if len(node.value) > MAX_NODES:
            raise LimitExceeded(f"too many YAML nodes: more than {MAX_NODES} once merge keys "
                                "are expanded (the cap for a rule file)", *pos(node.start_mark))


class Issue(NamedTuple):
    """One thing wrong at a path of a document (at its key, or at its value)."""

    path: JsonPath
    at_key: bool
    message: str
    severity: str = "error"


class Doc:
    """A parsed file: data, where each value and key started, and issues found so far."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.data: Any = None
        self.values: dict[JsonPath, tuple[int, int]] = {}
        self.keys: dict[JsonPath, tuple[int, int]] = {}
        self.issues: list[Issue] = []
        self.nodes = 0  # values built so far, aliases counted each time they are used
        self.expansions: dict[str, str] = {}  # expanded text -> the text as written
        self.variables: dict[str, str] = {}  # variable name -> value, for scrub()

    def where(self, path: JsonPath, at_key: bool = False) -> tuple[int, int]:
        if at_key and path in self.keys:
            return self.keys[path]
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, (1, 1))

    def rule_name(self, path: JsonPath) -> str | None:
        if len(path) >= 2 and path[0] == "rules" and isinstance(self.data, dict):
            rules = self.data.get("rules")
            if isinstance(rules, list) and isinstance(path[1], int) and path[1] < len(rules):
                rule = rules[path[1]]
                if isinstance(rule, dict) and isinstance(rule.get("name"), str):
                    return str(rule["name"])
        return None

    def problem(self, issue: Issue) -> Problem:
        line, col = self.where(issue.path, issue.at_key)
        return Problem(self.label, line, col, self.rule_name(issue.path), self.scrub(issue.message),
                       issue.severity)

    def scrub(self, message: str) -> str:
        """The message with every value that came from `${VAR}` replaced by the variable's name.

        Rule files take secrets from the environment: an error about a value must not print it.
        """
        for expanded, source in self.expansions.items():
            message = message.replace(repr(expanded), repr(source))
        secrets = {name: value for name, value in self.variables.items() if len(value) >= 4}
        for name, value in secrets.items():  # shorter ones are not secrets, would garble it
            message = message.replace(value, "${" + name + "}")
        if not secrets:
            return message

        def piece(match: re.Match[str]) -> str:
            # A parser quotes one token of a value (Jinja: "got 'SECRETPART1'"): a piece of
            # a secret is a secret too.
            quoted = match.group(2)
            for name, value in secrets.items():
                if len(quoted) >= 2 and quoted in value:
                    return f"{match.group(1)}(part of ${{{name}}}){match.group(1)}"
            return match.group(0)
        return _QUOTED.sub(piece, message)


def pos(mark: yaml.Mark) -> tuple[int, int]:
    """Line and column from 1, as editors count."""
    return mark.line + 1, mark.column + 1


def _build(loader: _MarkLoader, node: yaml.Node, path: JsonPath, environ: Mapping[str, str],
           doc: Doc) -> Any:
    doc.nodes += 1
    if doc.nodes > MAX_NODES:
        raise LimitExceeded(f"too many YAML nodes: more than {MAX_NODES} once aliases are expanded "
                            "(the cap for a rule file)", *pos(node.start_mark))
    if len(path) > MAX_DEPTH:
        raise LimitExceeded(f"nested too deeply: more than {MAX_DEPTH} levels, aliases included "
                            "(the cap for a rule file)", *pos(node.start_mark))
    doc.values[path] = pos(node.start_mark)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                doc.values[path + ("?",)] = pos(key_node.start_mark)
                doc.issues.append(Issue(path + ("?",), False, "keys must be plain strings"))
                continue
            key = key_node.value  # the text as written: `on:` stays "on", not True
            key_path = path + (key,)
            doc.keys[key_path] = pos(key_node.start_mark)
            if key in mapping:
                doc.issues.append(Issue(key_path, True, f"duplicate key {key!r}"))
            mapping[key] = _build(loader, value_node, key_path, environ, doc)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, child, path + (i,), environ, doc)
                for i, child in enumerate(node.value)]
    value = loader.construct_object(node)
    if not isinstance(value, _SCALARS):  # dates, binary: keep the text
        value = node.value
    if isinstance(value, str) and "$" in value:
        try:
            expanded = expand(value, environ)
        except InterpolationError as exc:
            doc.issues.extend(Issue(path, False, m) for m in exc.problems)
            return value
        if expanded != value:
            doc.expansions[expanded] = value
            doc.variables.update(references(value, environ))
        # an unquoted `${TIMEOUT:-5}` becomes what `5` would have been: a number
        plain = getattr(node, "style", None) is None  # every ScalarNode has a style
        value = _plain(loader, expanded) if plain and expanded != value else expanded
    return value


def _plain(loader: _MarkLoader, text: str) -> Any:
    resolver: Any = loader  # types-PyYAML leaves the resolver untyped
    tag = resolver.resolve(yaml.ScalarNode, text, (True, False))
    try:
        value = loader.construct_object(yaml.ScalarNode(tag, text))
    except yaml.YAMLError:
        return text
    return value if isinstance(value, _SCALARS) else text


def _refuse_expansion(root: yaml.Node) -> None:
    """Count the nodes a document expands to (shared nodes once per use) before building it.

    Composing keeps an alias as one shared node, so a 300-byte alias bomb composes in
    microseconds; counting over shared nodes with a memo costs as little.
    """
    memo: dict[int, int] = {}

    def count(node: yaml.Node) -> int:
        known = memo.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(count(k) + count(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(count(child) for child in node.value)
        if total > MAX_NODES:
            raise LimitExceeded(f"too many YAML nodes: more than {MAX_NODES} once aliases are "
                                "expanded (the cap for a rule file)", *pos(node.start_mark))
        memo[id(node)] = total
        return total

    count(root)


def parse(doc: Doc, text: str, environ: Mapping[str, str]) -> None:
    """Fill `doc` from YAML text; raise yaml.YAMLError or LimitExceeded."""
    loader = _MarkLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _refuse_expansion(node)
            doc.data = _build(loader, node, (), environ, doc)
    finally:
        loader.dispose()


