"""The daemon: wires stream -> engine -> dispatcher -> actions, and owns every thread.

    StreamConsumer (thread "stream-<namespace>", one per namespace consumed) --batches-->
        bounded queue --> Engine (thread "engine")
        --> Dispatcher (one queue + worker per target) --> action kinds

With a shared (Redis) store the process is one replica of a cluster: the Coordinator
(threads "cluster", "cluster-listen") decides which namespaces' streams it consumes.

The reader never waits on actions: it only blocks when the engine's queue is full
(backpressure, never a drop). A read that found a backlog (at least `INLINE_BATCH` events:
the stream is busy, and the reader would soon block on the full queue anyway) waits until
the engine is idle (nothing queued, nothing in process) and is processed on the reader's
own thread, in turn: handing it over costs two thread wake-ups and the GIL passed back and forth per
batch, and the engine meets the events in another core's cache (bench/wallprobe.py).
`stop()` stops reading first, lets the engine drain what was received and the dispatcher
finish or keep (spool) what was accepted, within the shutdown timeout.

What runs is built by `eventd.pipeline.build_pipeline(settings)`, the one place that opens
the store and wires it to the engine, the dispatcher and the action kinds.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from eventd.attachments import LOGS_BUDGET
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.namespaces import label, tagging
from eventd.cluster.connection import is_cluster_store
from eventd.cluster.metrics import ClusterMetrics
from eventd.cluster.progress import Tracker
from eventd.cluster.streams import Streams, fenced
from eventd.errors import AuthRejected, ConfigError, RuleError
from eventd.events import Received
from eventd.handoff import EventQueue
from eventd.hooks import hooks
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.pipeline import (
    Pipeline,
    build_pipeline,
    close_part,
    rule_vocabulary,
    rules_environ,
)
from eventd.records import ActionJob
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.sources.base import ConsumerLoop
from eventd.sources.dockercloud.backfill import Backfiller, backfill_backoff
from eventd.sources.dockercloud.recorder import Recorder
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions
from eventd.stores.backpressure import waiting_for

if TYPE_CHECKING:
    from eventd.cluster.coordinator import Coordinator

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_AUTH = 3

_STOP = object()
_WAKE = object()  # logs the engine waited for are in (Engine.resume_parked)
#: a batch at least this big is processed on the reader's thread when the engine is idle
INLINE_BATCH = 32


def count(number: int, thing: str) -> str:
    """`1 rule`, `2 rules`: log lines that read as written."""
    return f"{number} {thing}{'' if number == 1 else 's'}"


def state_where(settings: Settings) -> str:
    """Where the state is kept, for the start line (`--store memory` keeps it nowhere)."""
    if settings.store == "sqlite":
        return f"state in {settings.state_dir}"
    if settings.store == "memory":
        return "state in memory only (--store memory: nothing kept across a restart)"
    from eventd.stores.redis.connect import parse  # only a store URL gets here

    try:
        where = parse(settings.store, settings.store_password).safe
    except ConfigError:
        where = "the store"
    return f"state in {where} (cluster {settings.cluster})"


class Daemon:
    """One running eventd: start(), then wait() or stop(); reload() on SIGHUP."""

    def __init__(self, settings: Settings, credentials: Credentials | None,
                 environ: Mapping[str, str], metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.credentials = credentials
        self.environ = dict(environ)
        self.metrics = metrics if metrics is not None else Metrics()
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.exit_code = EXIT_OK
        self.health_port: int | None = None
        self._queue = EventQueue(settings.queue_size)
        #: held while a batch is processed, on the engine's thread or inline on a reader's
        self._engine_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._rules_loaded = False
        self._health: tuple[Any, Any] | None = None
        self._stop_lock = threading.Lock()
        self._started_at = time.time()
        self.coordinator: Coordinator | None = None
        self.tracker: Tracker | None = None
        #: the last rule (re)load, for the console: whether it worked, when, its problems
        self.last_reload: dict[str, Any] = {"ok": False, "at": None, "problems": []}
        self.console: Any = None
        #: the Engine source's sink that follows containers' logs (primed after each reload)
        self._prefetching: Any = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Load rules (RuleError if invalid), open the state, start every thread.

        ConfigError (StateDirError among them) if the state cannot be used.
        """
        settings = self.settings
        ruleset = self._load_rules()
        self.pipeline = pipeline = build_pipeline(
            settings, metrics=self.metrics, credentials=self.credentials, environ=self.environ,
            ruleset=ruleset, stopping=self.stopping,
            # A cluster's replicas share the store: a lease per stream, not one holder for all.
            exclusive=not is_cluster_store(settings.store))
        try:
            self._start(pipeline, ruleset)
        except BaseException:  # nothing spawned yet: close what was opened, free the state
            self.stopping.set()
            pipeline.close(1.0)
            close_part(getattr(self, "recorder", None), self.metrics)
            self.stopped.set()  # a later stop() has nothing left to do
            raise

    def _start(self, pipeline: Pipeline, ruleset: Any) -> None:
        settings = self.settings
        self.store, self.rest, self.kinds = pipeline.store, pipeline.rest, pipeline.kinds
        self.loop_guard, self.action_waiter = pipeline.loop_guard, pipeline.action_waiter
        self.dispatcher = pipeline.dispatcher
        assert pipeline.engine is not None
        self.engine = pipeline.engine
        self.recorder = Recorder(settings.record) if settings.record else None
        if settings.source != "dockercloud":
            # Another source of the registry (ConfigError: unknown, or the Engine is not there):
            # one consumer, built now so that a failure leaves nothing running.
            from eventd.sources.base import SourceContext, resolve_source

            self._source = resolve_source(settings.source)(SourceContext(
                settings=settings, sink=self._source_sink(pipeline), metrics=self.metrics,
                stopping=self.stopping,
                credentials=self.credentials, rest=self.rest, recorder=self.recorder))
        self.streams = Streams(self._new_consumer, self._stream_loop)
        names = [label(ns) for ns in self._namespaces()]
        self.cluster_metrics = ClusterMetrics(self.metrics.registry, names)
        self.metrics.source_info.labels(source=settings.source).set(1)
        # A replica of a cluster resumes the shared spool when it takes a stream from another
        # (Coordinator's on_takeover), not at start: the others may be delivering it now.
        if hasattr(self.store, "on_bad_data"):  # Redis: keys that hold garbage for long
            self.store.on_bad_data = self._fatal
        pipeline.start(resume=not is_cluster_store(settings.store))
        if settings.metrics_addr is not None:
            from eventd.ops.health import serve

            host, port = settings.metrics_addr
            self._health = serve(host, port, self.metrics.registry, self.ready,
                                 mounts=self._console(pipeline))
            self.health_port = self._health[0].server_port
            log.info("metrics and health on http://%s:%d/ (/metrics, /healthz, /readyz%s)",
                     host, self.health_port, ", the console at /ui/" if self.console else "")
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # GC's full passes, which otherwise cost more per event the larger the rule set.
        gc.freeze()
        if is_cluster_store(settings.store):  # before the engine starts: it reports progress
            self.tracker = Tracker(names)
        self.metrics.workers.resume()
        self._park_logs(pipeline)
        self._spawn("engine", self._engine_loop)
        self._start_streams()
        if self.credentials is None:
            log.info("eventd started: %s, source %s (%s), %s", count(len(ruleset), "rule"),
                     settings.source, self.consumer.describe(), state_where(settings))
        else:
            log.info("eventd started: %s, stream %s, REST %s, credentials from %s, %s",
                     count(len(ruleset), "rule"), settings.stream_url if not settings.namespaces
                     else f"{settings.stream_host} (namespaces {', '.join(settings.namespaces)})",
                     settings.rest_host, self.credentials.source, state_where(settings))

    def _park_logs(self, pipeline: Pipeline) -> None:
        """The Engine's source, on a store that keeps events waiting for logs: the engine
        waits for containers' logs off its thread (eventd.engine's park_logs), after
        processing what a crash left waiting."""
        from eventd.stores.base import ParkedEvents

        store = pipeline.store
        if self.settings.source != "docker" or not isinstance(store, ParkedEvents) \
                or is_cluster_store(self.settings.store):
            return
        self.engine.park_logs(store, lambda: self._put(_WAKE))
        self.engine.recover_parked()

    def _source_sink(self, pipeline: Pipeline) -> Callable[[Sequence[Received]], None]:
        """The engine's queue; for an enricher that can start inspects early (the Engine's),
        behind a sink that starts them as the reader sees the events that will ask, and
        follows the logs of the containers whose die a rule with `enrich: logs` could match."""
        prefetch = getattr(pipeline.enricher, "prefetch", None)
        if prefetch is None:
            return self._sink
        from eventd.sources.docker.enrich import Prefetching

        enricher = pipeline.enricher
        followers = getattr(enricher, "followers", None)
        if followers is None:
            return Prefetching(prefetch, lambda: self.engine.rules, self._sink)
        # the Engine's: containers' logs followed from their start for `enrich: logs`
        self.metrics.registry.register(followers)
        sink = Prefetching(prefetch, lambda: self.engine.rules, self._sink, follower=enricher)
        sink.prime()
        self._prefetching = sink
        return sink

    def _console(self, pipeline: Pipeline) -> list[tuple[str, Any]]:
        """The console's mounts on the metrics port (none with --ui off)."""
        if not self.settings.ui:
            return []
        from eventd.console.wiring import build_console

        # the environment rules were filled from: a secret read from <VAR>_FILE is masked too
        self.console = build_console(
            self.settings, pipeline.store, pipeline.silences,
            rules_environ(self.settings, self.environ),
            secrets=self.credentials.secrets() if self.credentials is not None else (),
            rules=lambda: self.engine.rules, reload=lambda: self.last_reload,
            resume=self.dispatcher.resume, replica=self._replica_info,
            metrics=self.metrics)
        return list(self.console.mounts())

    def _namespaces(self) -> tuple[str | None, ...]:
        """The Docker Cloud namespaces to consume, one stream each (another source: one)."""
        return self.settings.stream_namespaces if self.settings.source == "dockercloud" \
            else (None,)

    def _start_streams(self) -> None:
        """Consume every namespace here, or, with a shared store, those this replica leases."""
        settings = self.settings
        if not is_cluster_store(settings.store) or settings.source != "dockercloud":
            for namespace in self._namespaces():
                self.streams.start(namespace)
                self.cluster_metrics.lead(label(namespace), "acquired")
            return
        from eventd.cluster.connection import connect  # imports redis: only for a cluster
        from eventd.cluster.coordinator import Coordinator

        assert self.tracker is not None
        self.coordinator = Coordinator(
            connect(settings), cluster=settings.cluster,
            namespaces=settings.stream_namespaces, ttl=settings.lease_ttl, streams=self.streams,
            tracker=self.tracker, metrics=self.metrics, cluster_metrics=self.cluster_metrics,
            info=self._replica_info, max_gap=settings.max_event_age,
            on_takeover=self.dispatcher.resume, on_fatal=self._fatal,
            mac=self._heartbeat_mac(), quiesce=self.dispatcher.quiesce,
            abort=self.dispatcher.abort, store_waiting=lambda: waiting_for(self.stopping))
        # Before the first lease: only jobs of namespaces held here are sent, fenced.
        self.dispatcher.use_fence(self.coordinator.job_token, sweep=settings.lease_ttl / 3,
                                  lease=self.coordinator.job_lease)
        self.coordinator.start()

    def _heartbeat_mac(self) -> Callable[[bytes], str] | None:
        """Heartbeats are signed with the job key (the same on every replica of a cluster):
        a heartbeat written into Redis by hand cannot make a replica hand its streams over."""
        signer = self.pipeline.gate.signer
        if signer is None:
            return None
        return lambda data: signer.mac("heartbeat", data)

    def _fatal(self, message: str) -> None:
        """Stop with exit code 1 and one line saying why (what waiting cannot fix)."""
        log.error("%s; exiting with code 1", message)
        self.exit_code = 1
        threading.Thread(target=self.stop, name="stopper", daemon=True).start()

    def _new_consumer(self, namespace: str | None,
                      fence: Callable[[], bool] | None) -> ConsumerLoop:
        """The consumer of one namespace's stream, its events tagged (and fenced by a lease)."""
        if self.settings.source != "dockercloud":
            return self._source
        rest, credentials = self.rest, self.credentials
        assert rest is not None and credentials is not None  # the CLI loaded credentials
        sink = tagging(self._sink, namespace)
        tracker, coordinator = self.tracker, self.coordinator
        if fence is not None and tracker is not None and coordinator is not None:
            name, accepted = label(namespace), sink

            def track(batch: Sequence[Received]) -> None:
                accepted(batch)
                tracker.received(batch)

            sink = fenced(track, fence, lambda: coordinator.lease_lost(name), self.metrics)
        fencing = on_refused = None
        if fence is not None and coordinator is not None:
            leased = coordinator
            fencing = leased.stream_token(label(namespace))
            on_refused = lambda: leased.refused(label(namespace))  # noqa: E731
        return StreamConsumer(
            url=self.settings.stream_url_for(namespace), credentials=credentials, sink=sink,
            metrics=self.metrics, stopping=self.stopping, fencing=fencing, on_refused=on_refused,
            options=StreamOptions.from_settings(self.settings), recorder=self.recorder,
            backfill=Backfiller(rest, sink, self.metrics, stopping=self.stopping,
                                backoff=backfill_backoff(self.settings)))

    def _replica_info(self) -> dict[str, Any]:
        """What `eventd status` shows of this replica (kept in its heartbeat). Nothing here
        may wait on the store: the heartbeat renews the leases."""
        import os
        import socket

        return {"host": socket.gethostname(), "pid": os.getpid(), "started": self._started_at,
                "namespaces": self.streams.held(),
                "ready": self._rules_loaded and self.streams.status() in ("ok", "standby")}

    @property
    def consumer(self) -> Any:
        """The first stream consumer running here (or a stand-in that is not connected)."""
        consumers = self.streams.consumers() if hasattr(self, "streams") else []
        return consumers[0] if consumers else _NotConsuming()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the daemon stopped (by stop() or a fatal stream error); the exit code."""
        self.stopped.wait(timeout)
        return self.exit_code

    def stop(self, timeout: float | None = None) -> int:
        """Stop reading, drain the engine, let actions finish or stay spooled; close everything."""
        with self._stop_lock:
            if self.stopped.is_set():
                return self.exit_code
            deadline = time.monotonic() + (self.settings.shutdown_timeout if timeout is None else timeout)
            log.info("stopping: finishing in-flight work (at most %.0f s)",
                     max(0.0, deadline - time.monotonic()))
            self.stopping.set()
            self.metrics.workers.stop()
            streams = getattr(self, "streams", None)
            if self.coordinator is not None:  # stop consuming, then free the leases at once
                self.coordinator.stop(max(0.1, deadline - time.monotonic()))
            elif streams is not None:  # close frames; aborts handshakes in flight
                streams.stop_all(max(0.1, deadline - time.monotonic()))
            self._put(_STOP)
            engine = self._thread("engine")
            if engine is not None:
                engine.join(max(0.1, deadline - time.monotonic()))
            left = self.pipeline.close(max(0.1, deadline - time.monotonic()))
            if left and self.settings.store == "memory":
                log.warning("%s not finished, and lost: --store memory keeps nothing across a "
                            "restart", count(left, "accepted action"))
            elif left:
                log.warning("%s not finished; they stay in the spool for the next start",
                            count(left, "accepted action"))
            close_part(self.recorder, self.metrics)
            if self.console is not None:
                self.console.close()
            if self._health is not None:
                from eventd.ops.health import shutdown

                shutdown(*self._health, timeout=1.0)
            self.metrics.stream_connected.set(0)
            log.info("stopped")
            self.stopped.set()
            return self.exit_code

    def reload(self) -> bool:
        """Reload rules; an invalid set keeps the old one running and says why."""
        try:
            ruleset = load_rules(self.settings.rules, rules_environ(self.settings, self.environ),
                                 rule_vocabulary(self.settings.source))
        except RuleError as exc:
            self.metrics.rules_reload_success.set(0)
            self.metrics.rules_reloads.labels(result="failure").inc()
            problems = [str(p) for p in exc.problems] or [str(exc)]
            log.error("rule reload failed (%s); keeping the %s in force", count(len(problems),
                      "problem"), count(len(self.engine.rules), "rule"))
            for problem in problems:  # one line each: a log line never holds a line break
                log.error("rule reload: %s", problem)
            self.last_reload = {"ok": False, "at": time.time(), "problems": problems}
            hooks.on_reloaded(False, len(self.engine.rules))
            return False
        except Exception as exc:  # noqa: BLE001  (a reload never stops the daemon)
            self.metrics.rules_reload_success.set(0)
            self.metrics.rules_reloads.labels(result="failure").inc()
            report_internal_error("reload", exc, self.metrics)
            self.last_reload = {"ok": False, "at": time.time(),
                                "problems": [f"{type(exc).__name__}: {str(exc)[:200]}"]}
            hooks.on_reloaded(False, len(self.engine.rules))
            return False
        self.pipeline.use_rules(ruleset)  # first: the new rules' jobs must find their grants
        self.engine.swap_rules(ruleset)
        if self._prefetching is not None:  # followers chosen by the old rules stop now
            self._prefetching.prime()
        self.metrics.rules_loaded_now([rule.name for rule in ruleset.rules])
        self.metrics.rules_reload_success.set(1)
        self.metrics.rules_reloads.labels(result="success").inc()
        log.info("rules reloaded: %s", count(len(ruleset), "rule"))
        self.last_reload = {"ok": True, "at": time.time(), "problems": []}
        hooks.on_reloaded(True, len(ruleset))
        return True

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Readiness: connected to the stream, rules loaded, spool writable; and which
        delivery targets are failing now (named, but not making eventd unready: a dead
        webhook or database must not stall a rollout, its actions wait in the spool)."""
        stream = self.streams.status()
        store_ok = self.store.healthy()
        checks = {
            "stream": stream if stream != "standby" or self.coordinator is not None
            else "disconnected",
            "rules": "ok" if self._rules_loaded else "not loaded",
            "spool": "ok" if store_ok else "not writable",
            "store": "ok" if store_ok else "unreachable",
        }
        if self.coordinator is not None:
            checks["cluster"] = "ok" if self.coordinator.reachable else "unreachable"
        restarting = self.metrics.workers.down()
        if restarting:  # a worker died and waits to run again: its work is not being done
            checks["workers"] = "restarting: " + ", ".join(restarting)
        ready = all(v in ("ok", "standby") for v in checks.values())
        down = self.dispatcher.down_targets()
        if down:  # said, not judged: eventd is ready, its actions wait in the spool
            # (a queue names only where: a host, a database, never a path or a secret)
            checks["targets"] = "down: " + ", ".join(down[:10]) + \
                (f" and {len(down) - 10} more" if len(down) > 10 else "")
        return ready, checks

    def wait_idle(self, timeout: float) -> bool:
        """True once everything received was processed and every accepted action is done."""
        deadline = time.monotonic() + timeout
        self._queue.join(timeout)
        while self.engine.waiting and time.monotonic() < deadline:
            # events set aside for their logs: processed on a wake queued when those come
            self.stopped.wait(0.01)
            self._queue.join(max(0.0, deadline - time.monotonic()))
        return self.dispatcher.wait_idle(max(0.0, deadline - time.monotonic()))

    # -- threads ---------------------------------------------------------------------
    def _stream_loop(self, consumer: ConsumerLoop) -> None:
        try:
            consumer.run()
        except AuthRejected as exc:
            log.error("%s; exiting with code %d (not retrying: repeated bad logins lock the account)",
                      exc, EXIT_AUTH)
            self.exit_code = EXIT_AUTH
            threading.Thread(target=self.stop, name="stopper", daemon=True).start()
        except Exception as exc:  # noqa: BLE001
            report_internal_error("stream", exc, self.metrics)
            self.exit_code = 1
            threading.Thread(target=self.stop, name="stopper", daemon=True).start()

    def _engine_loop(self) -> None:
        get = self._queue.get
        done = self._queue.task_done
        process = self.engine.process_batch
        tracker = self.tracker
        lock = self._engine_lock
        while True:
            batch = get()
            try:
                if batch is _STOP:
                    with lock:  # the logs still awaited, within their budget
                        self.engine.settle_parked(LOGS_BUDGET * 2)
                    return
                if batch is _WAKE:
                    with lock:
                        self.engine.resume_parked()
                    continue
                with lock:
                    process(batch)
                    if tracker is not None:
                        tracker.processed(batch)
            finally:
                done()

    def _sink(self, batch: Sequence[Received]) -> None:
        size = len(batch)
        if size >= INLINE_BATCH:
            # A backlog: wait for the engine to finish what it has (the reader would wait on
            # the full queue soon anyway), then process this batch here, in turn.
            while not self.stopping.is_set():
                if self._queue.claim(timeout=0.5):
                    self._process_inline(batch)
                    return
        self._put(batch, size)

    def _process_inline(self, batch: Sequence[Received]) -> None:
        """Process a claimed batch on this (a reader's) thread, as the engine's would."""
        try:
            with self._engine_lock:
                self.engine.process_batch(batch)
                if self.tracker is not None:
                    self.tracker.processed(batch)
        except Exception as exc:  # noqa: BLE001 - as the engine's worker: reported, not raised
            report_internal_error("engine", exc, self.metrics)
        finally:
            self._queue.task_done()

    def _put(self, item: Any, size: int = 0) -> None:
        """Blocking put (backpressure) that still gives up once the daemon has stopped."""
        while not self._queue.put(item, size, timeout=0.5):
            if self.stopped.is_set():
                return

    def _submit(self, job: ActionJob) -> None:
        self.dispatcher.submit(job)

    # -- helpers ---------------------------------------------------------------------
    def _load_rules(self) -> Any:
        ruleset = load_rules(self.settings.rules, rules_environ(self.settings, self.environ),
                             rule_vocabulary(self.settings.source))
        self._rules_loaded = True
        self.last_reload = {"ok": True, "at": time.time(), "problems": []}
        self.metrics.rules_loaded_now([rule.name for rule in ruleset.rules])
        self.metrics.rules_reload_success.set(1)
        return ruleset

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=self.metrics.workers.run, args=(name, target),
                                  name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _thread(self, name: str) -> threading.Thread | None:
        return next((t for t in self._threads if t.name == name), None)


class _NotConsuming:
    """Stands for the stream consumer while this replica consumes none (a standby)."""

    connected = False

    def close(self) -> None:
        """Nothing to close."""
