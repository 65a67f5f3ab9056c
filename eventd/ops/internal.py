"""The one place where "log, count, keep running" is decided for unexpected errors.

Tests install a hook (`set_test_hook`) that collects what was caught, so an internal
error fails the test that caused it instead of hiding in a log.
"""

from __future__ import annotations

import logging
import threading
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


#: seconds before a worker that died runs again (long enough not to spin on a fault that
#: repeats at once, short enough that delivery resumes before anyone waits on it)
RESTART_DELAY = 1.0


class Workers:
    """Threads that must keep running (the engine, each delivery lane): one whose loop raises
    is logged with its traceback, counted (eventd_worker_restarts_total{worker}), reported
    down (/readyz 503) and run again after RESTART_DELAY, never left dead and unseen."""

    def __init__(self, metrics: Any = None, delay: float = RESTART_DELAY) -> None:
        self._metrics = metrics
        self._delay = delay
        self._down: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self, worker: str, target: Callable[[], object]) -> None:
        """Call `target` until it returns (its own way of stopping); `worker` is a bounded
        name (a metric label: "engine", "dispatch", never a target)."""
        while True:
            try:
                target()
                return
            except Exception as exc:  # noqa: BLE001  (any: a worker must not die unseen)
                report_internal_error(worker, exc, self._metrics)
                self._set_down(worker, +1)
                try:
                    if self._metrics is not None:
                        self._metrics.worker_restarts.labels(worker=worker).inc()
                    if self._stopping.wait(self._delay):
                        return
                    log.warning("restarting the %s worker", worker)
                finally:
                    self._set_down(worker, -1)

    def down(self) -> list[str]:
        """The workers waiting to run again now (readiness names them)."""
        with self._lock:
            return sorted(name for name, count in self._down.items() if count > 0)

    def stop(self) -> None:
        """Restart nothing from now on (the daemon is stopping)."""
        self._stopping.set()

    def resume(self) -> None:
        """Restart workers again (a daemon started on metrics an earlier one stopped)."""
        self._stopping.clear()

    def _set_down(self, worker: str, delta: int) -> None:
        with self._lock:
            self._down[worker] = self._down.get(worker, 0) + delta
