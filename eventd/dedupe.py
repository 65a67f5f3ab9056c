"""A bounded window of recently seen event uuids: a set for lookups, a deque for age order.

A set plus a deque costs about a third less memory than an OrderedDict of the same keys,
and one `check_and_add` call does the work of a lookup and an insert.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable


class DedupeWindow:
    """The last `size` uuids; the oldest is forgotten first."""

    def __init__(self, size: int, initial: Iterable[str] = ()) -> None:
        self.size = max(1, int(size))
        self._order: deque[str] = deque()
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # the engine adds; close() reads from another thread
        for uuid in initial:
            self.check_and_add(uuid)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, uuid: str) -> bool:
        """True if `uuid` was already in the window; otherwise add it and return False."""
        seen = self._seen
        if uuid in seen:
            return True
        with self._lock:
            seen.add(uuid)
            self._order.append(uuid)
            if len(self._order) > self.size:
                seen.discard(self._order.popleft())
        return False

    def snapshot(self) -> list[str]:
        """The uuids, oldest first (to persist the window)."""
        with self._lock:
            return list(self._order)
