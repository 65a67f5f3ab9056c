"""The alerts thread: re-sends firing alerts and closes digest groups on time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from eventd.alerts.firing import AlertBook
from eventd.alerts.groups import Grouper
from eventd.errors import StoreError
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics

log = logging.getLogger(__name__)

#: how often groups are checked for closing (a group closes at most this late)
GROUP_TICK = 0.2


class Ticker:
    """One thread for both: cheap checks a few times a second, stopped by `stopping`."""

    def __init__(self, book: AlertBook, grouper: Grouper, metrics: Metrics,
                 stopping: threading.Event, clock: Callable[[], float] = time.time) -> None:
        self._book = book
        self._grouper = grouper
        self._metrics = metrics
        self._stopping = stopping
        self._clock = clock
        self._thread: threading.Thread | None = None
        # Re-sends are checked a few times per interval, so one is at most a quarter late.
        self._alert_every = max(0.1, min(book.resend / 4, 5.0))

    def start(self) -> None:
        """Start the thread (a daemon thread: `close` joins it)."""
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_alerts = 0.0
        failing = False
        while not self._stopping.is_set():
            now = self._clock()
            try:
                self._grouper.due(now)
                if now >= next_alerts:
                    next_alerts = now + self._alert_every
                    self._book.tick()
            except StoreError as exc:  # unreachable: the next tick tries again
                if not failing:
                    log.warning("alerts: the store is unreachable (%s); re-sends and closing "
                                "digests wait for it", exc)
                failing = True
            except Exception as exc:  # noqa: BLE001 - a bug must not end re-sending
                report_internal_error("alerts", exc, self._metrics)
            else:
                if failing:
                    log.info("alerts: the store answers again; re-sends and digests resume")
                failing = False
            self._stopping.wait(GROUP_TICK)

    def close(self, timeout: float = 2.0) -> None:
        """Wait for the thread to see `stopping` (set by the caller)."""
        if self._thread is not None:
            self._thread.join(timeout)
