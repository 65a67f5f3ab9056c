"""The quick schema check agrees with jsonschema wherever it gives an answer.

`eventd run` trusts `conforms(...) is True` to skip jsonschema, so a wrong "valid" would let a
bad rule through: every answer is compared with jsonschema's on real rule files and on
documents mutated from them (hypothesis).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.actions import ACTIONS, resolve
from eventd.ruleset import loader
from eventd.ruleset.quickcheck import conforms

ROOT = Path(__file__).resolve().parent.parent
#: every shipped rule file (rules/tests/ holds their tests, not rules)
SHIPPED = sorted(p for p in (ROOT / "rules").rglob("*.yaml") if "tests" not in p.parts[-2:-1])
SEEDS = [yaml.safe_load(p.read_text()) for p in SHIPPED]
KIND_SCHEMAS = {name: resolve(name).schema for name in ACTIONS}
BASE = loader._base_schema()


def jsonschema_valid(schema: dict[str, Any], instance: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(schema).is_valid(instance))


def agree(schema: dict[str, Any], instance: Any) -> None:
    answer = conforms(schema, instance)
    assert answer is None or answer == jsonschema_valid(schema, instance), \
        f"quickcheck says {answer} for {json.dumps(instance, default=str)[:400]}"


@pytest.mark.parametrize("doc", SEEDS, ids=[str(p.relative_to(ROOT / "rules")) for p in SHIPPED])
def test_shipped_rules_are_plainly_valid(doc: Any) -> None:
    assert conforms(BASE, doc) is True
    for rule in doc["rules"]:
        for action in rule["actions"]:
            (kind, options), = action.items()
            assert conforms(KIND_SCHEMAS[kind], options) is True


def test_known_bad_documents_are_not_valid() -> None:
    bad = [{"rules": "x"}, {"rules": [{"name": "a"}]}, {"rules": [], "extra": 1},
           {"rules": [{"name": "a", "match": {}, "actions": []}]},
           {"rules": [{"name": "a", "match": {}, "actions": [{"log": {}, "webhook": {}}]}]}]
    for doc in bad:
        assert conforms(BASE, doc) is False
        assert not jsonschema_valid(BASE, doc)


def test_an_unknown_keyword_is_left_to_jsonschema() -> None:
    assert conforms({"type": "object", "unevaluatedProperties": False}, {"a": 1}) is None
    assert conforms({"$ref": "https://example.com/s.json"}, {}) is None


def test_unique_items_as_jsonschema() -> None:
    schema = {"type": "array", "uniqueItems": True}
    for value in ([], ["logs"], ["logs", "history"], ["logs", "logs"], [1, 1.0], [1, True],
                  [{"a": 1}, {"a": 1.0}], [[1], [True]], "not a list"):
        assert conforms(schema, value) is not None
        agree(schema, value)
    agree({"uniqueItems": False}, [1, 1])


def test_json_equality_and_numbers_as_jsonschema() -> None:
    for schema, value in [({"enum": [1]}, True), ({"enum": [1]}, 1.0), ({"const": False}, 0),
                          ({"type": "integer"}, 2.0), ({"type": "integer"}, True),
                          ({"minimum": 1}, float("nan")), ({"exclusiveMinimum": 0}, 0),
                          ({"minLength": 2}, "é"), ({"pattern": "b"}, "abc")]:
        agree(schema, value)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.floats(-2, 5),
                    st.sampled_from(["", "x", "30s", "10m", "bad", "{{ event.type }}", "container",
                                     "Running", "http://127.0.0.1/x", "info", "debug", "POST",
                                     "redeploy", "*/stack/*", "^/api/", "1h", "warning"]))
KEYS = st.sampled_from(sorted({"rules", "name", "match", "actions", "when", "throttle", "key",
                               "window", "enabled", "enrich", "type", "state", "glob", "regex",
                               "in", "not", "exists", "any", "all", "gt", "lt", "url", "json",
                               "body", "method", "headers", "timeout", "message", "level", "path",
                               "call", "target", "wait", "labels", "annotations", "fsync", "x"}))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)), max_leaves=8)


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """Replace, drop or add one thing somewhere in doc."""
    node = doc
    for _ in range(data.draw(st.integers(0, 6))):
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node, key=str)))
            if not isinstance(node[key], (dict, list)) or not node[key]:
                break
            node = node[key]
        elif isinstance(node, list) and node:
            child = node[data.draw(st.integers(0, len(node) - 1))]
            if not isinstance(child, (dict, list)) or not child:
                break
            node = child
    op = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node, key=str)))
        if op == "replace":
            node[key] = data.draw(VALUES)
        elif op == "drop":
            del node[key]
        else:
            node[data.draw(KEYS)] = data.draw(VALUES)
    elif isinstance(node, list) and node:
        i = data.draw(st.integers(0, len(node) - 1))
        if op == "drop":
            del node[i]
        else:
            node[i] = data.draw(VALUES)
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_rule_files_get_jsonschemas_answer(data: st.DataObject) -> None:
    doc = _mutate(copy.deepcopy(data.draw(st.sampled_from(SEEDS))), data)
    agree(BASE, doc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_action_options_get_jsonschemas_answer(data: st.DataObject) -> None:
    seeds = [(kind, options) for doc in SEEDS for rule in doc["rules"]
             for action in rule["actions"] for kind, options in action.items()]
    seeds.append(("alertmanager", {"url": "http://127.0.0.1:9093",
                                   "labels": {"alertname": "ContainerDown"}}))
    kind, options = data.draw(st.sampled_from(seeds))
    other = data.draw(st.sampled_from(sorted(KIND_SCHEMAS)))
    options = _mutate(copy.deepcopy(options), data)
    agree(KIND_SCHEMAS[kind], options)
    agree(KIND_SCHEMAS[other], options)
    agree(KIND_SCHEMAS[other], data.draw(VALUES))
