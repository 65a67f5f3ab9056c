"""What a rule's `enrich` asks for: the object (`resource`), its last log lines, its history.

    enrich: resource                          # as before
    enrich: [resource, logs, history]         # the defaults of each
    enrich:
      logs: {lines: 20, max_bytes: 16384, redact: ["(?i)session=\\S+"]}
      history: {window: 1h, max: 20}

Log lines come from a container (the Engine, docker-py) and are data anyone who can start a
container writes: they are cut to the caps, stripped of control characters, redacted by the
same redactor as eventd's own logs, by `DEFAULT_REDACTIONS` (password=..., token: ...) and
by the rule's `redact` patterns (RE2: linear time whatever the line), before any template or
action sees them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventd.errors import ConfigError
from eventd.ops.logconfig import MASK, escape_controls, redact
from eventd.settings import parse_duration

DEFAULT_LINES = 20
MAX_LINES = 200
DEFAULT_MAX_BYTES = 16 * 1024
MAX_BYTES = 256 * 1024
#: a single line longer than this is cut (with `...`)
MAX_LINE = 1000
DEFAULT_WINDOW = 3600.0
DEFAULT_HISTORY = 20
MAX_HISTORY = 200
MAX_PATTERNS = 20
MAX_PATTERN = 256

#: `name=value` / `name: value` where the name says secret: the value masked
DEFAULT_REDACTIONS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?i)\b((?:[\w.\-]*(?:passw(?:or)?d|passwd|pwd|secret|token|api[_\-]?key|"
               r"access[_\-]?key|private[_\-]?key|credential)s?[\w.\-]*)[\"']?\s*[=:]\s*)"
               r"(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"),
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]+=*"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # a line that is only a long base64 run: a key's body, a token printed alone
    re.compile(r"^\s*[A-Za-z0-9+/_\-]{40,}={0,2}\s*$"),
)

ENRICH_NAMES = ("resource", "logs", "history")


@dataclass(frozen=True)
class LogsSpec:
    """`enrich: logs`: the last `lines`, at most `max_bytes` read, redacted."""

    lines: int = DEFAULT_LINES
    max_bytes: int = DEFAULT_MAX_BYTES
    patterns: tuple[str, ...] = ()
    _compiled: tuple[Callable[[str], str], ...] = field(default=(), repr=False, compare=False)

    def redact(self, lines: Sequence[str]) -> list[str]:
        """The lines as templates and actions may see them (see the module docstring)."""
        found = []
        for raw in lines[-self.lines:]:
            line = escape_controls(raw.rstrip("\r\n"))
            if len(line) > MAX_LINE:
                line = line[:MAX_LINE] + "..."
            line = redact(line)
            for pattern in DEFAULT_REDACTIONS:
                line = pattern.sub(_mask_value, line)
            for substitute in self._compiled:
                line = substitute(line)
            found.append(line)
        return found


@dataclass(frozen=True)
class HistorySpec:
    """`enrich: history`: the object's events of the last `window` seconds, at most `max`."""

    window: float = DEFAULT_WINDOW
    max: int = DEFAULT_HISTORY


@dataclass(frozen=True)
class Enrichment:
    """Everything a rule's `enrich` asks for."""

    resource: bool = False
    logs: LogsSpec | None = None
    history: HistorySpec | None = None


def _mask_value(match: re.Match[str]) -> str:
    return match.group(1) + MASK if match.lastindex and match.lastindex >= 1 else MASK


def parse_enrich(value: Any) -> Enrichment | None:
    """The `enrich` option (a name, a list of names, or a mapping) as an Enrichment; None
    without one. ConfigError names what is wrong."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        unknown = [v for v in value if v not in ENRICH_NAMES]
        if unknown:
            raise ConfigError(f"enrich: {unknown[0]!r} is not one of {', '.join(ENRICH_NAMES)}")
        value = {name: True for name in value}
    if not isinstance(value, dict):
        raise ConfigError("enrich: give resource, logs, history, a list of them or a mapping")
    unknown = [k for k in value if k not in ENRICH_NAMES]
    if unknown:
        raise ConfigError(f"enrich: {unknown[0]!r} is not one of {', '.join(ENRICH_NAMES)}")
    return Enrichment(resource=bool(value.get("resource")),
                      logs=_logs(value["logs"]) if value.get("logs") else None,
                      history=_history(value["history"]) if value.get("history") else None)


def _logs(value: Any) -> LogsSpec:
    options = value if isinstance(value, dict) else {}
    lines = _bounded(options.get("lines", DEFAULT_LINES), 1, MAX_LINES, "enrich.logs.lines")
    size = _bounded(options.get("max_bytes", DEFAULT_MAX_BYTES), 1024, MAX_BYTES,
                    "enrich.logs.max_bytes")
    patterns = options.get("redact", [])
    if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS or \
            any(not isinstance(p, str) or not p or len(p) > MAX_PATTERN for p in patterns):
        raise ConfigError(f"enrich.logs.redact: a list of at most {MAX_PATTERNS} regular "
                          f"expressions of at most {MAX_PATTERN} characters")
    return LogsSpec(lines, size, tuple(patterns), tuple(_compile(p) for p in patterns))


def _history(value: Any) -> HistorySpec:
    options = value if isinstance(value, dict) else {}
    window = parse_duration(options.get("window", DEFAULT_WINDOW), "enrich.history.window")
    if window <= 0:
        raise ConfigError("enrich.history.window must be more than 0")
    size = _bounded(options.get("max", DEFAULT_HISTORY), 1, MAX_HISTORY, "enrich.history.max")
    return HistorySpec(window, size)


def _bounded(value: Any, low: int, high: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: {value!r} must be a whole number from {low} to {high}")
    return value


def _compile(pattern: str) -> Callable[[str], str]:
    """A rule's redaction pattern with RE2 (linear time on hostile lines): matches become ***."""
    import re2  # only a rule with `redact` patterns needs it

    options = re2.Options()
    options.max_mem = 1 << 20
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        raise ConfigError(f"enrich.logs.redact: {pattern[:60]!r} is not a valid RE2 "
                          f"expression ({exc})") from None

    def substitute(line: str) -> str:
        return str(compiled.sub(MASK, line))

    return substitute


def history_record(event: dict[str, Any], at: float) -> dict[str, Any]:
    """What the store keeps of an event for its object's history (small, no free text)."""
    attributes = event.get("attributes") if isinstance(event.get("attributes"), dict) else {}
    record: dict[str, Any] = {"at": at}
    for name in ("type", "action", "state", "uuid", "datetime"):
        value = event.get(name)
        if isinstance(value, str) and value:
            record[name] = value[:100]
    exit_code = attributes.get("exitCode") if attributes else None
    if isinstance(exit_code, (str, int)) and str(exit_code).lstrip("-").isdigit():
        record["exit_code"] = int(exit_code)
    return record


def history_view(records: list[dict[str, Any]], window: float) -> dict[str, Any]:
    """What templates see as `history`: the events (oldest first), counts and a summary line."""
    actions: dict[str, int] = {}
    for record in records:
        what = str(record.get("action") or record.get("state") or "event")
        actions[what] = actions.get(what, 0) + 1
    codes = [r["exit_code"] for r in records if isinstance(r.get("exit_code"), int)]
    span = _span(window)
    counted = ", ".join(f"{what} x{n}" for what, n in actions.items())
    summary = f"{len(records)} events in the last {span}" + (f" ({counted})" if counted else "")
    if codes:
        summary += "; last exit codes " + ", ".join(str(c) for c in codes[-10:])
    return {"events": records, "count": len(records), "actions": actions,
            "exit_codes": codes, "window": window, "summary": summary}


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
