"""Enrichment for Engine events: the object as `docker inspect` shows it now, and its logs.

For `enrich: resource`, so that `when:` can read `resource.State.ExitCode`,
`resource.RestartCount` or `resource.Config.Labels`. One inspect per object is shared by every
rule for `ttl` seconds; an object that is gone (a `--rm` container) or an Engine that does not
answer gives `None`, and a log line says why.

For `enrich: logs`, `logs()` asks the Engine for the container's last lines (`tail`, stdout
and stderr) as a stream, and stops reading at `max_bytes` or when the time budget is spent,
whatever the size of the log: a 100 MB log costs the cap, not 100 MB. That read too can start
early, from the reader thread (`prefetch(event, logs=...)`), on the inspects' pool; at most
`MAX_LOG_READS` such reads are held at once, each dropped once the engine thread took it or
`ttl` seconds after it started, so a burst of dies holds a bounded number of log buffers.
Better still, a container's logs can be followed from its `start` (`follow_logs`, see
eventd.sources.docker.follow): its `die` then takes the tail already held instead of waiting
for the Engine's clean-up.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import quote

import docker
import docker.errors
import requests

from eventd.attachments import LOG_WAITERS, LOGS_BUDGET
from eventd.clients.docker import describe_failure
from eventd.events import Received
from eventd.ruleset.model import Rule
from eventd.sources.docker.follow import LogFollowers, could_match

logger = logging.getLogger(__name__)

MAX_CACHED = 10_000
#: the Engine call that inspects each object type
INSPECT = {"container": "inspect_container", "image": "inspect_image",
           "network": "inspect_network", "volume": "inspect_volume"}

_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,254}")
#: a container's id or name as the Engine gives them (no `/`, `%`, `?`): one path segment
_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
#: prefetched log reads held at once (under way, queued, or done and not yet taken)
MAX_LOG_READS = 64
#: the least left of the engine thread's budget for which a failed early read is read again (s)
MIN_REREAD = 0.05
#: what identifies one log read: container id, event uuid (a container that dies again is read
#: again), lines, max_bytes, budget
LogKey = tuple[str, str, int, int, float]


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
    once it has cleaned up after it: about 10 ms, more under load). The same goes for the
    reads of `enrich: logs` (`prefetch(event, logs=[(lines, max_bytes)])`): the engine thread
    then waits only for a read already under way. Clients are kept open between calls, each
    used by one thread at a time, and closed by `close()`.
    """

    def __init__(self, client_factory: ClientFactory, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, workers: int = 16) -> None:
        self._factory = client_factory
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._pending: dict[tuple[str, str], Future[dict[str, Any] | None]] = {}
        self._workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None  # made on the first prefetch
        #: reads beside a follower whose stream has not ended (`_read_beside`): threads of
        #: their own, never queued behind the prefetches (at most one per thread that waits)
        self._beside: ThreadPoolExecutor | None = None
        self._idle: list[docker.APIClient] = []  # open clients nobody is using now
        self._closed = False
        self.lookups = 0  # Engine calls made (tests and debugging)
        self.prefetched = 0  # of which started by prefetch()
        #: log reads started early, each with when it started (self._clock)
        self._log_reads: dict[LogKey, tuple[float, Future[list[str] | None]]] = {}
        self.log_reads = 0  # log reads made, on the pool or the engine thread
        self.logs_prefetched = 0  # of which started by prefetch()
        self.logs_taken = 0  # prefetched reads the engine thread took (not read again)
        self.logs_dropped = 0  # prefetched reads nobody took within ttl (or closing)
        self.logs_skipped = 0  # prefetches not started: MAX_LOG_READS held already
        self.logs_reread = 0  # prefetched reads that failed, read again within the budget
        self._version: str | None = None  # the API version the first client negotiated
        #: containers whose logs are followed from their start, for `enrich: logs` at die
        self.followers = LogFollowers(self._client, ttl=ttl, clock=clock)

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

    def prefetch(self, event: dict[str, Any], resource: bool = True,
                 logs: Sequence[tuple[int, int]] = ()) -> None:
        """Start inspecting the event's object now (`resource`), and reading its logs (each
        `(lines, max_bytes)` of `logs`), on the pool: the reader thread calls this for events
        a rule with `enrich` matches; `resource()` and `logs()` take the answers."""
        if resource:
            self._prefetch_resource(event)
        if logs:
            self._prefetch_logs(event, logs)

    def _prefetch_resource(self, event: dict[str, Any]) -> None:
        key = self._key(event)
        if key is None:
            return
        with self._lock:
            if self._closed or key in self._pending:
                return
            cached = self._cache.get(key)
            if cached is not None and self._clock() - cached[0] < self.ttl:
                return
            pool = self._pool_locked()
            try:
                self._pending[key] = pool.submit(self._fetch, key, event.get("uuid", "?"))
            except RuntimeError:  # shut down meanwhile: the engine thread inspects by itself
                return
            self.prefetched += 1

    def _pool_locked(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="eventd-inspect")
        return self._pool

    def follow_logs(self, event: dict[str, Any], caps: tuple[int, int] | None) -> None:
        """A container event the reader saw, for the followers: a `start` (with the largest
        `(lines, max_bytes)` of the rules that could match the container, else None) starts
        following its logs, a `destroy` drops its follower."""
        object_id = event.get("id")
        if event.get("type") != "container" or not isinstance(object_id, str) \
                or _CONTAINER.fullmatch(object_id) is None:
            return
        action = event.get("action")
        if action == "start" and caps is not None:
            self.followers.follow(object_id, *caps)
        elif action == "destroy":
            self.followers.forget(object_id)

    def refollow(self, caps_for: Callable[[dict[str, Any]], tuple[int, int] | None]) -> None:
        """The rules changed (or eventd starts): stop every follower, then follow the running
        containers the rules now could match (listed on the pool, as start events would
        show them: `caps_for` says with which caps)."""
        self.followers.drop_all()
        with self._lock:
            if self._closed:
                return
            try:
                self._pool_locked().submit(self._follow_running, caps_for)
            except RuntimeError:  # shut down meanwhile
                pass

    def _follow_running(self, caps_for: Callable[[dict[str, Any]], tuple[int, int] | None]
                        ) -> None:
        try:
            client = self._borrow()
            try:
                listed = client.containers()
            except BaseException:
                client.close()
                raise
            self._give_back(client)
        except Exception as exc:  # noqa: BLE001 - the Engine away: start events still follow
            logger.info("enrichment: running containers not listed (%s); their logs are read "
                        "at their end", describe_failure(exc).detail)
            return
        for entry in listed if isinstance(listed, list) else ():
            event = _as_started(entry)
            if event is not None:
                self.follow_logs(event, caps_for(event))

    def _prefetch_logs(self, event: dict[str, Any], specs: Sequence[tuple[int, int]]) -> None:
        object_id = event.get("id")
        if event.get("type") != "container" or not isinstance(object_id, str) \
                or _CONTAINER.fullmatch(object_id) is None:
            return
        uuid = event.get("uuid", "?")
        died = event.get("timeNano")
        if event.get("action") == "die" and self.followers.claim(
                object_id, str(uuid), len(specs), died if isinstance(died, int) else None):
            return  # its follower's tail is taken at logs(): nothing to read
        started = 0
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            dropped = self._expire_logs_locked(now)
            for lines, max_bytes in specs:
                key: LogKey = (object_id, str(uuid), lines, max_bytes, LOGS_BUDGET)
                if key in self._log_reads:
                    continue  # under way already (a batch seen twice)
                if len(self._log_reads) >= MAX_LOG_READS:
                    self.logs_skipped += 1  # the engine thread reads it itself
                    continue
                try:
                    future = self._pool_locked().submit(self._read_logs, key, uuid, True)
                except RuntimeError:  # shut down meanwhile
                    break
                self._log_reads[key] = (now, future)
                self.logs_prefetched += 1
                started += 1
        for future in dropped:
            future.cancel()
        if started and logger.isEnabledFor(logging.DEBUG):
            logger.debug("logs of container %s for event %s: read started early",
                         object_id[:12], uuid)

    def _expire_logs_locked(self, now: float) -> list[Future[list[str] | None]]:
        """Drop the prefetched reads older than ttl nobody took; their futures, to cancel
        (those not started yet) outside the lock."""
        stale = [key for key, (started, _) in self._log_reads.items()
                 if now - started >= self.ttl]
        dropped = [self._log_reads.pop(key)[1] for key in stale]
        self.logs_dropped += len(dropped)
        return dropped

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

    def resource_started(self, event: dict[str, Any]) -> Future[dict[str, Any] | None] | None:
        """The inspect `prefetch` started for the event's object, while it is under way (the
        engine waits for it off its thread, then `resource` would answer from the cache);
        None when there is none."""
        key = self._key(event)
        if key is None:
            return None
        with self._lock:
            return self._pending.get(key)

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
            beside, self._beside = self._beside, None
            idle, self._idle = self._idle, []
            self.logs_dropped += len(self._log_reads)
            self._log_reads.clear()
        self.followers.close()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if beside is not None:
            beside.shutdown(wait=False, cancel_futures=True)
        for client in idle:
            client.close()

    def logs(self, event: dict[str, Any], lines: int, max_bytes: int,
             budget: float) -> list[str] | None:
        """The container's last `lines` (stdout and stderr, in order), reading at most
        `max_bytes` within `budget` s; None when the event is not about a container. Raises
        when the Engine cannot give them (the caller logs it and goes on). A read `prefetch`
        started for the same container and caps is taken (and dropped from the cache) instead
        of reading again; one still queued behind a busy pool is read here instead."""
        object_id = event.get("id")
        if event.get("type") != "container" or not isinstance(object_id, str) or not object_id:
            return None
        if _CONTAINER.fullmatch(object_id) is None:
            raise ValueError(f"{object_id[:40]!r} is not a container id the Engine could send")
        uuid = event.get("uuid", "?")
        key: LogKey = (object_id, str(uuid), lines, max_bytes, budget)
        began = time.monotonic()
        followed = self.followers.take(object_id, str(uuid), lines, max_bytes, budget,
                                       lambda left: self._read_beside(key, uuid, left))
        if isinstance(followed, Future):  # its stream had not ended: read beside it
            try:
                result = followed.result(timeout=max(0.0, began + budget - time.monotonic()))
            except FutureTimeout:
                raise TimeoutError(f"the logs of {object_id[:12]} took more than {budget} s") \
                    from None
            except CancelledError:  # closing
                return None
            if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
                logger.debug("logs of container %s for event %s in %.1f ms (follower not "
                             "ended: read beside it)", object_id[:12], uuid,
                             (time.monotonic() - began) * 1000)
            return result
        if followed is not None:
            if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
                logger.debug("logs of container %s for event %s in %.1f ms (followed)",
                             object_id[:12], uuid, (time.monotonic() - began) * 1000)
            return followed
        left = began + budget - time.monotonic()
        if left < budget - MIN_REREAD:  # a claimed follower failed late: what is left
            if left < MIN_REREAD:
                raise TimeoutError(f"the logs of {object_id[:12]} took more than {budget} s")
            return self._read_logs(key, uuid, False, left)
        with self._lock:
            dropped = self._expire_logs_locked(self._clock())
            entry = self._log_reads.pop(key, None)
        for stale in dropped:
            stale.cancel()
        how = "read now"
        if entry is not None and not entry[1].cancel():  # under way or done: wait for it
            how = "prefetched"
            with self._lock:
                self.logs_taken += 1
            try:
                result = entry[1].result(timeout=budget)
            except FutureTimeout:
                raise TimeoutError(f"the logs of {object_id[:12]} took more than {budget} s") \
                    from None
            except CancelledError:  # closing
                return None
            except docker.errors.NotFound:
                raise  # gone: asking again gives nothing
            except Exception:
                # Started before this thread asked, the read may have spent its budget on an
                # Engine still busy with the container (a timeout); what is left of this
                # thread's own budget goes to one more read, as if it had read just now.
                left = began + budget - time.monotonic()
                if left < MIN_REREAD:
                    raise
                how = "prefetched, failed: read again"
                with self._lock:
                    self.logs_reread += 1
                result = self._read_logs(key, uuid, False, left)
        else:  # not prefetched, or still queued behind a busy pool (cancelled now)
            result = self._read_logs(key, uuid, False)
        if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
            logger.debug("logs of container %s for event %s in %.1f ms (%s)", object_id[:12],
                         uuid, (time.monotonic() - began) * 1000, how)
        return result

    def _read_beside(self, key: LogKey, uuid: object, left: float
                     ) -> Future[list[str] | None]:
        """A read of the container's logs within `left` s, beside a follower whose stream
        has not ended, started now (cancelled at once when closing)."""
        with self._lock:
            if not self._closed:
                if self._beside is None:
                    self._beside = ThreadPoolExecutor(LOG_WAITERS,
                                                      thread_name_prefix="eventd-logs-beside")
                try:
                    return self._beside.submit(self._read_logs, key, uuid, False, left)
                except RuntimeError:  # shut down meanwhile
                    pass
        closing: Future[list[str] | None] = Future()
        closing.cancel()
        return closing

    def _read_logs(self, key: LogKey, uuid: object, early: bool,
                   budget: float | None = None) -> list[str] | None:
        """One read of a container's last lines on a client kept open, under the caps (within
        `budget` s if given: what is left of the key's)."""
        object_id, _, lines, max_bytes, full = key
        budget = full if budget is None else min(budget, full)
        with self._lock:
            self.log_reads += 1
        began = time.monotonic()
        deadline = began + budget
        client = self._borrow()
        data = bytearray()
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
                while len(data) < max_bytes and time.monotonic() < deadline:
                    chunk = response.raw.read(min(65536, max_bytes - len(data)))
                    if not chunk:
                        break
                    data += chunk
            finally:
                response.close()  # a stream cut short closes its connection, not the client
        except (docker.errors.NotFound, requests.HTTPError):
            self._give_back(client)  # the Engine answered: the client is fine
            raise
        except BaseException:
            client.close()
            raise
        self._give_back(client)
        if logger.isEnabledFor(logging.DEBUG):  # bench/docker_latency.py's breakdown
            logger.debug("read logs of container %s for event %s in %.1f ms (%d bytes%s)",
                         object_id[:12], uuid, (time.monotonic() - began) * 1000, len(data),
                         ", early" if early else "")
        return _text(bytes(data)).splitlines()[-lines:]


def _as_started(entry: object) -> dict[str, Any] | None:
    """A running container as `GET /containers/json` lists it, as its start event would show
    it to a rule (type, id, name, attributes: its labels, image and name); None if the entry
    is not one."""
    if not isinstance(entry, dict):
        return None
    object_id, names, labels = entry.get("Id"), entry.get("Names"), entry.get("Labels")
    if not isinstance(object_id, str) or _CONTAINER.fullmatch(object_id) is None:
        return None
    name = names[0].lstrip("/") if isinstance(names, list) and names \
        and isinstance(names[0], str) else object_id
    attributes = {key: value for key, value in labels.items()
                  if isinstance(key, str) and isinstance(value, str)} \
        if isinstance(labels, dict) else {}
    image = entry.get("Image")
    attributes.update(name=name, **({"image": image} if isinstance(image, str) else {}))
    return {"type": "container", "action": "start", "id": object_id, "name": name,
            "attributes": attributes}


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
    """The reader's sink: starts the inspects and log reads that rules with `enrich: resource`
    or `enrich: logs` will ask for (those whose match holds for the event), then hands the
    batch on. The prefetch callable is `DockerEnricher.prefetch`: `prefetch(event)` for the
    resource alone, `prefetch(event, resource=..., logs=[(lines, max_bytes), ...])` else."""

    def __init__(self, prefetch: Callable[..., None], rules: Callable[[], Any],
                 sink: Callable[[Sequence[Received]], None], follower: Any = None) -> None:
        self._prefetch = prefetch
        self._rules = rules  # the rule set in force (it changes on reload)
        self._sink = sink
        self._seen: Any = None
        #: the rules that enrich: each with whether it inspects and the log caps it reads
        self._enriching: tuple[tuple[Rule, bool, tuple[int, int] | None], ...] = ()
        #: what follows containers' logs from their start (DockerEnricher), or None
        self._follower = follower
        #: the rules with `enrich: logs`: whether a start could lead to a match, their caps
        self._following: tuple[tuple[Callable[[Any], bool], tuple[int, int]], ...] = ()
        #: what chose the containers followed now (their rules' match and caps)
        self._follow_key: tuple[tuple[str, tuple[int, int]], ...] = ()
        self._using = threading.Lock()  # the reader thread, and a reload's prime()

    def prime(self) -> None:
        """Take the rules in force now (at start and after a reload: follow the running
        containers at once, not at the next event)."""
        self._use(self._rules())

    @staticmethod
    def _asks(rule: Rule) -> tuple[Rule, bool, tuple[int, int] | None]:
        spec = rule.enrichment.logs if rule.enrichment is not None else None
        return rule, bool(rule.enrich), None if spec is None else (spec.lines, spec.max_bytes)

    def __call__(self, batch: Sequence[Received]) -> None:
        rules = self._rules()
        if rules is not self._seen:
            self._use(rules)
        if self._enriching:
            following = bool(self._following)
            for received in batch:
                if not received.internal:
                    event = received.event
                    if following and event.get("type") == "container" \
                            and event.get("action") in ("start", "destroy"):
                        self._follower.follow_logs(event, self.caps_for(event))
                    self._start(event)
        self._sink(batch)

    def _use(self, rules: Any) -> None:
        """The rules changed: what to prefetch, and (with a follower) whom to follow. When
        the rules with `enrich: logs` changed, every follower stops and the running
        containers the new rules could match are followed anew."""
        with self._using:
            if rules is self._seen:
                return
            enriching = tuple(
                asks for asks in map(self._asks, rules) if asks[1] or asks[2] is not None)
            if self._follower is not None:
                key = tuple((repr(rule.match), caps)
                            for rule, _, caps in enriching if caps is not None)
                if key != self._follow_key:
                    self._follow_key = key
                    self._following = tuple((could_match(rule), caps)
                                            for rule, _, caps in enriching if caps is not None)
                    self._follower.refollow(self.caps_for)
            self._enriching = enriching
            self._seen = rules

    def caps_for(self, event: dict[str, Any]) -> tuple[int, int] | None:
        """The largest lines and bytes the rules with `enrich: logs` that could match the
        container of this start event read; None when no such rule could."""
        lines = size = 0
        for could, (rule_lines, rule_bytes) in self._following:
            if could(event):
                lines, size = max(lines, rule_lines), max(size, rule_bytes)
        return (lines, size) if lines else None

    def _start(self, event: dict[str, Any]) -> None:
        resource = False
        logs: list[tuple[int, int]] = []
        for rule, inspects, caps in self._enriching:
            if (inspects and not resource) or (caps is not None and caps not in logs):
                if rule.matches(event):
                    resource = resource or inspects
                    if caps is not None and caps not in logs:
                        logs.append(caps)
        if logs:
            self._prefetch(event, resource=resource, logs=logs)
        elif resource:
            self._prefetch(event)
