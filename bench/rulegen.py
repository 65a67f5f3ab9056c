"""Rule sets for the benchmark, written into a temp dir: 100 or 1,000 rules, a few match each event.

About 2 rules match an average event of the blaster's mix (1.98 counted by eventd's RuleSet
over the blaster's 15,000 events: one catch-all, one per type on its settled states, a few
on action/state pairs). All the others cannot match, in the ways real rule sets miss: types
the stream never carries, states it never reaches (node Upgrading, stack "Not running" with
a small r), regexes and globs on resource_uri or parents that fail, equality with a parent
URI nobody has, a field that is absent. Many of them are
keyed on types the stream does carry, so an index on `type` alone cannot skip them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import streamgen

LOG = {"log": {"message": "{{ event.type }} {{ event.state }}", "level": "debug"}}

#: Rules that match: with the blaster's mix, about 2 per event (1.98 counted).
MATCHING: list[dict[str, Any]] = [
    {"name": "m-all", "match": {}},
    {"name": "m-container-settled",
     "match": {"type": "container", "state": ["Running", "Stopped", "Terminated"]}},
    {"name": "m-container-update", "match": {"type": "container", "action": "update"}},
    {"name": "m-service-settled",
     "match": {"type": "service", "state": ["Running", "Partly running", "Stopped",
                                            "Not running", "Terminated"]}},
    {"name": "m-service-in-stack", "match": {"type": "service", "parents": {"glob": "*/stack/*"}}},
    {"name": "m-action-done", "match": {"type": "action", "state": ["Success", "Failed"]}},
    {"name": "m-stack-any", "match": {"type": "stack"}},
    {"name": "m-node-trouble", "match": {"type": "node", "state": {"in": ["Unreachable",
                                                                          "Deployed"]}}},
    {"name": "m-cluster", "match": {"type": "nodecluster", "action": {"not": "delete"}}},
]


def _missing(k: int) -> dict[str, Any]:
    """The k-th rule that cannot match anything the blaster sends."""
    tag = f"{k:04d}"
    shapes: list[dict[str, Any]] = [
        {"type": "node", "state": "Upgrading"},
        {"type": "container", "resource_uri": {"regex": f"^/api/app/v1/team-{tag}/container/"}},
        {"type": "image", "state": ["Success", "Failed"]},
        {"type": "service", "state": "Redeploying", "parents": {"glob": f"*/stack/zz{tag}*"}},
        {"type": "container", "state": ["Stopped", "Terminated"],
         "parents": f"/api/app/v1/bench/service/{tag}0000-0000-4000-8000-000000000000/"},
        {"type": "buildsetting"},
        {"type": "action", "state": "Failed", "parents": {"regex": f"/service/dead{tag}-"}},
        {"type": "stack", "state": "Not running"},
        {"type": "nodecluster", "resource_uri": {"glob": f"*/nodecluster/zz{tag}*"}},
        {"type": "container", "data.errorMessage": {"exists": True}},
        {"type": "service", "action": "delete", "resource_uri": {"regex": f"/service/{tag}ffff"}},
        {"type": "user-notification"},
    ]
    return shapes[k % len(shapes)]


def rules(count: int, extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """`count` rules (the matching ones first), each with a debug-level log action."""
    out = [dict(rule, actions=[LOG]) for rule in MATCHING]
    for k in range(count - len(out)):
        out.append({"name": f"never-{k:04d}", "match": _missing(k), "actions": [LOG]})
    return out + (extra or [])


def write(directory: Path, name: str, rule_list: list[dict[str, Any]]) -> Path:
    """Write one rule file (JSON is YAML) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps({"rules": rule_list}, indent=1) + "\n")
    return path


def audit_rule(path: Path) -> dict[str, Any]:
    """An audit action on every event."""
    return {"name": "audit-all", "match": {},
            "actions": [{"audit": {"path": str(path), "fsync": 1000}}]}


def webhook_rule(url: str) -> dict[str, Any]:
    """The latency rule: container events go to the bench's receiver with their send time."""
    return {"name": "hook", "match": {"type": "container"},
            "actions": [{"webhook": {"url": url, "json": {"sent": "{{ event.bench_sent }}",
                                                          "uuid": "{{ event.uuid }}"}}}]}


def scaled(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """`count` rules that each match about 0.75% of the blaster's events: matches grow with rules.

    The callgrind rows' rule sets (issue 26: 100 rules match 0.7 times per event, 1,000 rules
    7.5 times): each rule follows one object of the blaster's world (a stack, a node or a
    service among an event's parents, a glob on stack parents), as a team writing a rule
    per service or per node would. Every action is a `log` at debug, below the level.
    """
    world = streamgen.build_world(random.Random(seed))
    out: list[dict[str, Any]] = []
    for k in range(count):
        stack = world.stacks[k % len(world.stacks)]
        shape = k % 4
        match: dict[str, Any]
        if shape == 0:
            match = {"type": ["container", "service"], "parents": stack}
        elif shape == 1:
            match = {"parents": world.nodes[(k // 4) % len(world.nodes)][0]}
        elif shape == 2:
            match = {"type": ["container", "action"],
                     "parents": world.services[(k // 4) % len(world.services)][0]}
        else:
            match = {"parents": {"glob": f"*/stack/{stack.rstrip('/').rsplit('/', 1)[1][:13]}*"}}
        out.append({"name": f"follow-{k:04d}", "match": match, "actions": [LOG]})
    return out
