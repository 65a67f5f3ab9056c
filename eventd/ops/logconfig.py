"""Logging setup for the command line: text or JSON lines, with credentials redacted.

Only cli.py calls `configure()`; library modules just log. The redaction runs as a filter
on the one handler, on the fully formatted message (arguments merged), the exception text,
the stack text and any `extra` string, so a secret cannot leak through a traceback or a
repr of a request. What it removes:
  * every string given in `secrets` (the Authorization header, its base64 token, the apikey),
    also in its URL-quoted form; a short one (under 12 characters, e.g. the emulator's
    `apikey`) only where it stands alone, not inside a longer word or file name
    (`/run/secrets/demo-apikey.txt` stays readable);
  * `Authorization: <scheme> <value>` in headers, dict reprs and JSON;
  * query values whose key looks secret (token, key, apikey, secret, password, signature,
    sig, auth, ...), the password in `scheme://user:password@host`;
  * webhook path tokens: Slack `/services/T../B../X..`, Discord `/api/webhooks/<id>/<token>`,
    Mattermost and Rocket.Chat `/hooks/<key>`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import quote

from eventd.errors import ConfigError

MASK = "***"
FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_SECRET_KEY = (r"[\w.\-]*(?:token|key|secret|passw(?:or)?d|pwd|signature|sig|auth|credential)"
               r"[\w.\-]*")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Basic xxx / 'Authorization': 'Bearer xxx' / "authorization": "xxx"
    (re.compile(r"""(?i)(\b(?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)"""
                r"""((?:basic|bearer|token|digest|geniekey)\s+)?[^\s'",}\]]+"""),
     r"\1\2" + MASK),
    # ?token=xxx&apikey=yyy (also `;`-separated and in fragments)
    (re.compile(r"(?i)([?&;#](?:" + _SECRET_KEY + r")=)[^&;#\s'\"<>]+"), r"\1" + MASK),
    # scheme://user:password@host
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@'\"]*:)[^/\s@'\"]+@"), r"\1" + MASK + "@"),
    # Slack: /services/T000/B000/XXXX (and workflow/trigger URLs)
    (re.compile(r"(/(?:services|workflows|triggers)/)T[A-Z0-9]+/[^\s'\"?#]+"), r"\1" + MASK),
    # Discord and compatible: /api/webhooks/<id>/<token>
    (re.compile(r"(/api/webhooks/\d+/)[^\s/'\"?#]+"), r"\1" + MASK),
    # Mattermost /hooks/<26 chars>, Rocket.Chat /hooks/<id>/<token>
    (re.compile(r"(/hooks/)[A-Za-z0-9_\-]{16,}(?:/[A-Za-z0-9_\-]+)*"), r"\1" + MASK),
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


#: a secret this long is masked wherever it appears; a shorter one may be part of other words
_STRONG = 12


@functools.lru_cache(maxsize=64)
def _standing_alone(secret: str) -> re.Pattern[str]:
    """`secret` where it is not part of a longer word, file name or identifier."""
    return re.compile(r"(?<![\w.\-])" + re.escape(secret) + r"(?![\w\-]|\.\w)")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace the given secrets and secret-looking URL and header parts of `text` with ***."""
    for secret in _variants(secrets):
        if secret in text:
            if len(secret) >= _STRONG:
                text = text.replace(secret, MASK)
            else:
                text = _standing_alone(secret).sub(MASK, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _variants(secrets: Iterable[str]) -> list[str]:
    """Each secret and its URL-quoted form, longest first so a header goes before its token."""
    found: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        found.add(secret)
        found.add(quote(secret, safe=""))
    return sorted(found, key=len, reverse=True)


class RedactingFilter(logging.Filter):
    """Redact a record in place before any formatter sees it; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = _variants(secrets)
        self._exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value, self.secrets))
        return True


def _utc(created: float, millis: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{stamp}.{int(created % 1 * 1000):03d}Z" if millis else f"{stamp}Z"


# Line breaks and other control characters (C0, DEL, C1, Unicode line/paragraph separators,
# ESC of terminal escape sequences) and the bidirectional overrides that reorder what a
# terminal shows; a tab stays.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f"
                      "\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """`\\n`, `\\r`, `\\x1b`... for control characters: event data cannot start a log line,
    nor steer the terminal it is printed on."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(0)) or (
        f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100 else f"\\u{ord(m.group(0)):04x}"),
        text)


class TextFormatter(logging.Formatter):
    """`2026-11-26T23:59:01Z INFO eventd.sources.dockercloud.stream: connected to ...` (UTC).

    One record, one line: control characters in the message (event data reaches it) are
    escaped, so a line that starts with a timestamp is always a record eventd wrote. A
    traceback, if any, follows on the next lines, each indented by two spaces.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = _utc(record.created, False)
        line = f"{stamp} {record.levelname} {record.name}: {escape_controls(record.getMessage())}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + _indent(record.exc_text)
        if record.stack_info:
            line += "\n" + _indent(self.formatStack(record.stack_info))
        return line


def _indent(text: str) -> str:
    """Continuation lines, indented and with their own control characters escaped."""
    return "\n".join("  " + escape_controls(part) for part in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, exception, extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _utc(record.created, True),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in data and not key.startswith("_"):
                data[key] = _jsonable(value)
        return json.dumps(data, ensure_ascii=False, default=str)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(
            v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return str(value)


_HANDLER_MARK = "_eventd_handler"


def configure(log_format: str, level: str, secrets: Iterable[str] = (),
              stream: IO[str] | None = None) -> logging.Handler:
    """Install the one handler on the root logger (replacing one installed before) and return it.

    `eventd.*` loggers log at `level`; other libraries only at WARNING and above unless
    `level` is stricter, so `--log-level DEBUG` shows eventd's detail without urllib3's.
    """
    if log_format not in FORMATS:
        raise ConfigError(f"--log-format: {log_format!r} is not one of {', '.join(FORMATS)}")
    name = str(level).upper()
    if name not in LEVELS:
        raise ConfigError(f"--log-level: {level!r} is not one of {', '.join(LEVELS)}")
    numeric = logging.getLevelName(name)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("eventd").setLevel(numeric)
    return handler
