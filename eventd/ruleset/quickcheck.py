"""A yes/no JSON Schema check for valid rule files, so `eventd run` need not import jsonschema.

jsonschema (with referencing and rpds) costs ~5 MiB of a daemon that targets 40 MiB, and is only
needed to explain what is wrong. `conforms` answers whether a document is valid against a
schema that uses only the Draft 2020-12 keywords below; the loader asks jsonschema for the
messages only when the answer is not a plain yes. A keyword it does not know gives None
(undecided), never a guess, so a schema that grows a new keyword falls back to jsonschema.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

#: Keywords that say nothing about validity.
_NOTES = frozenset({"$schema", "$comment", "$defs", "title", "description", "default", "examples",
                    "format", "deprecated", "readOnly", "writeOnly"})


class _Undecided(Exception):
    """The schema uses something this checker does not implement."""


def conforms(schema: Mapping[str, Any], instance: Any) -> bool | None:
    """True if valid, False if not, None if the schema is beyond this checker."""
    try:
        return _valid(schema, instance, schema, True)
    except _Undecided:
        return None
    except Exception:  # noqa: BLE001 - odd YAML values (non-string keys...): let jsonschema say
        return None


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "number":
        return isinstance(value, (int, float))
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    raise _Undecided(name)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _ref(root: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise _Undecided(ref)
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            raise _Undecided(ref)
        node = node[part]
    return node


def _valid(schema: Any, value: Any, root: Mapping[str, Any], top: bool = False) -> bool:
    if schema is True:
        return True
    if schema is False:
        return False
    if not isinstance(schema, Mapping):
        raise _Undecided("schema")
    for key, arg in schema.items():
        if key in _NOTES or (key == "$id" and top):
            continue
        check = _CHECKS.get(key)
        if check is None:
            if key in ("then", "else"):
                continue  # read with "if"
            raise _Undecided(key)
        if not check(arg, value, schema, root):
            return False
    return True


def _type(arg: Any, value: Any, schema: Any, root: Any) -> bool:
    names = [arg] if isinstance(arg, str) else arg
    return any(_is_type(value, name) for name in names)


def _properties(arg: Any, value: Any, schema: Any, root: Any) -> bool:
    if not isinstance(value, dict):
        return True
    return all(_valid(sub, value[name], root) for name, sub in arg.items() if name in value)


def _pattern_properties(arg: Any, value: Any, schema: Any, root: Any) -> bool:
    if not isinstance(value, dict):
        return True
    return all(_valid(sub, item, root) for pattern, sub in arg.items()
               for name, item in value.items() if _regex(pattern).search(name))


def _additional(arg: Any, value: Any, schema: Any, root: Any) -> bool:
    if not isinstance(value, dict):
        return True
    known = schema.get("properties", {})
    patterns = [_regex(p) for p in schema.get("patternProperties", {})]
    return all(_valid(arg, item, root) for name, item in value.items()
               if name not in known and not any(p.search(name) for p in patterns))


def _property_names(arg: Any, value: Any, schema: Any, root: Any) -> bool:
    return not isinstance(value, dict) or all(_valid(arg, name, root) for name in value)


def _if(arg: Any, value: Any, schema: Any, root: Any) -> bool:
    branch = "then" if _valid(arg, value, root) else "else"
    return branch not in schema or _valid(schema[branch], value, root)


def _items(arg: Any, value: Any, schema: Any, root: Any) -> bool:
    if "prefixItems" in schema:
        raise _Undecided("prefixItems")
    return not isinstance(value, list) or all(_valid(arg, item, root) for item in value)


def _sized(kind: type, measure: Any, ok: Any) -> Any:
    def check(arg: Any, value: Any, schema: Any, root: Any) -> bool:
        return not isinstance(value, kind) or bool(ok(measure(value), arg))
    return check


def _number(ok: Any) -> Any:
    def check(arg: Any, value: Any, schema: Any, root: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        return bool(ok(value, arg))
    return check


def _length(text: str) -> int:
    return len(text)  # code points, as JSON Schema counts


_CHECKS: dict[str, Any] = {
    "type": _type,
    "enum": lambda arg, value, schema, root: any(_equal(value, x) for x in arg),
    "const": lambda arg, value, schema, root: _equal(value, arg),
    "$ref": lambda arg, value, schema, root: _valid(_ref(root, arg), value, root),
    "properties": _properties,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional,
    "propertyNames": _property_names,
    "required": lambda arg, value, schema, root: not isinstance(value, dict)
    or all(name in value for name in arg),
    "minProperties": _sized(dict, len, lambda n, arg: n >= arg),
    "maxProperties": _sized(dict, len, lambda n, arg: n <= arg),
    "items": _items,
    "minItems": _sized(list, len, lambda n, arg: n >= arg),
    "maxItems": _sized(list, len, lambda n, arg: n <= arg),
    "uniqueItems": lambda arg, value, schema, root: not arg or not isinstance(value, list)
    or not any(_equal(value[i], value[j]) for i in range(len(value)) for j in range(i)),
    "minLength": _sized(str, _length, lambda n, arg: n >= arg),
    "maxLength": _sized(str, _length, lambda n, arg: n <= arg),
    "pattern": lambda arg, value, schema, root: not isinstance(value, str)
    or _regex(arg).search(value) is not None,
    # Written as jsonschema fails them (`v < minimum` ...), so NaN passes here as there.
    "minimum": _number(lambda v, arg: not v < arg),
    "maximum": _number(lambda v, arg: not v > arg),
    "exclusiveMinimum": _number(lambda v, arg: not v <= arg),
    "exclusiveMaximum": _number(lambda v, arg: not v >= arg),
    "allOf": lambda arg, value, schema, root: all(_valid(s, value, root) for s in arg),
    "anyOf": lambda arg, value, schema, root: any(_valid(s, value, root) for s in arg),
    "oneOf": lambda arg, value, schema, root: sum(1 for s in arg if _valid(s, value, root)) == 1,
    "not": lambda arg, value, schema, root: not _valid(arg, value, root),
    "if": _if,
}
