"""The clock of the living world: runs timed steps on one background thread."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

logger = logging.getLogger(__name__)

# A step runs under the world lock; it returns the delay before it runs again, or None when done.
Step = Callable[[], "float | None"]


class Scheduler:
    """Runs steps at their due time, one at a time, holding `lock` while each runs."""

    def __init__(self, lock: AbstractContextManager[object]) -> None:
        self._lock = lock
        self._queue: list[tuple[float, int, Step]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="emulator-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and join it; pending steps are forgotten."""
        with self._wake:
            self._stopping = True
            self._queue.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def call_later(self, delay: float, step: Step) -> None:
        """Run `step` after `delay` seconds (and again while it returns a delay)."""
        with self._wake:
            due = time.monotonic() + max(0.0, delay)
            heapq.heappush(self._queue, (due, next(self._counter), step))
            self._wake.notify_all()

    @property
    def pending(self) -> int:
        """How many steps wait to run (an idle world has none)."""
        with self._wake:
            return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping:
                    if self._queue:
                        wait = self._queue[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._wake.wait(wait)
                    else:
                        self._wake.wait()
                if self._stopping:
                    return
                _, _, step = heapq.heappop(self._queue)
            try:
                with self._lock:
                    again = step()
            except Exception:  # noqa: BLE001 - a broken step must not stop the world
                logger.exception("emulator step failed; it will not run again")
                again = None
            if again is not None:
                self.call_later(again, step)
