"""`enrich: logs` without waiting on the Engine's clean-up: follow a container's logs from its
`start`, keep a bounded tail, and hand that tail over at its `die`.

After a container exits, the Engine holds the container's lock while it cleans up (task
delete, unmount, network release) and answers a logs request only after that: 90 to 540 ms
at 4 to 16 dying at once on a 2-core host. A follow stream
(`GET /containers/{id}/logs?follow=1`) opened while the container runs ends when the Engine
closes the container's log driver, tens of milliseconds before a read asked at `die` is
answered (measured: bench/docker_latency.py `--command live`). So for every container a rule
with `enrich: logs` could match (its conditions known at start: type, id, name, image,
labels), a follower thread holds the last bytes the container wrote; at `die` the reader
claims it, and the thread that waits for the die's logs waits for its end (within the logs
budget; after half of it a read is started beside it, for a stream that outlives the
container's log) and takes its tail. When there is none (not followed, follower cap reached,
stream failed, bytes cap reached) the enricher reads as before.

Bounds: at most `max_followers` followers (one thread and one connection each), at most
`max_bytes` held by each (its rule's cap) and `max_held` by all; a follower is dropped at its
container's `destroy`, after its tail was taken, `ttl` seconds after its stream ended, and
all of them on reload and on close. Log bytes and ids are data: frame headers are trusted
for nothing but where the next header is, and every byte is held under the caps.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from eventd.ruleset.matching import compile_match
from eventd.ruleset.model import Rule

logger = logging.getLogger(__name__)

#: containers followed at once (each one thread blocked in a read, and one connection)
MAX_FOLLOWERS = 128
#: log bytes all followers hold together
MAX_HELD = 8 * 1024 * 1024
#: what a follower reads at once
CHUNK = 65536
#: a stream that ended this long before a die is no tail of that die's run (ns): the Engine
#: ends it when it closes the container's log, just before the die (or after, under load)
STALE_NS = 1_000_000_000
#: die-time attributes: a rule's condition on them says nothing about whether to follow
_DIE_ONLY = frozenset(("exitCode", "execDuration", "signal"))
#: the outcomes eventd_docker_log_follows_total counts
OUTCOMES = ("started", "skipped_cap", "in_time", "late", "taken", "not_ended", "failed",
            "overflow")


def _known_at_start(key: str) -> bool:
    """A match key whose value a container's `start` event already has (type, id, name,
    image, labels), so that a rule whose condition on it fails for a start cannot match the
    container's die either."""
    if key in ("type", "Type", "id", "name", "Actor.ID"):
        return True
    for prefix in ("attributes.", "Actor.Attributes."):
        if key.startswith(prefix):
            return key[len(prefix):].strip('"') not in _DIE_ONLY
    return False


def could_match(rule: Rule) -> Callable[[Mapping[str, Any]], bool]:
    """The rule's `match` reduced to what a container's start knows: the conditions on
    anything else (action, exit code, `any`/`all`/`not`...) are left out, so the predicate
    holds for every container whose later events the rule could match (it may hold for more)."""
    kept = {key: value for key, value in rule.match.items()
            if isinstance(key, str) and _known_at_start(key)}
    try:
        return compile_match(kept).predicate
    except Exception:  # noqa: BLE001 - compiled once already at load: follow everything
        return lambda event: True


class FrameTail:
    """The last `max_bytes` of a container's output, fed a log stream as it arrives: 8-byte
    frame headers (stream, 0, 0, 0, size) taken out when the container has no TTY (known
    from the first bytes, as `_text` does). A header that lies about its size moves only
    where the next one is read; nothing is held beyond `2 * max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held = bytearray()
        self._cut = False  # bytes were dropped from the front
        self._mode: str | None = None  # "mux" or "raw" once known
        self._header = bytearray()
        self._left = 0  # payload bytes of the current frame still to come

    def __len__(self) -> int:
        return len(self._held)

    def feed(self, chunk: bytes) -> None:
        """Add what came; the held bytes stay within `2 * max_bytes`."""
        if self._mode is None:
            self._header += chunk
            if self._header and self._header[0] not in (0, 1, 2):
                self._mode = "raw"
            elif len(self._header) >= 8:
                self._mode = "mux" if self._header[1:4] == b"\0\0\0" else "raw"
            else:
                return
            chunk, self._header = bytes(self._header), bytearray()
        if self._mode == "raw":
            self._keep(chunk)
            return
        view = memoryview(chunk)
        while view:
            if self._left:
                take = min(self._left, len(view))
                self._keep(view[:take])
                self._left -= take
                view = view[take:]
                continue
            need = 8 - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == 8:
                self._left = int.from_bytes(self._header[4:8], "big")
                self._header = bytearray()

    def _keep(self, payload: bytes | memoryview) -> None:
        self._held += payload
        if len(self._held) > 2 * self.max_bytes:
            del self._held[:len(self._held) - self.max_bytes]
            self._cut = True

    def lines(self, lines: int, max_bytes: int) -> list[str]:
        """The last `lines` lines within the last `max_bytes` bytes (a line cut at the front
        by the cap is left out when a whole one follows it)."""
        data = bytes(self._held[-max_bytes:])
        if (self._cut or len(self._held) > max_bytes) and b"\n" in data[:-1]:
            data = data[data.index(b"\n") + 1:]
        return data.decode("utf-8", "replace").splitlines()[-lines:]


@dataclass(eq=False)
class Follower:
    """One container's follow stream, read by a thread of its own."""

    container: str
    lines: int
    max_bytes: int
    tail: FrameTail = field(init=False)
    ended: threading.Event = field(default_factory=threading.Event)  # the thread is done
    complete: bool = False  # the Engine ended the stream (the container's log closed)
    broken: str = ""  # why the tail cannot be used ("" while it can)
    ended_at: float = 0.0
    thread: threading.Thread | None = None
    counted: int = 0  # its bytes in LogFollowers' held total
    answered_ns: int = 0  # when the Engine answered the follow request (time.time_ns)
    ended_ns: int = 0  # when its stream ended (time.time_ns)
    watchers: list[threading.Event] = field(default_factory=list)  # set when it ends
    _socket: Any = None
    _stop: bool = False

    def __post_init__(self) -> None:
        self.tail = FrameTail(self.max_bytes)

    def stop(self) -> None:
        """Wake the thread's read (shutdown of its socket) so that it ends now."""
        self._stop = True
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _socket_of(response: Any) -> Any:
    """The socket under a streamed response, or None: closing the response from another
    thread does not wake a blocked read, shutting the socket down does. Reached through
    public attributes only: a streamed requests response keeps its urllib3 connection
    (`HTTPResponse.connection`), whose `sock` is the connected socket."""
    connection = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(connection, "sock", None)
    return sock if hasattr(sock, "shutdown") else None


class LogFollowers:
    """The followed containers: started by `follow`, claimed at `die`, dropped by `forget`,
    `drop_all` and `close`. Thread-safe; the reader thread calls it, the engine thread takes
    claimed tails with `take`."""

    def __init__(self, client: Callable[[], Any], ttl: float = 5.0,
                 max_followers: int = MAX_FOLLOWERS, max_held: int = MAX_HELD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client  # a new docker-py APIClient, closed by its follower
        self.ttl = ttl
        self.max_followers = max_followers
        self.max_held = max_held
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, Follower] = {}  # container id -> its follower
        #: (container id, event uuid) -> (the follower, uses left, when claimed)
        self._claimed: dict[tuple[str, str], tuple[Follower, int, float]] = {}
        self._held = 0
        self._closed = False
        self.counts = dict.fromkeys(OUTCOMES, 0)

    # -- the reader thread's side -------------------------------------------------------------

    def follow(self, container: str, lines: int, max_bytes: int) -> bool:
        """Start following a container's logs (a new follower replaces an ended one); False
        when the cap is reached or eventd is closing."""
        with self._lock:
            if self._closed:
                return False
            self._expire_locked()
            old = self._live.get(container)
            if old is not None and not old.ended.is_set() and not old.broken:
                return True  # followed already (a start seen twice)
            if old is not None:
                del self._live[container]
                self._release_locked(old)
            if len(self._live) + len(self._claimed) >= self.max_followers:
                self.counts["skipped_cap"] += 1
                return False
            follower = Follower(container, lines, max_bytes)
            thread = threading.Thread(target=self._run, args=(follower,), daemon=True,
                                      name=f"eventd-follow-{container[:12]}")
            follower.thread = thread
            self._live[container] = follower
            self.counts["started"] += 1
            # started under the lock: `close` (which takes it) never sees a follower whose
            # thread is not started yet (joining one raises RuntimeError). start() returns
            # once the thread runs, before `_run` asks for the lock.
            thread.start()
        return True

    def claim(self, container: str, uuid: str, uses: int, died_ns: int | None = None) -> bool:
        """At a container's `die`: its follower (if one can give a tail) is set aside for the
        engine thread's `take` (`uses` times, one per log cap the rules ask), so that a
        later `start` follows anew. Counted `in_time` when the Engine answered its request
        before the die's `timeNano` (`died_ns`), else `late` (the request waited for the
        Engine's clean-up, as a read at die does)."""
        with self._lock:
            follower = self._live.get(container)
            if follower is None or follower.broken:
                return False
            if died_ns is not None and follower.ended.is_set() \
                    and follower.ended_ns < died_ns - STALE_NS:
                return False  # ended long before this die: not the tail of this run
            if died_ns is not None:
                answered = follower.answered_ns
                self.counts["in_time" if 0 < answered < died_ns else "late"] += 1
            del self._live[container]
            self._claimed[(container, uuid)] = (follower, uses, self._clock())
            return True

    def forget(self, container: str) -> None:
        """The container is gone (`destroy`): drop its follower."""
        with self._lock:
            follower = self._live.pop(container, None)
            if follower is not None:
                self._release_locked(follower)
        if follower is not None:
            follower.stop()

    def drop_all(self) -> None:
        """Stop every follower (reload: the rules that chose them changed; close)."""
        with self._lock:
            followers = list(self._live.values()) + [f for f, _, _ in self._claimed.values()]
            self._live.clear()
            self._claimed.clear()
            for follower in followers:
                self._release_locked(follower)
        for follower in followers:
            follower.stop()

    # -- the engine thread's side -------------------------------------------------------------

    def take(self, container: str, uuid: str, lines: int, max_bytes: int, budget: float,
             read: Callable[[float], Future[list[str] | None]] | None = None
             ) -> list[str] | Future[list[str] | None] | None:
        """The claimed tail of the container's end, waiting for its stream to end within
        `budget` s; None when there is none to take. When the stream has not ended within
        half of `budget`, `read(left)` starts a read of the container's logs beside it (a
        stream that outlives the container's log): the tail if the stream ends first within
        the budget, else that read's future (done, or the caller waits what is left)."""
        with self._lock:
            entry = self._claimed.get((container, uuid))
            if entry is None:
                return None
            follower, uses, when = entry
            if uses <= 1:
                del self._claimed[(container, uuid)]
            else:
                self._claimed[(container, uuid)] = (follower, uses - 1, when)
        deadline = time.monotonic() + budget
        instead: Future[list[str] | None] | None = None
        if not follower.ended.wait(budget / 2):
            with self._lock:
                self.counts["not_ended"] += 1
            if read is not None:
                instead = read(max(0.0, deadline - time.monotonic()))
            self._wait_either(follower, instead, deadline)
        if follower.ended.is_set():
            with self._lock:
                if follower.complete and not follower.broken:
                    self.counts["taken"] += 1
                    tail = follower.tail.lines(lines, min(max_bytes, follower.max_bytes))
                    if (container, uuid) not in self._claimed:  # the last use
                        self._release_locked(follower)
                    if instead is not None:
                        instead.cancel()  # not started yet: never asked
                    return tail
        with self._lock:
            self._claimed.pop((container, uuid), None)
            self._release_locked(follower)
        follower.stop()
        return instead

    def _wait_either(self, follower: Follower, read: Future[Any] | None,
                     deadline: float) -> None:
        """Until the follower's stream ends, the read is done, or the deadline."""
        either = threading.Event()
        if read is not None:
            read.add_done_callback(lambda _: either.set())
        with self._lock:
            follower.watchers.append(either)
        while True:
            either.clear()
            left = deadline - time.monotonic()
            if follower.ended.is_set() or (read is not None and read.done()) or left <= 0:
                return
            either.wait(left)

    def _release_locked(self, follower: Follower) -> None:
        """The follower is dropped: its thread stops feeding it, its bytes no longer count."""
        follower._stop = True
        follower.broken = follower.broken or "dropped"
        self._held -= follower.counted
        follower.counted = 0
        follower.tail = FrameTail(1)

    # -- bounds and the follower threads ------------------------------------------------------

    def _expire_locked(self) -> None:
        """Drop followers whose stream ended `ttl` s ago, and claims nobody took in `ttl` s."""
        now = self._clock()
        for container, follower in list(self._live.items()):
            if follower.ended.is_set() and now - follower.ended_at >= self.ttl:
                del self._live[container]
                self._release_locked(follower)
        for key, (follower, _, when) in list(self._claimed.items()):
            if now - when >= self.ttl:
                del self._claimed[key]
                self._release_locked(follower)  # its thread ended, or is woken below
                follower.stop()

    def _run(self, follower: Follower) -> None:
        """The follower's thread: read the stream until the Engine ends it, under the caps."""
        client = None
        response = None
        try:
            client = self._client()
            response = client.get(
                f"{client.base_url}/v{client.api_version}/containers/"
                f"{quote(follower.container, safe='')}/logs",
                params={"follow": 1, "stdout": 1, "stderr": 1, "tail": follower.lines},
                stream=True, timeout=(10, None))  # a quiet container sends nothing for long
            follower.answered_ns = time.time_ns()
            follower._socket = _socket_of(response)
            if follower._stop:
                return
            response.raise_for_status()
            while not follower._stop:
                chunk = response.raw.read1(CHUNK)
                if not chunk:
                    follower.complete = not follower._stop
                    break
                with self._lock:
                    if follower._stop:  # dropped meanwhile: its bytes count no more
                        break
                    follower.tail.feed(chunk)
                    self._held += len(follower.tail) - follower.counted
                    follower.counted = len(follower.tail)
                    if self._held > self.max_held:
                        follower.broken = "overflow"
                        self.counts["overflow"] += 1
                        self._release_locked(follower)
                        break
        except Exception as exc:  # noqa: BLE001 - the Engine away, a 404, a cut stream
            if not follower._stop:
                follower.broken = f"failed: {type(exc).__name__}"
                with self._lock:
                    self.counts["failed"] += 1
                logger.debug("following the logs of container %s failed (%s)",
                             follower.container[:12], exc)
        finally:
            follower._socket = None
            if response is not None:
                response.close()
            if client is not None:
                client.close()
            with self._lock:
                if follower.broken:
                    self._release_locked(follower)
                follower.ended_at = self._clock()
                follower.ended_ns = time.time_ns()
            follower.ended.set()
            with self._lock:  # one added before ended was set is in this copy
                watchers = list(follower.watchers)
            for watcher in watchers:
                watcher.set()

    @property
    def held(self) -> int:
        """Log bytes the followers hold now (an ended one's until its tail is taken or
        dropped)."""
        with self._lock:
            self._expire_locked()
            return self._held

    def followed(self) -> int:
        """Containers followed now (streams open or tails held)."""
        with self._lock:
            self._expire_locked()
            return len(self._live) + len({id(f) for f, _, _ in self._claimed.values()})

    def threads(self) -> list[threading.Thread]:
        """The follower threads still running (tests: nothing leaks)."""
        with self._lock:
            followers = list(self._live.values()) + [f for f, _, _ in self._claimed.values()]
        return [f.thread for f in followers if f.thread is not None and f.thread.is_alive()]

    def close(self, wait: float = 2.0) -> None:
        """Stop every follower and wait (a little) for their threads to end."""
        with self._lock:
            self._closed = True
            followers = list(self._live.values()) + [f for f, _, _ in self._claimed.values()]
        self.drop_all()
        deadline = time.monotonic() + wait
        for follower in followers:
            if follower.thread is not None:
                follower.thread.join(max(0.0, deadline - time.monotonic()))

    def collect(self) -> Iterator[Metric]:
        """The followers' metrics, read at scrape time."""
        yield GaugeMetricFamily("eventd_docker_log_followers",
                                "containers whose logs are followed for enrich: logs now",
                                value=self.followed())
        yield GaugeMetricFamily("eventd_docker_log_follow_bytes",
                                "log bytes the followers hold now", value=self.held)
        family = CounterMetricFamily("eventd_docker_log_follows",
                                     "log followers by outcome", labels=("outcome",))
        with self._lock:
            counts = dict(self.counts)
        for outcome in OUTCOMES:
            family.add_metric((outcome,), counts[outcome])
        yield family
