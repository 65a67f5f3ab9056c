"""Enrichment: the REST object an event is about, for rules that look at more than the event.

One lookup per object (type+uuid) is shared by every rule for `ttl` seconds; a failed lookup
is retried a couple of times quickly, then the rule sees `None` and a WARNING says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from eventd.clients.dockercloud.rest import RestClient
from eventd.errors import ActionError, PermanentActionError
from eventd.events import RESOURCE_URI, ObjectRef, object_ref

logger = logging.getLogger(__name__)

MAX_CACHED = 10_000


def resource_path(event: dict[str, Any]) -> str | None:
    """The REST path to GET for an event (actions: the un-namespaced audit endpoint)."""
    uri = event.get("resource_uri")
    ref = object_ref(uri)
    if ref is None or not isinstance(uri, str):
        return None
    if event.get("type") == "action" or ref.type == "action":
        return f"/api/audit/v1/action/{ref.uuid}/"
    # Event data must not steer an authenticated GET: no `..`, `?`, `#`, only a URI of the reference.
    return uri if RESOURCE_URI.fullmatch(uri) else None


class Enricher:
    """Cached, retried GETs of events' resources."""

    def __init__(self, rest: RestClient | None, ttl: float = 5.0, retries: int = 2, *,
                 retry_delay: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, logs: Any = None) -> None:
        self.rest = rest
        #: `enrich: logs`: a ContainerLogs (eventd.sources.dockercloud.logs), or None
        self._logs = logs
        self.ttl = ttl
        self.retries = retries
        self.retry_delay = retry_delay
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._cache: dict[ObjectRef, tuple[float, dict[str, Any] | None]] = {}
        self.lookups = 0  # REST GETs made (tests and debugging)

    def logs(self, event: dict[str, Any], lines: int, max_bytes: int,
             budget: float) -> list[str] | None:
        """A container's last lines from the Stream API (None without a reader or a container)."""
        if self._logs is None:
            return None
        result: list[str] | None = self._logs.logs(event, lines, max_bytes, budget)
        return result

    def resource(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event's object as the REST API shows it now, or None if it cannot be had."""
        path = resource_path(event)
        ref = object_ref(event.get("resource_uri"))
        if path is None or ref is None or self.rest is None:
            return None
        now = self._clock()
        with self._lock:
            cached = self._cache.get(ref)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        value = self._fetch(path, ref)
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._prune(now)
            self._cache[ref] = (self._clock(), value)
        return value

    def _fetch(self, path: str, ref: ObjectRef) -> dict[str, Any] | None:
        assert self.rest is not None
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.retry_delay * attempt)
            self.lookups += 1
            try:
                body = self.rest.get(path)
            except PermanentActionError as exc:
                last = exc
                break
            except (ActionError, ValueError) as exc:  # retryable, or a body that is not JSON
                last = exc
                continue
            if isinstance(body, dict):
                return body
            last = ValueError("the answer is not a JSON object")
            break
        logger.warning("enrichment of %s %s failed (%s); rules see no resource", ref.type,
                       ref.uuid, last)
        return None

    def _prune(self, now: float) -> None:
        for key in [k for k, (at, _) in self._cache.items() if now - at >= self.ttl]:
            del self._cache[key]
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
