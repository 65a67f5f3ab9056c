"""Enrichment for Engine events: the object as `docker inspect` shows it now, and its logs.

For `enrich: resource`, so that `when:` can read `resource.State.ExitCode`,
`resource.RestartCount` or `resource.Config.Labels`. One inspect per object is shared by every
rule for `ttl` seconds; an object that is gone (a `--rm` container) or an Engine that does not
answer gives `None`, and a log line says why.

For `enrich: logs`, `logs()` asks the Engine for the container's last lines (`tail`, stdout
and stderr) as a stream, and stops reading at `max_bytes` or when the time budget is spent,
whatever the size of the log: a 100 MB log costs the cap, not 100 MB.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import docker
import docker.errors

from eventd.clients.docker import describe_failure
from eventd.events import Received
from eventd.ruleset.model import Rule

logger = logging.getLogger(__name__)

MAX_CACHED = 10_000
#: the Engine call that inspects each object type
INSPECT = {"container": "inspect_container", "image": "inspect_image",
           "network": "inspect_network", "volume": "inspect_volume"}

_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,254}")


def _plain_reference(object_id: str) -> bool:
    """An id or name the Engine could have sent: docker-py quotes path arguments keeping `/`,
    so `..` segments (or `?`, `#`, `%`) would move an inspect to another Engine endpoint."""
    return _REFERENCE.fullmatch(object_id) is not None \
        and not any(part in ("", ".", "..") for part in object_id.split("/"))


#: makes a client; given `version=` (one negotiated before) it skips asking the Engine again
ClientFactory = Callable[..., docker.APIClient]


class DockerEnricher:
    """Cached inspects of events' objects, on clients of its own.

    An inspect can start before the engine thread asks for it: `prefetch` runs it on a small
    pool as soon as the reader sees an event that a rule with `enrich: resource` matches, so
    the inspects of containers dying together overlap instead of waiting in line behind the
    engine thread (the Engine answers the first inspect of a container that just died only
    once it has cleaned up after it: about 10 ms, more under load). Clients are kept open
    between calls, each used by one thread at a time, and closed by `close()`.
    """

    def __init__(self, client_factory: ClientFactory, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, workers: int = 8) -> None:
        self._factory = client_factory
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._pending: dict[tuple[str, str], Future[dict[str, Any] | None]] = {}
        self._workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None  # made on the first prefetch
        self._idle: list[docker.APIClient] = []  # open clients nobody is using now
        self._closed = False
        self.lookups = 0  # Engine calls made (tests and debugging)
        self.prefetched = 0  # of which started by prefetch()
        self._version: str | None = None  # the API version the first client negotiated

    def _client(self) -> docker.APIClient:
        """A new client, on the API version negotiated once."""
        client = self._factory(version=self._version) if self._version else self._factory()
        version = getattr(client, "api_version", None)
        if isinstance(version, str) and version:
            self._version = version
        return client

    def _borrow(self) -> docker.APIClient:
        """An open client for this thread alone (one kept from an earlier call, or a new one)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._client()

    def _give_back(self, client: docker.APIClient) -> None:
        """Keep a client that worked for the next call (at most one per possible user)."""
        with self._lock:
            if not self._closed and len(self._idle) <= self._workers:
                self._idle.append(client)
                return
        client.close()

    @staticmethod
    def _key(event: dict[str, Any]) -> tuple[str, str] | None:
        kind, object_id = event.get("type"), event.get("id")
        if not isinstance(kind, str) or kind not in INSPECT or not isinstance(object_id, str) \
                or not _plain_reference(object_id):
            return None
        return kind, object_id

    def prefetch(self, event: dict[str, Any]) -> None:
        """Start inspecting the event's object now, on the pool (the reader thread calls this
        for events a rule with `enrich: resource` matches); `resource()` takes the answer."""
        key = self._key(event)
        if key is None:
            return
        with self._lock:
            if self._closed or key in self._pending:
                return
            cached = self._cache.get(key)
            if cached is not None and self._clock() - cached[0] < self.ttl:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="eventd-inspect")
            try:
                self._pending[key] = self._pool.submit(self._fetch, key, event.get("uuid", "?"))
            except RuntimeError:  # shut down meanwhile: the engine thread inspects by itself
                return
            self.prefetched += 1

    def _fetch(self, key: tuple[str, str], uuid: object) -> dict[str, Any] | None:
        """One inspect on the pool: cached and no longer pending under one lock, so that
        `resource()` always finds one or the other."""
        value: dict[str, Any] | None = None
        try:
            value = self._inspect(key[0], key[1], uuid)
        finally:
            with self._lock:
                self._remember_locked(key, value)
                self._pending.pop(key, None)
        return value

    def resource(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event's object as the Engine shows it now, or None if it cannot be had."""
        key = self._key(event)
        if key is None:
            return None
        began = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            pending = self._pending.get(key)
        how = "cached"
        if cached is not None and self._clock() - cached[0] < self.ttl:
            value = cached[1]
        elif pending is not None:
            how = "prefetched"
            try:
                value = pending.result()
            except CancelledError:  # closing: nobody needs it any more
                value = None
        else:
            how = "read now"
            value = self._inspect(key[0], key[1], event.get("uuid", "?"))
            self._remember(key, value)
        if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
            logger.debug("resource of %s %s for event %s in %.1f ms (%s)", key[0], key[1][:12],
                         event.get("uuid", "?"), (time.monotonic() - began) * 1000, how)
        return value

    def _remember(self, key: tuple[str, str], value: dict[str, Any] | None) -> None:
        with self._lock:
            self._remember_locked(key, value)

    def _remember_locked(self, key: tuple[str, str], value: dict[str, Any] | None) -> None:
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (self._clock(), value)

    def _inspect(self, kind: str, object_id: str, uuid: object = "?") -> dict[str, Any] | None:
        """One inspect on a client kept open (closed instead when the call failed)."""
        with self._lock:
            self.lookups += 1
        began = time.monotonic()
        try:
            client = self._borrow()
            try:
                body = getattr(client, INSPECT[kind])(object_id)
            except docker.errors.NotFound:
                self._give_back(client)  # the Engine answered: the client is fine
                raise
            except BaseException:
                client.close()
                raise
            self._give_back(client)
        except docker.errors.NotFound:
            logger.info("enrichment: %s %s is gone; rules see no resource", kind, object_id[:12])
            return None
        except Exception as exc:  # noqa: BLE001 - the Engine away, or an answer not understood
            logger.warning("enrichment of %s %s failed (%s); rules see no resource", kind,
                           object_id[:12], describe_failure(exc).detail)
            return None
        if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
            logger.debug("inspected %s %s for event %s in %.1f ms", kind, object_id[:12], uuid,
                         (time.monotonic() - began) * 1000)
        return body if isinstance(body, dict) else None

    def close(self) -> None:
        """Stop the pool (inspects under way are not waited for) and close the open clients."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            idle, self._idle = self._idle, []
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for client in idle:
            client.close()

    def logs(self, event: dict[str, Any], lines: int, max_bytes: int,
             budget: float) -> list[str] | None:
        """The container's last `lines` (stdout and stderr, in order), reading at most
        `max_bytes` within `budget` s; None when the event is not about a container. Raises
        when the Engine cannot give them (the caller logs it and goes on)."""
        object_id = event.get("id")
        if event.get("type") != "container" or not isinstance(object_id, str) or not object_id:
            return None
        deadline = time.monotonic() + budget
        client = self._client()
        try:
            # GET /containers/{id}/logs as a stream read by hand: docker-py's own stream
            # leaves its unix socket to the garbage collector when closed early.
            response = client.get(f"{client.base_url}/v{client.api_version}/containers/"
                                  f"{quote(object_id, safe='')}/logs",
                                  params={"stdout": 1, "stderr": 1, "tail": lines},
                                  stream=True, timeout=budget)
            try:
                if response.status_code == 404:
                    raise docker.errors.NotFound(f"container {object_id[:12]} is gone")
                response.raise_for_status()
                data = bytearray()
                while len(data) < max_bytes and time.monotonic() < deadline:
                    chunk = response.raw.read(min(65536, max_bytes - len(data)))
                    if not chunk:
                        break
                    data += chunk
            finally:
                response.close()
        finally:
            client.close()
        return _text(bytes(data)).splitlines()[-lines:]


def _text(data: bytes) -> str:
    """The Engine's log stream as text: 8-byte frame headers (stream, 0, 0, 0, size) taken
    out when the container has no TTY; a frame cut by the cap keeps what came."""
    if len(data) < 8 or data[0] not in (0, 1, 2) or data[1:4] != b"\0\0\0":
        return data.decode("utf-8", "replace")  # a TTY container: the bytes as written
    out = bytearray()
    at = 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4:at + 8], "big")
        out += data[at + 8:at + 8 + size]
        at += 8 + size
    return out.decode("utf-8", "replace")


class Prefetching:
    """The reader's sink: starts the inspects that rules with `enrich: resource` will ask for
    (those whose match holds for the event), then hands the batch on."""

    def __init__(self, prefetch: Callable[[dict[str, Any]], None], rules: Callable[[], Any],
                 sink: Callable[[Sequence[Received]], None]) -> None:
        self._prefetch = prefetch
        self._rules = rules  # the rule set in force (it changes on reload)
        self._sink = sink
        self._seen: Any = None
        self._enriching: tuple[Rule, ...] = ()

    def __call__(self, batch: Sequence[Received]) -> None:
        rules = self._rules()
        if rules is not self._seen:
            self._seen = rules
            self._enriching = tuple(rule for rule in rules if rule.enrich)
        if self._enriching:
            for received in batch:
                event = received.event
                if not received.internal and any(rule.matches(event)
                                                 for rule in self._enriching):
                    self._prefetch(event)
        self._sink(batch)
