"""The daemon: wires stream -> engine -> dispatcher -> actions, and owns every thread.

    StreamConsumer (thread "stream-<namespace>", one per namespace consumed) --batches-->
        bounded queue --> Engine (thread "engine")
        --> Dispatcher (one queue + worker per target) --> action kinds

With a shared (Redis) store the process is one replica of a cluster: the Coordinator
(threads "cluster", "cluster-listen") decides which namespaces' streams it consumes.

The reader never waits on actions: it only blocks when the engine's queue is full
(backpressure, never a drop). `stop()` stops reading first, lets the engine drain what
was received and the dispatcher finish or keep (spool) what was accepted, within the
shutdown timeout.

`build_pipeline(settings)` is the one place that opens the store (by name, through the
stores registry) and wires it to the engine, the dispatcher and the action kinds; the
daemon, `replay` and `deadletter retry --now` all run what it builds.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventd.actions import ACTIONS, resolve
from eventd.actions.base import ActionContext, ActionJob, ActionKind
from eventd.alerts.wiring import Alerting
from eventd.cluster.connection import is_cluster_store
from eventd.cluster.metrics import ClusterMetrics
from eventd.cluster.progress import Tracker
from eventd.cluster.streams import Streams, fenced
from eventd.dedupe import DedupeSaver
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.limits import TargetLimiter
from eventd.engine import Engine
from eventd.errors import AuthRejected, RuleError
from eventd.events import Received
from eventd.handoff import EventQueue
from eventd.hooks import hooks
from eventd.loopguard import LoopGuard
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.ruleset.diagnostics import DOCKERCLOUD, Vocabulary
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.sources.base import ConsumerLoop
from eventd.sources.dockercloud.action_waiter import ActionWaiter
from eventd.sources.dockercloud.auth import Credentials
from eventd.sources.dockercloud.backfill import Backfiller
from eventd.sources.dockercloud.enrich import Enricher
from eventd.sources.dockercloud.namespaces import label, tagging
from eventd.sources.dockercloud.recorder import Recorder
from eventd.sources.dockercloud.rest import RestClient
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions
from eventd.stores import open_store
from eventd.stores.backpressure import WaitingThrottles
from eventd.stores.base import CallLimits, Observed, Store

if TYPE_CHECKING:
    from eventd.cluster.coordinator import Coordinator

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_AUTH = 3

_STOP = object()

#: where the sample audit rule writes when EVENTD_AUDIT_PATH is not set: inside the state
#: directory (private), not a `./state/` folder wherever eventd was started.
AUDIT_FILE = "audit.jsonl"


@dataclass
class Pipeline:
    """The store, the de-dup window's saver, the action kinds, the dispatcher and (when rules
    were given) the engine, built together and closed together."""

    settings: Settings
    metrics: Metrics
    store: Store
    dedupe: DedupeSaver
    context: ActionContext
    kinds: dict[str, ActionKind]
    dispatcher: Dispatcher
    engine: Engine | None
    rest: RestClient | None
    loop_guard: LoopGuard
    action_waiter: ActionWaiter
    alerts: Alerting | None = None

    def start(self, resume: bool = True) -> None:
        """Resume the spool (unless told not to: a cluster's replica), start saving the de-dup
        window and re-sending firing alerts."""
        self.dispatcher.start(resume)
        self.dedupe.start()
        if self.alerts is not None:
            self.alerts.ticker.start()

    def close(self, timeout: float) -> int:
        """Stop delivering within `timeout`, close kinds and clients, save the de-dup window,
        close the store; how many accepted actions stay in the spool."""
        left = self.dispatcher.close(timeout)
        if self.alerts is not None:
            self.alerts.ticker.close()
        for kind in self.kinds.values():
            _close(kind, self.metrics)
        _close(self.rest, self.metrics)
        self.dedupe.close()
        _close(self.store, self.metrics)
        return left


def build_pipeline(settings: Settings, *, metrics: Metrics, credentials: Credentials | None,
                   environ: Mapping[str, str], ruleset: Any = None,
                   stopping: threading.Event | None = None, store: Store | None = None,
                   kinds: Iterable[str] | None = None, exclusive: bool = True) -> Pipeline:
    """Open the store `settings` name (unless given) and wire everything that runs on it.

    `exclusive`: this process delivers the spool, so it takes the state directory (a
    StateDirError names the process holding it). `kinds`: the action kinds to build (all by
    default). Without `ruleset` there is no engine (delivering a spool needs none).
    """
    if store is None:
        store = open_store(settings, exclusive=exclusive)
    try:
        observe_store(store, metrics)
        rest = RestClient(settings.rest_host, credentials, user_agent=settings.user_agent,
                          tls=settings.tls, reconnection_interval=_float(
                              environ.get("DOCKERCLOUD_RECONNECTION_INTERVAL"), -1.0)) \
            if credentials is not None else None
        shared = store if isinstance(store, CallLimits) else None  # replicas share both guards
        loop_guard, action_waiter = LoopGuard(shared=shared, stopping=stopping), ActionWaiter()
        context = ActionContext(
            settings=settings, metrics=metrics, credentials=credentials, rest=rest,
            state_dir=settings.state_dir, stopping=stopping or threading.Event(),
            loop_guard=loop_guard, action_waiter=action_waiter,
            limiter=TargetLimiter(shared=shared) if shared is not None else None)
        built: dict[str, ActionKind] = {name: resolve(name)(context)
                                        for name in (ACTIONS if kinds is None else kinds)}
        dispatcher = Dispatcher(context, store, built)
        dedupe = DedupeSaver.load(store, settings.dedupe_window)
        alerts = None if ruleset is None else Alerting.build(
            settings, store, dispatcher.submit, metrics, built, context.stopping)
        engine = None if ruleset is None else Engine(
            ruleset, alerts.book.submit if alerts is not None else dispatcher.submit, built,
            WaitingThrottles(store, context.stopping), metrics,
            enricher=_enricher(settings, rest), loop_guard=loop_guard,
            action_waiter=action_waiter, max_event_age=settings.max_event_age,
            submit_many=dispatcher.submit_many, dedupe=dedupe.window,
            grouper=alerts.grouper if alerts is not None else None)
        if alerts is not None and engine is not None:
            alerts.serve(engine)
    except BaseException:
        store.close()
        raise
    return Pipeline(settings, metrics, store, dedupe, context, built, dispatcher, engine, rest,
                    loop_guard, action_waiter, alerts)


def observe_store(store: Store, metrics: Metrics) -> None:
    """eventd_store_up and eventd_store_errors_total{op} for a store that reports them."""
    if isinstance(store, Observed):
        errors = metrics.store_errors
        store.observe(lambda op: errors.labels(op=op).inc(), metrics.store_up.set)


def _enricher(settings: Settings, rest: RestClient | None) -> Any:
    """What `enrich: resource` asks: the Engine (docker source) or the REST API (dockercloud)."""
    if settings.source == "docker":
        from functools import partial

        from eventd.sources.docker.client import make_client
        from eventd.sources.docker.enrich import DockerEnricher

        return DockerEnricher(partial(make_client, settings))
    return Enricher(rest) if rest is not None else None


def rule_vocabulary(source: str) -> Vocabulary:
    """What the source's events hold, for the rule checker's typo warnings."""
    if source == "docker":
        from eventd.sources.docker.vocabulary import VOCABULARY

        return Vocabulary(**VOCABULARY)  # type: ignore[arg-type]
    return DOCKERCLOUD


def rules_environ(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment rules are interpolated from: EVENTD_AUDIT_PATH defaults to a file in
    the state directory."""
    env = dict(environ)
    if not env.get("EVENTD_AUDIT_PATH"):
        env["EVENTD_AUDIT_PATH"] = str(settings.state_dir / AUDIT_FILE)
    return env


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
        self._threads: list[threading.Thread] = []
        self._rules_loaded = False
        self._health: tuple[Any, Any] | None = None
        self._stop_lock = threading.Lock()
        self._started_at = time.time()
        self.coordinator: Coordinator | None = None
        self.tracker: Tracker | None = None

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
            _close(getattr(self, "recorder", None), self.metrics)
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
                settings=settings, sink=self._sink, metrics=self.metrics, stopping=self.stopping,
                credentials=self.credentials, rest=self.rest, recorder=self.recorder))
        self.streams = Streams(self._new_consumer, self._stream_loop)
        names = [label(ns) for ns in self._namespaces()]
        self.cluster_metrics = ClusterMetrics(self.metrics.registry, names)
        self.metrics.source_info.labels(source=settings.source).set(1)
        # A replica of a cluster resumes the shared spool when it takes a stream from another
        # (Coordinator's on_takeover), not at start: the others may be delivering it now.
        pipeline.start(resume=not is_cluster_store(settings.store))
        if settings.metrics_addr is not None:
            from eventd.ops.health import serve

            host, port = settings.metrics_addr
            self._health = serve(host, port, self.metrics.registry, self.ready)
            self.health_port = self._health[0].server_port
            log.info("metrics and health on http://%s:%d/ (/metrics, /healthz, /readyz)",
                     host, self.health_port)
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # GC's full passes, which otherwise cost more per event the larger the rule set.
        gc.freeze()
        if is_cluster_store(settings.store):  # before the engine starts: it reports progress
            self.tracker = Tracker()
        self._spawn("engine", self._engine_loop)
        self._start_streams()
        if self.credentials is None:
            log.info("eventd started: %d rules, source %s (%s), state in %s", len(ruleset),
                     settings.source, self.consumer.describe(), settings.state_dir)
        else:
            log.info("eventd started: %d rules, stream %s, REST %s, credentials from %s, "
                     "state in %s", len(ruleset), settings.stream_url if not settings.namespaces
                     else f"{settings.stream_host} (namespaces {', '.join(settings.namespaces)})",
                     settings.rest_host, self.credentials.source, settings.state_dir)

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
            on_takeover=self.dispatcher.resume)
        self.coordinator.start()

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

            def track(batch: list[Received]) -> None:
                accepted(batch)
                tracker.received(batch)

            sink = fenced(track, fence, lambda: coordinator.lease_lost(name), self.metrics)
        return StreamConsumer(
            url=self.settings.stream_url_for(namespace), credentials=credentials, sink=sink,
            metrics=self.metrics, stopping=self.stopping,
            options=StreamOptions.from_settings(self.settings), recorder=self.recorder,
            backfill=Backfiller(rest, sink, self.metrics))

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
            if left:
                log.warning("%d accepted actions not finished; they stay in the spool for the next start",
                            left)
            _close(self.recorder, self.metrics)
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
            log.error("rule reload failed; keeping the %d rules in force:\n%s",
                      len(self.engine.rules), "\n".join(str(p) for p in exc.problems) or exc)
            hooks.on_reloaded(False, len(self.engine.rules))
            return False
        self.engine.swap_rules(ruleset)
        self.metrics.rules_loaded_now([rule.name for rule in ruleset.rules])
        self.metrics.rules_reload_success.set(1)
        self.metrics.rules_reloads.labels(result="success").inc()
        log.info("rules reloaded: %d rules", len(ruleset))
        hooks.on_reloaded(True, len(ruleset))
        return True

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Readiness: connected to the stream, rules loaded, spool writable."""
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
        return all(v in ("ok", "standby") for v in checks.values()), checks

    def wait_idle(self, timeout: float) -> bool:
        """True once everything received was processed and every accepted action is done."""
        deadline = time.monotonic() + timeout
        self._queue.join(timeout)
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
        while True:
            batch = get()
            try:
                if batch is _STOP:
                    return
                process(batch)
                if tracker is not None:
                    tracker.processed(batch)
            finally:
                done()

    def _sink(self, batch: list[Received]) -> None:
        self._put(batch, len(batch))

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
        self.metrics.rules_loaded_now([rule.name for rule in ruleset.rules])
        self.metrics.rules_reload_success.set(1)
        return ruleset

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _thread(self, name: str) -> threading.Thread | None:
        return next((t for t in self._threads if t.name == name), None)


class _NotConsuming:
    """Stands for the stream consumer while this replica consumes none (a standby)."""

    connected = False

    def close(self) -> None:
        """Nothing to close."""


def _close(closeable: Any, metrics: Metrics) -> None:
    """Close one part at shutdown; a failure is reported and the rest still close."""
    if closeable is None:
        return
    try:
        closeable.close()
    except Exception as exc:  # noqa: BLE001
        report_internal_error("shutdown", exc, metrics)


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default
