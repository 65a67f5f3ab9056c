"""The daemon: wires stream -> engine -> dispatcher -> actions, and owns every thread.

    StreamConsumer (thread "stream") --batches--> bounded queue --> Engine (thread "engine")
        --> Dispatcher (one queue + worker per target) --> action kinds

The reader never waits on actions: it only blocks when the engine's queue is full
(backpressure, never a drop). `stop()` stops reading first, lets the engine drain what
was received and the dispatcher finish or keep (spool) what was accepted, within the
shutdown timeout.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eventd.actions import ACTIONS, resolve
from eventd.actions.base import ActionContext, ActionJob
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.guards import LoopGuard
from eventd.engine import Engine
from eventd.errors import AuthRejected, RuleError
from eventd.events import Received
from eventd.handoff import EventQueue
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.sources.dockercloud.action_waiter import ActionWaiter
from eventd.sources.dockercloud.auth import Credentials
from eventd.sources.dockercloud.backfill import Backfiller
from eventd.sources.dockercloud.enrich import Enricher
from eventd.sources.dockercloud.recorder import Recorder
from eventd.sources.dockercloud.rest import RestClient
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions
from eventd.stores.sqlite import SqliteStore

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_AUTH = 3

_STOP = object()


class Daemon:
    """One running eventd: start(), then wait() or stop(); reload() on SIGHUP."""

    def __init__(self, settings: Settings, credentials: Credentials,
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

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Load rules (RuleError if invalid), open the state, start every thread."""
        settings = self.settings
        ruleset = self._load_rules()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(settings.state_dir, synchronous=settings.spool_sync,
                                 dedupe_window=settings.dedupe_window)
        self.rest = RestClient(settings.rest_host, self.credentials, user_agent=settings.user_agent,
                               reconnection_interval=_float(
                                   self.environ.get("DOCKERCLOUD_RECONNECTION_INTERVAL"), -1.0))
        self.loop_guard = LoopGuard()
        self.action_waiter = ActionWaiter()
        context = ActionContext(
            settings=settings, metrics=self.metrics, credentials=self.credentials, rest=self.rest,
            state_dir=settings.state_dir, stopping=self.stopping,
            extras={"loop_guard": self.loop_guard, "action_waiter": self.action_waiter})
        self.kinds = {name: resolve(name)(context) for name in ACTIONS}
        self.dispatcher = Dispatcher(context, self.store, self.kinds)
        self.engine = Engine(ruleset, self._submit, self.kinds, self.store, self.metrics,
                             enricher=Enricher(self.rest), loop_guard=self.loop_guard,
                             action_waiter=self.action_waiter,
                             max_event_age=settings.max_event_age,
                             submit_many=self.dispatcher.submit_many)
        self.recorder = Recorder(settings.record) if settings.record else None
        self.consumer = StreamConsumer(
            url=settings.stream_url, credentials=self.credentials, sink=self._sink,
            metrics=self.metrics, stopping=self.stopping,
            options=StreamOptions.from_settings(settings), recorder=self.recorder,
            backfill=Backfiller(self.rest, self._sink, self.metrics))
        self.dispatcher.start()
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # GC's full passes, which otherwise cost more per event the larger the rule set.
        gc.freeze()
        self._spawn("engine", self._engine_loop)
        self._spawn("stream", self._stream_loop)
        if settings.metrics_addr is not None:
            from eventd.ops.health import serve

            host, port = settings.metrics_addr
            self._health = serve(host, port, self.metrics.registry, self.ready)
            self.health_port = self._health[0].server_port
            log.info("metrics and health on http://%s:%d/ (/metrics, /healthz, /readyz)",
                     host, self.health_port)
        log.info("eventd started: %d rules, stream %s, REST %s, credentials from %s, state in %s",
                 len(ruleset), settings.stream_url, settings.rest_host, self.credentials.source,
                 settings.state_dir)

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
            self.consumer.close()  # sends the close frame; aborts a handshake in flight
            stream = self._thread("stream")
            if stream is not None:
                stream.join(max(0.1, deadline - time.monotonic()))
            self._put(_STOP)
            engine = self._thread("engine")
            if engine is not None:
                engine.join(max(0.1, deadline - time.monotonic()))
            left = self.dispatcher.close(max(0.1, deadline - time.monotonic()))
            if left:
                log.warning("%d accepted actions not finished; they stay in the spool for the next start",
                            left)
            for closeable in (self.recorder, self.rest, self.store):
                if closeable is not None:
                    try:
                        closeable.close()
                    except Exception as exc:  # noqa: BLE001
                        report_internal_error("shutdown", exc, self.metrics)
            for kind in self.kinds.values():
                try:
                    kind.close()
                except Exception as exc:  # noqa: BLE001
                    report_internal_error("shutdown", exc, self.metrics)
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
            ruleset = load_rules(self.settings.rules, self.environ)
        except RuleError as exc:
            self.metrics.rules_reload_success.set(0)
            self.metrics.rules_reloads.labels(result="failure").inc()
            log.error("rule reload failed; keeping the %d rules in force:\n%s",
                      len(self.engine.rules), "\n".join(str(p) for p in exc.problems) or exc)
            return False
        self.engine.swap_rules(ruleset)
        self.metrics.rules_loaded_now([rule.name for rule in ruleset.rules])
        self.metrics.rules_reload_success.set(1)
        self.metrics.rules_reloads.labels(result="success").inc()
        log.info("rules reloaded: %d rules", len(ruleset))
        return True

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Readiness: connected to the stream, rules loaded, spool writable."""
        checks = {
            "stream": "ok" if self.consumer.connected else "disconnected",
            "rules": "ok" if self._rules_loaded else "not loaded",
            "spool": "ok" if self._spool_writable() else "not writable",
        }
        return all(v == "ok" for v in checks.values()), checks

    def wait_idle(self, timeout: float) -> bool:
        """True once everything received was processed and every accepted action is done."""
        deadline = time.monotonic() + timeout
        self._queue.join(timeout)
        return self.dispatcher.wait_idle(max(0.0, deadline - time.monotonic()))

    # -- threads ---------------------------------------------------------------------
    def _stream_loop(self) -> None:
        try:
            self.consumer.run()
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
        while True:
            batch = get()
            try:
                if batch is _STOP:
                    return
                process(batch)
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
        ruleset = load_rules(self.settings.rules, self.environ)
        self._rules_loaded = True
        self.metrics.rules_loaded_now([rule.name for rule in ruleset.rules])
        self.metrics.rules_reload_success.set(1)
        return ruleset

    def _spool_writable(self) -> bool:
        path = Path(self.settings.state_dir)
        try:
            probe = path / ".ready-probe"
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _thread(self, name: str) -> threading.Thread | None:
        return next((t for t in self._threads if t.name == name), None)


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default
