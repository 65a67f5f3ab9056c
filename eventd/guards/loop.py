"""The loop guard: objects eventd itself acted on, so the events its own calls cause are
recognised (a redeploy must not trigger the rule that redeploys).

The engine records each object when it accepts an action on it, the REST action again before
calling it; the engine asks about every event and marks matches `caused_by_eventd: true`.

Replicas sharing a store (`shared`, the Redis store) recognise each other's calls: `record`
also writes the mark to the store (best effort), and a background thread reads every live
mark in one call about once a second (`refresh`) into the local view. Asking stays a dict
lookup: the engine asks for every event, and a store round trip per event would cap it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sized
from typing import Any

from eventd.errors import StoreError
from eventd.events import ObjectRef, object_ref
from eventd.stores.base import Marks

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

#: seconds between two warnings about an unreachable store (each failure is still counted
#: by the store, in eventd_store_errors_total{op})
_WARN_EVERY = 60.0


class LoopGuard:
    """Objects eventd called a REST action on within `window` seconds, by type+uuid."""

    def __init__(self, window: float = 300.0, clock: Clock = time.monotonic, *,
                 shared: Marks | None = None, refresh: float = 1.0,
                 stopping: threading.Event | None = None, wall: Clock = time.time) -> None:
        self.window = window
        self.refresh = refresh
        self._clock = clock
        self._wall = wall  # the store's times are POSIX seconds, shared by replicas
        self._lock = threading.Lock()
        self._until: dict[ObjectRef, float] = {}  # ref -> end of its mark, on `clock`
        self._shared = shared
        self._stopping = stopping if stopping is not None else threading.Event()
        self._refresher: threading.Thread | None = None
        self._warned_at = -_WARN_EVERY
        self.refreshed = 0  # how many times the view was read from the store

    def record(self, target_uri: str) -> None:
        """Note that eventd is about to act on `target_uri` (here, and in the shared store)."""
        ref = object_ref(target_uri)
        if ref is None:
            return
        now = self._clock()
        with self._lock:
            self._until[ref] = now + self.window
            if len(self._until) > 1000:
                self._prune(now)
        if self._shared is not None:
            try:
                self._shared.mark(f"{ref.type}/{ref.uuid}", self._wall() + self.window)
            except StoreError as exc:  # counted by the store; this replica still knows
                self._warn("could not share the loop guard's mark on %s/%s (%s); other "
                           "replicas may act on its events", ref.type, ref.uuid, exc)

    def marks(self) -> Sized:
        """The live view of the marks (the same object for the guard's life): the engine
        asks `is_self_caused` only while it is not empty, a test in C per event."""
        if self._refresher is None and self._shared is not None:
            self._start_refreshing()
        return self._until

    def is_self_caused(self, event: dict[str, Any]) -> bool:
        """Whether the event's object or one of its parents was acted on within the window."""
        if self._refresher is None and self._shared is not None:
            self._start_refreshing()
        if not self._until:  # nothing acted on yet: asked for every event, so no lock
            return False
        with self._lock:
            if not self._until:
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
                until = self._until.get(ref)
                if until is not None and now <= until:
                    return True
            return False

    def pull(self) -> None:
        """Merge every live mark of the shared store into the local view (one store read)."""
        if self._shared is None:
            return
        wall = self._wall()
        try:
            marks = self._shared.marks_active(wall)
        except StoreError as exc:
            self._warn("could not read the loop guard's shared marks (%s); events caused by "
                       "other replicas' calls may not be recognised until it answers", exc)
            return
        now = self._clock()
        seen: list[tuple[ObjectRef, float]] = []
        for key, until in marks.items():
            kind, _, uuid = key.partition("/")
            if kind and uuid:
                seen.append((ObjectRef(kind, uuid), now + (until - wall)))
        with self._lock:
            for ref, until in seen:
                known = self._until.get(ref)
                if known is None or until > known:
                    self._until[ref] = until
            if len(self._until) > 1000:
                self._prune(now)
            self.refreshed += 1

    def close(self) -> None:
        """Stop refreshing from the store (idempotent)."""
        self._stopping.set()
        refresher = self._refresher
        if refresher is not None and refresher is not threading.current_thread():
            refresher.join(timeout=5.0)

    def _start_refreshing(self) -> None:
        """On the first question (only an engine asks): read the store once now, so a replica
        that just took a stream over knows the marks before its first event, then every
        `refresh` s on a thread of its own until `stopping` is set or `close()`."""
        with self._lock:
            if self._refresher is not None:
                return
            self._refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                               name="loopguard-refresh")
        self.pull()
        self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stopping.wait(self.refresh):
            self.pull()

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            logger.warning(message, *args)

    def _prune(self, now: float) -> None:
        """Forget marks that ended (caller holds the lock)."""
        for ref in [r for r, until in self._until.items() if now > until]:
            del self._until[ref]
