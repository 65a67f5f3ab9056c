"""Scenario files: a world and a timeline of steps, validated with file:line in every error."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from eventd.emulator.errors import ScenarioError
from eventd.emulator.world import DEFAULT_WORLD, ServiceSpec, WorldSpec

# step name → {argument: (type check, default or _REQUIRED)}
_REQUIRED = object()
_INT = (int,)
_NUM = (int, float)
STEPS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "container_exit": {"service": ((str,), _REQUIRED), "index": (_INT, 0),
                       "exit_code": (_INT, 1)},
    "node_unreachable": {"index": (_INT, 0)},
    "node_deployed": {"index": (_INT, 0)},
    "failed_action": {"service": ((str,), _REQUIRED), "action": ((str,), "Service Redeploy")},
    "burst": {"count": (_INT, 100), "rate": (_NUM, 50)},
    "drop_connections": {},
    "silent": {"on": ((bool,), True)},
    "restart_stream": {},
    "emit": {},
}
# Steps whose value is a bare flag (`drop_connections: true`) rather than a mapping.
_FLAG_STEPS = {"drop_connections", "restart_stream", "silent"}
_WORLD_KEYS = ("stacks", "services", "nodes", "nodecluster")
_SERVICE_KEYS = ("name", "image", "containers", "stack")


@dataclass(frozen=True)
class Step:
    """One timeline entry: run `name` with `args` at `at` seconds after start."""

    at: float
    name: str
    args: dict[str, Any]
    line: int


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario: its world and its time-ordered steps."""

    source: str
    world: WorldSpec
    steps: tuple[Step, ...]


class _Loc:
    """Formats `file:line: message` for a yaml node."""

    def __init__(self, source: str, has_lines: bool) -> None:
        self.source = source
        self.has_lines = has_lines

    def error(self, node: Node | None, message: str) -> ScenarioError:
        if node is not None and self.has_lines:
            return ScenarioError(f"{self.source}:{node.start_mark.line + 1}: {message}")
        return ScenarioError(f"{self.source}: {message}")


def _value(node: Node) -> Any:
    return SafeConstructor().construct_document(node)


def _mapping(loc: _Loc, node: Node, what: str) -> list[tuple[ScalarNode, Node]]:
    if not isinstance(node, MappingNode):
        raise loc.error(node, f"{what} must be a mapping")
    pairs: list[tuple[ScalarNode, Node]] = []
    for key, value in node.value:
        if not isinstance(key, ScalarNode):
            raise loc.error(key, f"{what} keys must be plain names")
        pairs.append((key, value))
    return pairs


def _unknown(loc: _Loc, node: Node, kind: str, name: str, choices: list[str] | tuple[str, ...]
             ) -> ScenarioError:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = (f" (did you mean '{close[0]}'?)" if close
            else f" (expected one of: {', '.join(choices)})")
    return loc.error(node, f"unknown {kind} '{name}'{hint}")


def _typed(loc: _Loc, node: Node, name: str, types: tuple[type, ...]) -> Any:
    value = _value(node)
    bad_bool = isinstance(value, bool) and bool not in types
    if bad_bool or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise loc.error(node, f"'{name}' must be {expected}, not {value!r}")
    return value


def _parse_world(loc: _Loc, node: Node) -> WorldSpec:
    if isinstance(node, ScalarNode):
        if _value(node) == "default":
            return DEFAULT_WORLD
        raise loc.error(node, "world must be 'default' or a mapping "
                              "{stacks, services, nodes, nodecluster}")
    stacks: tuple[str, ...] = ()
    services: list[ServiceSpec] = []
    nodes = 1
    cluster = "production"
    service_nodes: list[tuple[ServiceSpec, Node]] = []
    for key, value in _mapping(loc, node, "world"):
        name = key.value
        if name == "stacks":
            raw = _value(value)
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not all(isinstance(s, (str, dict)) for s in raw):
                raise loc.error(value, "'stacks' must be a list of names")
            stacks = tuple(s if isinstance(s, str) else str(s.get("name")) for s in raw)
        elif name == "services":
            if not isinstance(value, SequenceNode):
                raise loc.error(value, "'services' must be a list")
            for item in value.value:
                fields: dict[str, Any] = {}
                for skey, svalue in _mapping(loc, item, "a service"):
                    if skey.value not in _SERVICE_KEYS:
                        raise _unknown(loc, skey, "service field", skey.value, _SERVICE_KEYS)
                    types = _INT if skey.value == "containers" else (str,)
                    fields[skey.value] = _typed(loc, svalue, skey.value, types)
                if "name" not in fields:
                    raise loc.error(item, "a service needs a 'name'")
                if fields.get("containers", 1) < 0:
                    raise loc.error(item, "'containers' must not be negative")
                spec = ServiceSpec(**fields)
                services.append(spec)
                service_nodes.append((spec, item))
        elif name == "nodes":
            nodes = _typed(loc, value, "nodes", _INT)
            if nodes < 1:
                raise loc.error(value, "'nodes' must be at least 1")
        elif name == "nodecluster":
            cluster = _typed(loc, value, "nodecluster", (str,))
        else:
            raise _unknown(loc, key, "world key", name, _WORLD_KEYS)
    names = [s.name for s in services]
    for spec, item in service_nodes:
        if names.count(spec.name) > 1:
            raise loc.error(item, f"service '{spec.name}' is defined twice")
        if spec.stack is not None and spec.stack not in stacks:
            raise loc.error(item, f"service '{spec.name}' names unknown stack '{spec.stack}'")
    return WorldSpec(stacks=stacks, services=tuple(services), nodes=nodes, nodecluster=cluster)


def _parse_step(loc: _Loc, node: Node, world: WorldSpec) -> Step:
    at: float | None = None
    found: tuple[ScalarNode, Node] | None = None
    for key, value in _mapping(loc, node, "a timeline entry"):
        if key.value == "at":
            at = float(_typed(loc, value, "at", _NUM))
            if at < 0:
                raise loc.error(value, "'at' must not be negative")
        elif key.value in STEPS:
            if found is not None:
                raise loc.error(key, f"one step per timeline entry: '{found[0].value}' "
                                     f"and '{key.value}'")
            found = (key, value)
        else:
            raise _unknown(loc, key, "step", str(key.value), list(STEPS))
    if found is None:
        raise loc.error(node, f"a timeline entry needs a step (one of: {', '.join(STEPS)})")
    if at is None:
        raise loc.error(node, "a timeline entry needs 'at' (seconds after start)")
    key, value = found
    name = str(key.value)
    args = _step_args(loc, name, value)
    _check_refs(loc, name, args, value, world)
    return Step(at=at, name=name, args=args, line=key.start_mark.line + 1)


def _step_args(loc: _Loc, name: str, node: Node) -> dict[str, Any]:
    schema = STEPS[name]
    if name == "emit":
        event = _value(node)
        if not isinstance(event, (dict, list)):
            raise loc.error(node, "'emit' takes an event mapping or a list of them")
        return {"events": event if isinstance(event, list) else [event]}
    if name in _FLAG_STEPS and isinstance(node, ScalarNode):
        flag = _typed(loc, node, name, (bool,))
        if name == "silent":
            return {"on": flag}
        if not flag:
            raise loc.error(node, f"'{name}' takes 'true'")
        return {}
    if isinstance(node, ScalarNode) and _value(node) is None:
        pairs: list[tuple[ScalarNode, Node]] = []
    else:
        pairs = _mapping(loc, node, f"'{name}'")
    args: dict[str, Any] = {}
    for key, value in pairs:
        if key.value not in schema:
            raise _unknown(loc, key, f"argument of {name}", str(key.value), list(schema))
        args[key.value] = _typed(loc, value, key.value, schema[key.value][0])
    for arg, (_, default) in schema.items():
        if arg not in args:
            if default is _REQUIRED:
                raise loc.error(node, f"'{name}' needs '{arg}'")
            args[arg] = default
    for arg in ("index", "count"):
        if arg in args and args[arg] < 0:
            raise loc.error(node, f"'{arg}' must not be negative")
    if name == "burst" and args["rate"] <= 0:
        raise loc.error(node, "'rate' must be positive")
    return args


def _check_refs(loc: _Loc, name: str, args: dict[str, Any], node: Node, world: WorldSpec) -> None:
    services = {s.name: s for s in world.services}
    if "service" in args:
        service = services.get(args["service"])
        if service is None:
            raise _unknown(loc, node, "service", args["service"], list(services))
        if name == "container_exit" and args["index"] >= service.containers:
            raise loc.error(node, f"service '{service.name}' has {service.containers} "
                                  f"container(s); index {args['index']} is out of range")
    if name.startswith("node_") and args["index"] >= world.nodes:
        raise loc.error(node, f"the world has {world.nodes} node(s); "
                              f"index {args['index']} is out of range")


def parse_scenario(root: Node | None, source: str, has_lines: bool = True) -> Scenario:
    """Validate a composed YAML document into a Scenario."""
    loc = _Loc(source, has_lines)
    if root is None:
        raise loc.error(None, "the scenario is empty")
    world = DEFAULT_WORLD
    timeline: Node | None = None
    for key, value in _mapping(loc, root, "a scenario"):
        if key.value == "world":
            world = _parse_world(loc, value)
        elif key.value == "timeline":
            timeline = value
        else:
            raise _unknown(loc, key, "top-level key", str(key.value), ["world", "timeline"])
    steps: list[Step] = []
    if timeline is not None and not (isinstance(timeline, ScalarNode) and _value(timeline) is None):
        if not isinstance(timeline, SequenceNode):
            raise loc.error(timeline, "'timeline' must be a list")
        steps = [_parse_step(loc, item, world) for item in timeline.value]
    steps.sort(key=lambda step: step.at)
    return Scenario(source=source, world=world, steps=tuple(steps))


def load_scenario(scenario: str | Path | Mapping[str, Any]) -> Scenario:
    """Load a scenario from a file path or an already-parsed dict; raises ScenarioError."""
    if isinstance(scenario, Mapping):
        try:
            root = yaml.compose(yaml.safe_dump(dict(scenario)), Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise ScenarioError(f"<scenario>: not representable as YAML: {exc}") from exc
        return parse_scenario(root, "<scenario>", has_lines=False)
    source = str(scenario)
    try:
        text = Path(scenario).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{source}: cannot read the scenario: {exc.strerror}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{source}{line}: invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: invalid YAML: {exc}") from exc
    return parse_scenario(root, source)


