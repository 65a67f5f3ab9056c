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
from typing import Any

from eventd.actions import ACTIONS, resolve
from eventd.actions.base import ActionContext, ActionKind
from eventd.alerts.wiring import Alerting
from eventd.attachments import Attacher
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.dedupe import DedupeSaver
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.gate import Gate, Grant, Policy, Rules
from eventd.delivery.policies import own_container_id
from eventd.delivery.signing import load_signer
from eventd.engine import Engine
from eventd.guards.calls import TargetLimiter
from eventd.guards.loop import LoopGuard
from eventd.ops.internal import report_internal_error
from eventd.ops.metrics import Metrics
from eventd.ruleset.diagnostics import DOCKERCLOUD, Vocabulary
from eventd.ruleset.templates import is_template
from eventd.settings import Settings, read_secret_files
from eventd.silences.book import SilenceBook
from eventd.sources.dockercloud.action_waiter import ActionWaiter
from eventd.sources.dockercloud.enrich import Enricher
from eventd.stores import open_store
from eventd.stores.backpressure import WaitingThrottles
from eventd.stores.base import CallLimits, EventHistory, Observed, Store

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
    gate: Gate
    alerts: Alerting | None = None
    silences: SilenceBook | None = None
    #: what `enrich: resource` and `enrich: logs` read from (the source's), or None
    enricher: Any = None
    #: what attaches logs and history (its threads that wait for logs close with it)
    attacher: Attacher | None = None

    def use_rules(self, ruleset: Any) -> None:
        """Let the gate admit what these rules can produce (at start and on every reload)."""
        self.gate.use_rules(grants(ruleset, self.kinds))

    def start(self, resume: bool = True) -> None:
        """Resume the spool (unless told not to: a cluster's replica), start saving the de-dup
        window and re-sending firing alerts."""
        self.dispatcher.start(resume)
        if self.silences is not None:
            self.silences.start()
        self.dedupe.start()
        if self.alerts is not None:
            self.alerts.ticker.start()

    def close(self, timeout: float) -> int:
        """Stop delivering within `timeout`, close kinds and clients, save the de-dup window,
        close the store; how many accepted actions stay in the spool."""
        left = self.dispatcher.close(timeout)
        if self.silences is not None:
            self.silences.close()
        if self.alerts is not None:
            self.alerts.ticker.close()
        for kind in self.kinds.values():
            close_part(kind, self.metrics)
        close_part(self.rest, self.metrics)
        if hasattr(self.enricher, "close"):  # the Engine's keeps clients open
            close_part(self.enricher, self.metrics)
        close_part(self.attacher, self.metrics)
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
        gate = build_gate(settings, metrics, credentials, built, shared=shared is not None)
        if ruleset is not None:
            gate.use_rules(grants(ruleset, built))
            preflight(ruleset, built)
        dispatcher = Dispatcher(context, store, built, gate=gate)
        dedupe = DedupeSaver.load(store, settings.dedupe_window)
        silences = None if ruleset is None else SilenceBook(store, metrics)
        alerts = None if ruleset is None else Alerting.build(
            settings, store, dispatcher.submit, metrics, built, context.stopping)
        enricher = _enricher(settings, rest)
        attacher = Attacher(enricher, store if isinstance(store, EventHistory) else None, metrics)
        engine = None if ruleset is None else Engine(
            ruleset, alerts.book.submit if alerts is not None else dispatcher.submit, built,
            WaitingThrottles(store, context.stopping), metrics,
            enricher=enricher, loop_guard=loop_guard, attacher=attacher,
            action_waiter=action_waiter, max_event_age=settings.max_event_age,
            submit_many=dispatcher.submit_many, dedupe=dedupe.window,
            grouper=alerts.grouper if alerts is not None else None, silences=silences)
        if alerts is not None and engine is not None:
            alerts.serve(engine)
        if alerts is not None:
            context.incidents = alerts.book
    except BaseException:
        store.close()
        raise
    return Pipeline(settings, metrics, store, dedupe, context, built, dispatcher, engine, rest,
                    loop_guard, action_waiter, gate, alerts, silences, enricher, attacher)


def build_gate(settings: Settings, metrics: Metrics, credentials: Credentials | None,
               kinds: Mapping[str, ActionKind], *, shared: bool) -> Gate:
    """The gate: its policy from the settings (and the credentials' user, and eventd's own
    container when the docker kind is built), its job key (eventd.delivery.signing). It knows
    no rule until `use_rules`: every job is refused until then."""
    own = own_container_id() if "docker" in kinds and not settings.self_container else None
    policy = Policy.from_settings(settings, user=credentials.account if credentials else None,
                                   own_container=own)
    signer = load_signer(job_key=settings.job_key, store=settings.store,
                         cluster=settings.cluster, state_dir=settings.state_dir,
                         credentials_header=credentials.header if credentials else None,
                         shared=shared)
    if "dockercloud" in kinds and not policy.namespaces:
        log.warning("the Docker Cloud namespace is unknown (DOCKERCLOUD_AUTH without "
                    "DOCKERCLOUD_NAMESPACE): dockercloud actions on namespaced targets will be "
                    "refused; set DOCKERCLOUD_NAMESPACE to your user or organisation name")
    return Gate(policy, metrics, signer=signer, rules={})


def preflight(ruleset: Any, kinds: Mapping[str, ActionKind]) -> None:
    """Let each kind that can check its targets before the first event do so (a postgres
    table that is missing or lacks a column: ConfigError, exit 2)."""
    wanted: dict[str, list[dict[str, Any]]] = {}
    for rule in ruleset.rules:
        for spec in rule.actions:
            if hasattr(kinds.get(spec.kind), "preflight"):
                wanted.setdefault(spec.kind, []).append(spec.options)
    for name, options in wanted.items():
        kinds[name].preflight(options)  # type: ignore[attr-defined]


#: stand-ins for a templated option when asking a kind for its queue: a queue that changes
#: with them depends on a template
_PROBES = ("http://probe-a.invalid/a", "https://probe-b.invalid:1/b")


def grants(ruleset: Any, kinds: Mapping[str, ActionKind]) -> Rules:
    """What each loaded rule's actions can produce, for the gate: the options written without
    a template, the option names, the queue when no template decides it."""
    found: dict[str, tuple[Grant, ...]] = {}
    for rule in ruleset.rules:
        items = []
        for spec in rule.actions:
            options = spec.options
            literals = {key: value for key, value in options.items() if not _templated(value)}
            kind = kinds.get(spec.kind)
            targets = set()
            for probe in _PROBES:
                filled = {key: (value if key in literals else probe)
                          for key, value in options.items()}
                try:
                    targets.add(kind.target(filled) if kind is not None else None)
                except Exception:  # noqa: BLE001 - a kind that cannot say: any queue
                    targets.add(None)
            target = targets.pop() if len(targets) == 1 else None
            items.append(Grant(spec.kind, literals, frozenset(options), target))
        found[rule.name] = tuple(items)
    return found


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_templated(v) for v in value)
    return False


def observe_store(store: Store, metrics: Metrics) -> None:
    """eventd_store_up and eventd_store_errors_total{op} for a store that reports them."""
    if isinstance(store, Observed):
        errors = metrics.store_errors
        store.observe(lambda op: errors.labels(op=op).inc(), metrics.store_up.set)


def _enricher(settings: Settings, rest: RestClient | None) -> Any:
    """What `enrich: resource` asks: the Engine (docker source) or the REST API (dockercloud)."""
    if settings.source == "docker":
        from functools import partial

        from eventd.clients.docker import make_client
        from eventd.sources.docker.enrich import DockerEnricher

        return DockerEnricher(partial(make_client, settings))
    if rest is None:
        return None
    from eventd.sources.dockercloud.logs import ContainerLogs

    return Enricher(rest, logs=ContainerLogs(settings.stream_host, rest.credentials.header,
                                             settings.tls.sslopt()))


def rule_vocabulary(source: str) -> Vocabulary:
    """What the source's events hold, for the rule checker's typo warnings."""
    if source == "docker":
        from eventd.sources.docker.vocabulary import VOCABULARY

        return Vocabulary(**VOCABULARY)  # type: ignore[arg-type]
    return DOCKERCLOUD


#: the incident kinds' secrets, which rules name as ${VAR}: each may come from `<VAR>_FILE`
INCIDENT_SECRETS = ("PAGERDUTY_ROUTING_KEY", "OPSGENIE_API_KEY", "SLACK_BOT_TOKEN",
                    "SLACK_WEBHOOK_URL", "MSTEAMS_WEBHOOK_URL")


def rules_environ(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment rules are interpolated from: EVENTD_AUDIT_PATH defaults to a file in
    the state directory; the incident secrets may come from `<NAME>_FILE` (ConfigError if
    such a file cannot be read)."""
    env = read_secret_files(environ, INCIDENT_SECRETS)
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
