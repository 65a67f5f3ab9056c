"""The pipeline: the store, the action kinds, the dispatcher and the engine, built together.

`build_pipeline(settings)` is the one place that opens the store (by name, through the
stores registry) and wires it to the engine, the dispatcher and the action kinds; the
daemon, `replay` and `deadletter retry --now` all run what it builds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventd.actions import ACTIONS, resolve
from eventd.actions.base import ActionContext, ActionKind
from eventd.alerts.wiring import Alerting
from eventd.dedupe import DedupeSaver
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.limits import TargetLimiter
from eventd.engine import Engine
from eventd.loopguard import LoopGuard
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.ruleset.diagnostics import DOCKERCLOUD, Vocabulary
from eventd.settings import Settings
from eventd.sources.dockercloud.action_waiter import ActionWaiter
from eventd.sources.dockercloud.auth import Credentials
from eventd.sources.dockercloud.enrich import Enricher
from eventd.sources.dockercloud.rest import RestClient
from eventd.stores import open_store
from eventd.stores.backpressure import WaitingThrottles
from eventd.stores.base import CallLimits, Observed, Store

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

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
            close_part(kind, self.metrics)
        close_part(self.rest, self.metrics)
        self.dedupe.close()
        close_part(self.store, self.metrics)
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
                          tls=settings.tls, reconnection_interval=env_float(
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


def close_part(closeable: Any, metrics: Metrics) -> None:
    """Close one part at shutdown; a failure is reported and the rest still close."""
    if closeable is None:
        return
    try:
        closeable.close()
    except Exception as exc:  # noqa: BLE001
        report_internal_error("shutdown", exc, metrics)


def env_float(value: str | None, default: float) -> float:
    """A float from an environment value; `default` when unset or not a number."""
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default
