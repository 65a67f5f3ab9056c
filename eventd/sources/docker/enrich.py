"""Enrichment for Engine events: the object as `docker inspect` shows it now.

For `enrich: resource`, so that `when:` can read `resource.State.ExitCode`,
`resource.RestartCount` or `resource.Config.Labels`. One inspect per object is shared by every
rule for `ttl` seconds; an object that is gone (a `--rm` container) or an Engine that does not
answer gives `None`, and a log line says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from eventd.sources.docker.client import describe_failure

logger = logging.getLogger(__name__)

MAX_CACHED = 10_000
#: the Engine call that inspects each object type
INSPECT = {"container": "inspect_container", "image": "inspect_image",
           "network": "inspect_network", "volume": "inspect_volume"}

ClientFactory = Callable[[], docker.APIClient]


class DockerEnricher:
    """Cached inspects of events' objects, on a client of its own."""

    def __init__(self, client_factory: ClientFactory, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = client_factory
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self.lookups = 0  # Engine calls made (tests and debugging)

    def resource(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event's object as the Engine shows it now, or None if it cannot be had."""
        kind, object_id = event.get("type"), event.get("id")
        if not isinstance(kind, str) or kind not in INSPECT or not isinstance(object_id, str) \
                or not object_id:
            return None
        key = (kind, object_id)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        value = self._inspect(kind, object_id)
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (self._clock(), value)
        return value

    def _inspect(self, kind: str, object_id: str) -> dict[str, Any] | None:
        """One inspect on a client of its own (closed at once: nothing is left open at exit)."""
        self.lookups += 1
        try:
            client = self._factory()
            try:
                body = getattr(client, INSPECT[kind])(object_id)
            finally:
                client.close()
        except docker.errors.NotFound:
            logger.info("enrichment: %s %s is gone; rules see no resource", kind, object_id[:12])
            return None
        except Exception as exc:  # noqa: BLE001 - the Engine away, or an answer not understood
            logger.warning("enrichment of %s %s failed (%s); rules see no resource", kind,
                           object_id[:12], describe_failure(exc).detail)
            return None
        return body if isinstance(body, dict) else None
