"""What the engine attaches to an event's context besides the resource: `logs` and `history`.

`enrich: logs` reads the container's last lines through the source's enricher (the Engine
through docker-py; the Docker Cloud source through its REST host's container logs), under the
rule's caps, and redacts them (eventd.ruleset.enrichment). `enrich: history` appends the event
to its object's history in the store and reads it back, bounded. Neither can stop an event:
a read that fails is one log line and `eventd_enrich_failures_total{what}`, and the event
goes on with no logs (or no history).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from eventd.events import Event, parse_datetime
from eventd.ops.metrics import Metrics
from eventd.ruleset.enrichment import HistorySpec, LogsSpec, history_record, history_view
from eventd.stores.base import EventHistory

log = logging.getLogger(__name__)

#: the most time one log read may take (a waiting thread of logs_started, or the engine's)
LOGS_BUDGET = 1.0
#: the most time one log read may take on a waiting thread (`logs_started`): a wait there
#: holds up only its own container's events, and a burst of dies makes the Engine's clean-up,
#: which a read at die waits for, slower than LOGS_BUDGET (at 16 dying at once, 2 to 4 in 100
#: went without logs within 1 s)
LOGS_BUDGET_AWAY = 3.0
#: threads that wait for containers' logs for the engine (`logs_started`): a burst of dies
#: waits on this many at once, each for at most LOGS_BUDGET_AWAY
LOG_WAITERS = 16


class LogReader(Protocol):
    """Reads a container's last lines (a source's enricher may be one)."""

    def logs(self, event: Event, lines: int, max_bytes: int, budget: float) -> list[str] | None:
        """The last `lines` of the event's container, at most `max_bytes` read within
        `budget` seconds; None when the event is not about a container; raises when the
        read fails."""
        ...


class Attacher:
    """Logs and history for one engine: `logs(event, spec)`, `history(event, spec)`."""

    def __init__(self, reader: Any, store: EventHistory | None, metrics: Metrics) -> None:
        self._reader = reader if callable(getattr(reader, "logs", None)) else None
        self._store = store
        self._metrics = metrics
        self._warned: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None  # made on the first logs_started
        self._pool_lock = threading.Lock()

    def logs(self, event: Event, spec: LogsSpec, budget: float = LOGS_BUDGET) -> list[str]:
        """The redacted last lines, read within `budget` seconds; [] when there are none or
        they cannot be read."""
        if self._reader is None:
            self._once("no-reader", "enrich: logs: this source cannot read container logs; "
                                    "rules see no logs")
            return []
        started = time.monotonic()
        try:
            raw = self._reader.logs(event, spec.lines, spec.max_bytes, budget)
        except Exception as exc:  # noqa: BLE001 - a failed read must not stop the event
            self._metrics.enrich_failures.labels(what="logs").inc()
            log.warning("enrich: logs of %s not read (%s: %s); the event goes on without them",
                        str(event.get("resource_uri", "?"))[:120], type(exc).__name__,
                        str(exc)[:200])
            return []
        finally:
            self._metrics.enrich_seconds.labels(what="logs").observe(time.monotonic() - started)
        return spec.redact(raw) if raw else []

    def logs_started(self, event: Event, spec: LogsSpec) -> Future[list[str]]:
        """`logs(event, spec)` on one of LOG_WAITERS threads, within LOGS_BUDGET_AWAY: the
        engine goes on with other events meanwhile (a closed attacher reads on the caller's
        thread instead, within LOGS_BUDGET)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(LOG_WAITERS, thread_name_prefix="eventd-logs")
            pool = self._pool
        try:
            return pool.submit(self.logs, event, spec, LOGS_BUDGET_AWAY)
        except RuntimeError:  # shut down meanwhile
            done: Future[list[str]] = Future()
            done.set_result(self.logs(event, spec))
            return done

    def close(self) -> None:
        """Stop the waiting threads (a read under way ends within its budget)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def history(self, event: Event, spec: HistorySpec, now: float) -> dict[str, Any] | None:
        """The object's recent events, this one included; None when it cannot be had."""
        key = event.get("resource_uri")
        if self._store is None or not isinstance(key, str) or not key:
            return None
        when = parse_datetime(event.get("datetime"))
        at = when if when is not None else now
        try:
            self._store.history_add(key, history_record(event, at), spec.max, spec.window, now)
            records = self._store.history_get(key, now - spec.window)
        except Exception as exc:  # noqa: BLE001 - the store away: the event goes on
            self._metrics.enrich_failures.labels(what="history").inc()
            log.warning("enrich: history of %s not kept or read (%s); the event goes on "
                        "without it", key[:120], exc)
            return None
        return history_view(records[-spec.max:], spec.window)

    def _once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
