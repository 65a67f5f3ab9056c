"""The one place where "log, count, keep running" is decided for unexpected errors.

Tests install a hook (`set_test_hook`) that collects what was caught, so an internal
error fails the test that caused it instead of hiding in a log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_hook: Callable[[str, BaseException], None] | None = None


def set_test_hook(hook: Callable[[str, BaseException], None] | None) -> None:
    """Install (or remove) a callback that sees every internal error; for tests."""
    global _hook
    _hook = hook


def report_internal_error(where: str, exc: BaseException, metrics: Any = None) -> None:
    """Log an unexpected error with its traceback, count it, and let the caller go on."""
    log.error("internal error in %s: %s: %s; continuing", where, type(exc).__name__, exc,
              exc_info=exc)
    if metrics is not None:
        metrics.internal_errors.labels(where=where).inc()
    if _hook is not None:
        _hook(where, exc)
