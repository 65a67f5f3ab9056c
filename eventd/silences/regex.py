"""Matchers' regular expressions: hostile input, compiled with RE2, anchored, bounded.

A silence's regex comes from whoever may create silences (a token holder of the console's
HTTP API, a shell user), and it runs on every matched action against event fields anyone
who can start a container chooses. Python's `re` backtracks: `(a+)+$` against 30 `a`s and a
`b` takes seconds, and no timeout can interrupt it. RE2 (the `google-re2` wheel, Google's
library and the engine Alertmanager's Go regexps use) runs in time linear in the input, and
its syntax is Alertmanager's. Patterns are anchored (`^(?:...)$`, as Alertmanager anchors
them), at most MAX_PATTERN characters, and see at most MAX_SUBJECT characters of a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAX_PATTERN", "MAX_SUBJECT", "BadPattern", "compile_anchored"]

#: longest pattern accepted, in characters
MAX_PATTERN = 256
#: the characters of a value a pattern is matched against (a longer value: its beginning)
MAX_SUBJECT = 4096
#: memory RE2 may use for one compiled pattern (its default is 8 MiB)
_MAX_MEM = 1 << 20


class BadPattern(ValueError):
    """A pattern that is too long or that RE2 does not accept (the message says why)."""


def compile_anchored(pattern: str) -> Callable[[str], bool]:
    """A function telling whether a whole value matches `pattern` (BadPattern otherwise)."""
    if not isinstance(pattern, str):
        raise BadPattern("a regex must be a string")
    if len(pattern) > MAX_PATTERN:
        raise BadPattern(f"regex longer than {MAX_PATTERN} characters")
    import re2  # imported here: only a silence with a regex needs it

    options = re2.Options()
    options.max_mem = _MAX_MEM
    options.log_errors = False
    try:
        compiled: Any = re2.compile(f"^(?:{pattern})$", options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise BadPattern(f"not a valid regex (RE2 syntax, as Alertmanager's): {reason}") from None

    def matches(value: str) -> bool:
        return compiled.search(value[:MAX_SUBJECT]) is not None

    return matches
