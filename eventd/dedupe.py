"""A bounded window of recently seen event uuids, kept as two generations of sets.

New uuids go into the current set; when it holds half the window, it becomes the previous
generation and the one before is dropped whole. So the window remembers between size/2
and size uuids, and memory stays flat: no per-entry eviction, hence no hash-table churn
(an OrderedDict or a set with deletions rebuilds its table as deleted slots pile up).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class DedupeWindow:
    """At least the last `size // 2` uuids, at most the last `size`."""

    def __init__(self, size: int, initial: Iterable[str] = ()) -> None:
        self.size = max(2, int(size))
        self._half = self.size // 2
        self._previous: set[str] = set()
        self._current: set[str] = set()
        self._lock = threading.Lock()  # the engine adds; close() reads from another thread
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
            if len(self._current) >= self._half:
                self._previous, self._current = self._current, set()
        return False

    def snapshot(self) -> list[str]:
        """The uuids, older generation first (to persist the window)."""
        with self._lock:
            return [*self._previous, *self._current]
