"""Thread-safe fault switches shared by the stream and REST servers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A scripted HTTP failure: the status to answer and an optional Retry-After value."""

    status: int
    retry_after: str | None = None
    location: str | None = None  # a redirect's target (3xx handshakes)


class _Budget:
    """A failure answered for the next `count` requests."""

    def __init__(self, failure: Failure, count: int) -> None:
        self.failure = failure
        self.remaining = count


class Faults:
    """Switches that tests flip to make the emulator misbehave the way a real service can."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._silent = False
        self._reject_auth = False
        self._handshake: _Budget | None = None
        self._rest: _Budget | None = None
        self._handshake_delay = 0.0
        self._rest_delay = 0.0
        self._failing_actions = 0
        self._ignore_dates = False
        # Wired by the Emulator to the stream server.
        self.on_drop: Callable[[], None] = lambda: None
        self.on_silent: Callable[[bool], None] = lambda silent: None

    # -- switches -----------------------------------------------------------------------------
    def drop_connections(self) -> None:
        """Abort every open stream connection without a close frame."""
        logger.info("fault: dropping every stream connection")
        self.on_drop()

    def set_silent(self, silent: bool = True) -> None:
        """Keep stream connections open but send nothing and answer no pings."""
        with self._lock:
            self._silent = bool(silent)
        logger.info("fault: stream silent=%s", bool(silent))
        self.on_silent(bool(silent))

    def reject_auth(self, reject: bool = True) -> None:
        """Answer every stream handshake with 401 whatever the credentials."""
        with self._lock:
            self._reject_auth = bool(reject)
        logger.info("fault: reject stream auth=%s", bool(reject))

    def fail_handshake(self, status: int, count: int = 1,
                       retry_after: str | int | float | None = None,
                       location: str | None = None) -> None:
        """Answer the next `count` stream handshakes with HTTP `status` (and `Location`)."""
        with self._lock:
            self._handshake = _Budget(Failure(int(status), _text(retry_after), location),
                                      int(count))
        logger.info("fault: next %d handshake(s) answer %d", count, status)

    def redirect_handshake(self, location: str, status: int = 302, count: int = 1) -> None:
        """Answer the next `count` stream handshakes with a redirect to `location`."""
        self.fail_handshake(status, count, location=location)

    def fail_rest(self, status: int, count: int = 1,
                  retry_after: str | int | float | None = None) -> None:
        """Answer the next `count` REST calls with HTTP `status` and an error body."""
        with self._lock:
            self._rest = _Budget(Failure(int(status), _text(retry_after)), int(count))
        logger.info("fault: next %d REST call(s) answer %d", count, status)

    def set_delay(self, handshake: float = 0.0, rest: float = 0.0) -> None:
        """Wait this many seconds before answering handshakes / REST calls."""
        with self._lock:
            self._handshake_delay = max(0.0, float(handshake))
            self._rest_delay = max(0.0, float(rest))
        logger.info("fault: delay handshake=%.3fs rest=%.3fs", handshake, rest)

    def fail_actions(self, count: int = 1) -> None:
        """Make the next `count` REST-started operations end in action state Failed."""
        with self._lock:
            self._failing_actions = int(count)
        logger.info("fault: next %d action(s) fail", count)

    def ignore_date_filters(self, ignore: bool = True) -> None:
        """Answer action lists as a server that ignores `*_date__gte` would: everything."""
        with self._lock:
            self._ignore_dates = bool(ignore)
        logger.info("fault: ignore date filters=%s", bool(ignore))

    def clear(self) -> None:
        """Switch every fault off (and resume silent connections)."""
        with self._lock:
            was_silent = self._silent
            self._silent = self._reject_auth = False
            self._handshake = self._rest = None
            self._handshake_delay = self._rest_delay = 0.0
            self._failing_actions = 0
            self._ignore_dates = False
        logger.info("fault: cleared")
        if was_silent:
            self.on_silent(False)

    # -- read by the servers ------------------------------------------------------------------
    @property
    def silent(self) -> bool:
        """Whether stream connections are silenced now."""
        return self._silent

    @property
    def rejecting_auth(self) -> bool:
        """Whether every handshake gets 401."""
        return self._reject_auth

    @property
    def ignoring_dates(self) -> bool:
        """Whether action lists ignore their date filters."""
        return self._ignore_dates

    @property
    def handshake_delay(self) -> float:
        """Seconds to wait before answering a handshake."""
        return self._handshake_delay

    @property
    def rest_delay(self) -> float:
        """Seconds to wait before answering a REST call."""
        return self._rest_delay

    def take_handshake_failure(self) -> Failure | None:
        """Consume one scripted handshake failure, if any is left."""
        with self._lock:
            return _take(self, "_handshake")

    def take_rest_failure(self) -> Failure | None:
        """Consume one scripted REST failure, if any is left."""
        with self._lock:
            return _take(self, "_rest")

    def take_action_failure(self) -> bool:
        """Consume one scripted action failure, if any is left."""
        with self._lock:
            if self._failing_actions > 0:
                self._failing_actions -= 1
                return True
            return False

    def snapshot(self) -> dict[str, Any]:
        """The switches as JSON, for the control endpoint."""
        with self._lock:
            return {
                "silent": self._silent, "reject_auth": self._reject_auth,
                "fail_handshake": _budget_json(self._handshake),
                "fail_rest": _budget_json(self._rest),
                "delay": {"handshake": self._handshake_delay, "rest": self._rest_delay},
                "fail_actions": self._failing_actions,
                "ignore_date_filters": self._ignore_dates,
            }


def _take(faults: Faults, attr: str) -> Failure | None:
    budget: _Budget | None = getattr(faults, attr)
    if budget is None or budget.remaining <= 0:
        setattr(faults, attr, None)
        return None
    budget.remaining -= 1
    if budget.remaining <= 0:
        setattr(faults, attr, None)
    return budget.failure


def _budget_json(budget: _Budget | None) -> dict[str, Any] | None:
    if budget is None:
        return None
    found = {"status": budget.failure.status, "count": budget.remaining,
             "retry_after": budget.failure.retry_after}
    if budget.failure.location is not None:
        found["location"] = budget.failure.location
    return found


def _text(value: str | int | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
