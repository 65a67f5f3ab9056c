"""What the console shows of jobs and events: secrets masked as the logs mask them, and more.

The logs' redaction (eventd.ops.logconfig.redact) runs on every string; on top of it, every
header's value (a webhook's `headers` option may hold any token), every value under a
secret-looking key, and every value that a rule file took from the environment with
`${VAR}` (rules interpolate secrets; the rendered options carry them) are masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eventd.ops.logconfig import MASK, redact
from eventd.ruleset.interpolate import references

__all__ = ["Redactor", "rule_variables"]

_SECRET_KEY = re.compile(r"(?i)(token|secret|passw(or)?d|pwd|apikey|api_key|auth|credential"
                         r"|signature|cookie|session|private|routing_key|integration_key)")
_MAX_DEPTH = 20
_RULE_FILE_LIMIT = 4 * 1024 * 1024


def rule_variables(paths: Iterable[Path], environ: Mapping[str, str]) -> list[str]:
    """The values of the environment variables the rule files refer to with `${VAR}`."""
    found: dict[str, str] = {}
    for path in paths:
        files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        for file in files:
            try:
                with open(file, encoding="utf-8", errors="replace") as handle:
                    found.update(references(handle.read(_RULE_FILE_LIMIT), environ))
            except OSError:
                continue
    return [value for value in found.values() if len(value) >= 4]


class Redactor:
    """Masks the given secrets and whatever looks secret in JSON-ready values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        """A string with the secrets and the logs' secret-looking parts masked."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return redact(value)

    def value(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready copy of `value` with every secret masked."""
        if depth > _MAX_DEPTH:
            return MASK
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            shown: dict[str, Any] = {}
            for key, item in value.items():
                name = self.text(str(key))
                if str(key).lower() == "headers" and isinstance(item, Mapping):
                    shown[name] = {self.text(str(k)): MASK for k in item}
                elif _SECRET_KEY.search(str(key)) and item not in (None, "", True, False):
                    shown[name] = MASK
                else:
                    shown[name] = self.value(item, depth + 1)
            return shown
        if isinstance(value, (list, tuple)):
            return [self.value(item, depth + 1) for item in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.text(str(value))
