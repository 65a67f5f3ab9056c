"""One stream consumer thread per namespace this process consumes, started and stopped singly.

A single process consumes every configured namespace; a replica of a cluster only those it
holds a lease on, so a consumer may be stopped (lease lost, rebalanced) while others run.
`fenced` is the sink guard of a leased stream: once the lease may have passed to another
replica, not one more event goes through (they are counted as dropped), and the consumer is
told to stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eventd.clients.dockercloud.namespaces import label
from eventd.events import Received
from eventd.ops.metrics import Metrics
from eventd.sources.base import ConsumerLoop
from eventd.sources.dockercloud.stream import StreamConsumer

logger = logging.getLogger(__name__)

Sink = Callable[[Sequence[Received]], None]
#: builds the consumer of one namespace (None: the user's own) whose events go through `fence`
Factory = Callable[[str | None, Callable[[], bool] | None], ConsumerLoop]
Runner = Callable[[ConsumerLoop], None]


@dataclass
class _Running:
    namespace: str | None
    consumer: ConsumerLoop
    thread: threading.Thread


class Streams:
    """The stream consumers running in this process, by namespace label."""

    def __init__(self, factory: Factory, runner: Runner) -> None:
        self._factory = factory
        self._runner = runner
        self._running: dict[str, _Running] = {}
        #: consumers stopped while their reader was held up in its sink (a stalled store):
        #: their thread ends when the sink lets go
        self._held_up: list[_Running] = []
        self._lock = threading.Lock()

    def start(self, namespace: str | None, since: float | None = None,
              fence: Callable[[], bool] | None = None) -> ConsumerLoop:
        """Consume `namespace` on a new thread; `since`: the gap began then (another replica's
        last event), so announce it and backfill it on connecting."""
        consumer = self._factory(namespace, fence)
        if since is not None and isinstance(consumer, StreamConsumer):
            consumer.resume_after(since)
        name = label(namespace)
        thread = threading.Thread(target=self._runner, args=(consumer,), daemon=True,
                                  name=f"stream-{name}")
        with self._lock:
            self._running[name] = _Running(namespace, consumer, thread)
        thread.start()
        return consumer

    def stop(self, name: str, timeout: float) -> bool:
        """Stop consuming one namespace (close frame, join); False if its consumer is still
        running after `timeout` (its connection may still be open)."""
        with self._lock:
            running = self._running.pop(name, None)
        if running is None:
            return True
        running.consumer.close()
        running.thread.join(max(0.1, timeout))
        if running.thread.is_alive() and running.consumer.held_for() > 0:
            with self._lock:
                self._held_up.append(running)
        if running.thread.is_alive():
            logger.warning("stream consumer of namespace %s did not stop within %.1f s", name,
                           timeout)
            return False
        return True

    def close(self, names: list[str]) -> None:
        """Tell these namespaces' consumers to stop (close frames) without waiting."""
        with self._lock:
            running = [self._running[n] for n in names if n in self._running]
        for item in running:
            item.consumer.close()

    def close_all(self) -> None:
        """Tell every consumer to stop (close frames) without waiting."""
        with self._lock:
            running = list(self._running.values())
        for item in running:
            item.consumer.close()

    def stop_all(self, timeout: float) -> set[str]:
        """Stop every consumer, joined within `timeout` in all; the namespaces whose consumer
        is still running then."""
        self.close_all()
        deadline = time.monotonic() + timeout
        with self._lock:
            running, self._running = dict(self._running), {}
        for item in running.values():
            item.thread.join(max(0.1, deadline - time.monotonic()))
        return {name for name, item in running.items() if item.thread.is_alive()}

    def held(self) -> list[str]:
        """The namespace labels being consumed, sorted."""
        with self._lock:
            return sorted(self._running)

    def consumers(self) -> list[ConsumerLoop]:
        """The consumers running now."""
        with self._lock:
            return [item.consumer for item in self._running.values()]

    def alive(self, name: str) -> bool:
        """Whether the consumer of this namespace is still running."""
        with self._lock:
            running = self._running.get(name)
        return running is not None and running.thread.is_alive()

    def down_for(self, name: str) -> float:
        """Seconds the consumer of this namespace has been without a connection (0: none runs)."""
        with self._lock:
            running = self._running.get(name)
        return 0.0 if running is None else running.consumer.down_for()

    def held_for(self, name: str) -> float:
        """Seconds the reader of this namespace has been held up in its sink (0: reading)."""
        with self._lock:
            running = self._running.get(name)
        return 0.0 if running is None else running.consumer.held_for()

    def held_up(self) -> bool:
        """Whether a consumer stopped while held up in its sink is still held there (the
        store that held it has not let go yet)."""
        with self._lock:
            self._held_up = [item for item in self._held_up
                             if item.thread.is_alive() and item.consumer.held_for() > 0]
            return bool(self._held_up)

    def status(self) -> str:
        """Readiness of the streams: `ok` (all connected), `standby` (none held: another
        replica consumes them) or `disconnected`."""
        consumers = self.consumers()
        if not consumers:
            return "standby"
        return "ok" if all(c.connected for c in consumers) else "disconnected"


def fenced(sink: Sink, fence: Callable[[], bool], on_lost: Callable[[], None],
           metrics: Metrics) -> Sink:
    """A sink that lets events through only while `fence()` holds (the lease is still ours)."""
    dropped = metrics.dropped.labels(kind="event", reason="lease_lost")

    def put(batch: Sequence[Received]) -> None:
        if not fence():
            dropped.inc(len(batch))
            on_lost()
            return
        sink(batch)

    return put
