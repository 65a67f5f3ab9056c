"""The loop guard: objects eventd itself acted on, so the events its own calls cause are
recognised (a redeploy must not trigger the rule that redeploys).

The REST action records each object before calling it; the engine asks about every event and
marks matches `caused_by_eventd: true`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from eventd.events import ObjectRef, object_ref

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class LoopGuard:
    """Objects eventd called a REST action on within `window` seconds, by type+uuid."""

    def __init__(self, window: float = 300.0, clock: Clock = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._called: dict[ObjectRef, float] = {}

    def record(self, target_uri: str) -> None:
        """Note that eventd is about to act on `target_uri`."""
        ref = object_ref(target_uri)
        if ref is None:
            return
        now = self._clock()
        with self._lock:
            self._called[ref] = now
            if len(self._called) > 1000:
                self._prune(now)

    def is_self_caused(self, event: dict[str, Any]) -> bool:
        """Whether the event's object or one of its parents was acted on within the window."""
        with self._lock:
            if not self._called:
                return False
            now = self._clock()
            uris = [event.get("resource_uri")]
            parents = event.get("parents")
            if isinstance(parents, list):
                uris.extend(parents)
            for uri in uris:
                ref = object_ref(uri)
                if ref is None:
                    continue
                at = self._called.get(ref)
                if at is not None and now - at <= self.window:
                    return True
            return False

    def _prune(self, now: float) -> None:
        for ref in [r for r, at in self._called.items() if now - at > self.window]:
            del self._called[ref]
