"""What `check` says: schema errors in plain words, did-you-mean, and the typos that never fire.

The typo checks compare a rule with the stream's vocabulary (the event fields, object types,
actions and each type's states of the Docker Cloud reference; another source's `Vocabulary`
when the caller gives one). What they find is a warning, not an error: a field or state the
reference does not list may still arrive one day.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventd.ruleset.positions import Issue, JsonPath

if TYPE_CHECKING:
    import jsonschema

WARNING = "warning"

#: Event fields: the stream's (reference 2.1) and those eventd adds.
EVENT_FIELDS = ("type", "action", "parents", "resource_uri", "state", "uuid", "datetime", "data",
                "caused_by_eventd", "backfilled", "gap_seconds")
#: Each object type's states (reference 2.3), plus eventd's own stream events.
STATES: dict[str, tuple[str, ...]] = {
    "container": ("Init", "Starting", "Running", "Stopping", "Stopped", "Terminating", "Terminated"),
    "service": ("Not running", "Starting", "Running", "Partly running", "Scaling", "Redeploying",
                "Stopping", "Stopped", "Terminating", "Terminated"),
    "stack": ("Not Running", "Starting", "Running", "Partly running", "Stopping", "Stopped",
              "Redeploying", "Terminating", "Terminated"),
    "nodecluster": ("Init", "Deploying", "Deployed", "Partly deployed", "Scaling", "Terminating",
                    "Terminated", "Empty cluster"),
    "node": ("Deploying", "Deployed", "Unreachable", "Upgrading", "Terminating", "Terminated"),
    "action": ("Pending", "In progress", "Canceling", "Canceled", "Success", "Failed"),
    "eventd": ("disconnected", "connected"),
}
#: Object types: those with states, the stream's own messages, and the undocumented types the
#: reference saw in use (1.2), which a rule may still wait for.
TYPES = (*STATES, "error", "auth", "image", "buildsetting", "user-notification",
         "user-notifications")
ACTIONS = ("create", "update", "delete", "stream")
_ALL_STATES = tuple(dict.fromkeys(s for states in STATES.values() for s in states))


@dataclass(frozen=True)
class Vocabulary:
    """What one source's events hold, for the typo warnings (plain data from the source)."""

    reference: str  # how messages name it: "the reference", "the Engine API"
    fields: tuple[str, ...]
    types: tuple[str, ...]
    actions: tuple[str, ...]
    #: fixed sets of states, keyed by the value of `states_by` (`type` or `action`); a rule
    #: whose `states_by` value has none here gets no state warning, unless states_by is type
    states: Mapping[str, tuple[str, ...]]
    states_by: str = "type"


#: The Docker Cloud stream's (the default source).
DOCKERCLOUD = Vocabulary("the reference", EVENT_FIELDS, TYPES, ACTIONS, STATES, "type")

_TYPE_NAMES = {"string": "a string", "number": "a number", "integer": "an integer",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "null"}



def describe(value: Any) -> str:
    """What a value is, in words, for "expected X, got Y"."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def label(path: JsonPath) -> str:
    """`match.state`, `actions[1].webhook.url` (relative to the rule when inside one)."""
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        path = path[2:]
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def at(where: str, message: str) -> str:
    """`where: message`, or the message alone at the top of a file."""
    return f"{where}: {message}" if where else message


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close to `word`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def schema_issues(error: jsonschema.ValidationError, prefix: JsonPath = ()) -> list[Issue]:
    """A JSON-Schema error as issues in plain words, at the key or value they concern."""
    path = prefix + tuple(error.absolute_path)
    where, kind, instance = label(path), error.validator, error.instance
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        where = f" in {where}" if where else ""
        return [Issue(path + (key,), True, f"unknown key {key!r}{did_you_mean(key, known)}"
                       f"{where}; expected one of: {', '.join(known)}")
                for key in instance if key not in known
                and not any(re.search(p, key) for p in patterns)]
    if kind == "required" and isinstance(instance, dict):
        return [Issue(path, False, at(where, f"missing required key {key!r}"))
                for key in error.validator_value if key not in instance]
    if kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) \
            else [error.validator_value]
        names = " or ".join(_TYPE_NAMES.get(str(w), str(w)) for w in wanted)
        return [Issue(path, False, at(where, f"expected {names}, got {describe(instance)}"))]
    if kind == "minItems" and instance == []:
        return [Issue(path, False, at(where, "must not be empty"))]
    if kind in ("minProperties", "maxProperties") and path[-2:-1] == ("actions",):
        return [Issue(path, False, f"{where}: an action is one mapping {{kind: options}}, "
                                    f"got {len(instance)} keys")]
    if kind == "minProperties":
        return [Issue(path, False, f"{where}: an empty mapping; give at least one operator")]
    if kind == "pattern" and error.validator_value.startswith("^\\s*[0-9]"):
        return [Issue(path, False, f"{where}: {instance!r} is not a duration "
                                    "(seconds, or e.g. 30s, 10m, 1h)")]
    return [Issue(path, False, at(where, error.message))]




def _strings(condition: Any) -> Iterator[str]:
    """The literal strings a field's condition compares with (equality, any-of, in, not)."""
    if isinstance(condition, str):
        yield condition
    elif isinstance(condition, list):
        yield from (c for c in condition if isinstance(c, str))
    elif isinstance(condition, dict):
        for op in ("in", "not"):
            if op in condition:
                yield from _strings(condition[op])


def _vocabulary_issue(path: JsonPath, what: str, value: str, known: Sequence[str],
                      reference: str = "the reference") -> Issue:
    return Issue(path, False, f"{label(path)}: unknown {what} {value!r}{did_you_mean(value, known)}"
                              f"; {reference} lists: {', '.join(known)}", WARNING)


def match_warnings(match: Mapping[str, Any], path: JsonPath,
                   vocabulary: Vocabulary = DOCKERCLOUD) -> list[Issue]:
    """Fields, types, actions and states that no event of the reference has (likely typos)."""
    found: list[Issue] = []
    keys = [k for k in _strings(match.get(vocabulary.states_by)) if k in vocabulary.states]
    states: tuple[str, ...] | None = tuple(dict.fromkeys(
        s for k in keys for s in vocabulary.states[k]))
    if not states:
        states = tuple(dict.fromkeys(s for group in vocabulary.states.values() for s in group)) \
            if vocabulary.states_by == "type" else None
    for key, condition in match.items():
        where = path + (key,)
        if key in ("any", "all") and isinstance(condition, list):
            for i, sub in enumerate(condition):
                if isinstance(sub, dict):
                    found.extend(match_warnings(sub, where + (i,), vocabulary))
            continue
        if key == "not" and isinstance(condition, dict):
            found.extend(match_warnings(condition, where, vocabulary))
            continue
        field = key.split(".", 1)[0]
        fields = vocabulary.fields
        if field not in fields:
            found.append(Issue(where, True, f"{label(where)}: unknown event field {field!r}"
                                            f"{did_you_mean(field, fields)}; {vocabulary.reference} "
                                            f"lists: {', '.join(fields)}", WARNING))
            continue
        known = {"type": ("object type", vocabulary.types), "action": ("action", vocabulary.actions),
                 "state": ("state", states)}.get(key)
        if known is not None and known[1] is not None:
            found.extend(_vocabulary_issue(where, known[0], value, known[1], vocabulary.reference)
                         for value in _strings(condition) if value not in known[1])
    return found
