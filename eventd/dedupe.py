"""The de-dup window: recently seen event uuids, and the saver that keeps it across a SIGKILL.

New uuids go into the current set; when it holds half the window, it becomes the previous
generation and the one before is dropped whole. So the window remembers between size/2
and size uuids, and memory stays flat: no per-entry eviction, hence no hash-table churn
(an OrderedDict or a set with deletions rebuilds its table as deleted slots pile up).

The window lives in the engine; the store only keeps its snapshot, which `DedupeSaver`
writes every few seconds (not only at a clean stop), so an event processed before a SIGKILL
and sent again after the restart is not acted on twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from eventd.errors import StoreError

if TYPE_CHECKING:
    from eventd.stores.base import DedupeSnapshots

log = logging.getLogger(__name__)

DEFAULT_DEDUPE_WINDOW = 50_000  # remembers the last 25k to 50k event uuids
DEFAULT_SAVE_INTERVAL = 2.0  # seconds between two saves of a changed window


class DedupeWindow:
    """At least the last `size // 2` uuids, at most the last `size`."""

    def __init__(self, size: int = DEFAULT_DEDUPE_WINDOW, initial: Iterable[str] = ()) -> None:
        self.size = max(2, int(size))
        self._half = self.size // 2
        self._previous: set[str] = set()
        self._current: set[str] = set()
        self._lock = threading.Lock()  # the engine adds; the saver reads from another thread
        self.version = 0  # counts additions: the saver writes only a window that changed
        for uuid in initial:
            self.check_and_add(uuid)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._current or uuid in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def check_and_add(self, uuid: str) -> bool:
        """True if `uuid` was already in the window; otherwise add it and return False."""
        if uuid in self._current or uuid in self._previous:
            return True
        with self._lock:
            self._current.add(uuid)
            self.version += 1
            if len(self._current) >= self._half:
                self._previous, self._current = self._current, set()
        return False

    def snapshot(self) -> list[str]:
        """The uuids, older generation first (to persist the window)."""
        with self._lock:
            return [*self._previous, *self._current]


class DedupeSaver:
    """Saves a window's snapshot to the store every `interval` seconds when it changed, and
    once more at close. A failed save is logged and tried again at the next round."""

    def __init__(self, window: DedupeWindow, snapshots: DedupeSnapshots,
                 interval: float = DEFAULT_SAVE_INTERVAL) -> None:
        self.window = window
        self._snapshots = snapshots
        self.interval = interval
        self._saved_version = window.version
        self._stop = threading.Event()
        self._save_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.saves = 0

    @classmethod
    def load(cls, snapshots: DedupeSnapshots, size: int = DEFAULT_DEDUPE_WINDOW,
             interval: float = DEFAULT_SAVE_INTERVAL) -> DedupeSaver:
        """A saver over a window filled from the store's last snapshot."""
        return cls(DedupeWindow(size, snapshots.dedupe_load()), snapshots, interval)

    def start(self) -> None:
        """Start saving in the background."""
        if self._thread is None and self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="dedupe-saver", daemon=True)
            self._thread.start()

    def save(self) -> bool:
        """Save now if the window changed since the last save; False if the store failed."""
        with self._save_lock:
            version = self.window.version
            if version == self._saved_version:
                return True
            uuids = self.window.snapshot()
            try:
                self._snapshots.dedupe_save(uuids)
            except StoreError as exc:
                if not self._failing:
                    log.warning("could not save the de-dup window (%s); trying again in %.0f s",
                                exc, self.interval)
                self._failing = True
                return False
            if self._failing:
                log.info("de-dup window saved again")
            self._failing = False
            self._saved_version = version
            self.saves += 1
            return True

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the background saves and save a last time (call before closing the store)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.save()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.save()
