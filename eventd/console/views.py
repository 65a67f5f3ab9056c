"""What the API shows: live entries, rules, dead letters, silences and the cluster, as JSON.

Every value that came from outside (an event, a job's options, a reason) passes the Redactor;
the page renders all of it as text, never as HTML.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventd.console.live import LiveRing
from eventd.console.redact import Redactor
from eventd.records import DeadLetter
from eventd.settings import Settings
from eventd.silences.book import SilenceBook
from eventd.silences.model import Silence
from eventd.stores.base import Store

__all__ = ["ConsoleContext", "cluster", "dead_letter", "entry", "rules", "silence"]

#: an event shown larger than this (as JSON) is cut to its summary fields
MAX_EVENT_JSON = 8192
_SUMMARY = ("type", "action", "state", "uuid", "resource_uri", "datetime", "name", "namespace")


@dataclass
class ConsoleContext:
    """What the daemon lends the console: read-only views and the few actions it may take."""

    settings: Settings
    store: Store
    silences: SilenceBook | None
    live: LiveRing
    redactor: Redactor
    #: the rules in force (a RuleSet: `.rules`, `.disabled`)
    rules: Callable[[], Any]
    #: the last (re)load: {"ok": bool, "at": float | None, "problems": [str]}
    reload: Callable[[], dict[str, Any]]
    #: let the dispatcher page in what was moved back to the spool
    resume: Callable[[], object]
    #: this replica as its heartbeat shows it (host, pid, namespaces, ready)
    replica: Callable[[], dict[str, Any]]
    #: a rule's match count (from /metrics)
    matches: Callable[[str], float]
    token: str | None = field(default=None, repr=False)
    #: eventd's metrics (eventd_internal_errors_total{where="console"})
    metrics: Any = None


def entry(ctx: ConsoleContext, item: tuple[int, float, Mapping[str, Any], Sequence[str],
                                          Sequence[Any]]) -> dict[str, Any]:
    """One Live row: the event (redacted), the rules it matched, what each action did."""
    seq, at, event, matched, decisions = item
    text = ctx.redactor.text
    actions = []
    for decision in decisions:
        job = str(getattr(decision, "job", "") or "")
        result = ctx.live.result(job) if job else None
        actions.append({
            "rule": str(decision.rule), "kind": str(decision.kind),
            "status": str(decision.status), "reason": text(str(decision.reason or "")),
            "job": job or None,
            "result": None if result is None else {"status": result[0],
                                                   "detail": text(result[1])}})
    shown = ctx.redactor.value(dict(event))
    data = json.dumps(shown, default=str)
    if len(data) > MAX_EVENT_JSON:
        shown = {key: shown[key] for key in _SUMMARY if key in shown}
        shown["truncated"] = True
    namespace = event.get("namespace")
    return {"seq": seq, "at": at, "type": _str(event.get("type")),
            "action": _str(event.get("action")), "state": _str(event.get("state")),
            "namespace": _str(namespace) if namespace else "(own)",
            "uuid": _str(event.get("uuid")), "name": text(_str(event.get("name"))),
            "resource_uri": text(_str(event.get("resource_uri"))),
            "rules": [str(r) for r in matched], "actions": actions, "event": shown}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))[:200]


def rules(ctx: ConsoleContext) -> dict[str, Any]:
    """The rules in force with their match counts and last match, and the last reload."""
    ruleset = ctx.rules()
    shown = []
    for rule in [*getattr(ruleset, "rules", ()), *getattr(ruleset, "disabled", ())]:
        shown.append({"name": rule.name, "description": ctx.redactor.text(rule.description or ""),
                      "file": str(rule.file), "line": int(rule.line), "mode": rule.mode,
                      "enabled": bool(rule.enabled), "kinds": sorted(rule.kinds),
                      "matches": ctx.matches(rule.name),
                      "last_match": ctx.live.last_match.get(rule.name)})
    reload = ctx.reload()
    return {"rules": shown, "reload": {"ok": bool(reload.get("ok")), "at": reload.get("at"),
                                       "problems": [ctx.redactor.text(str(p)) for p in
                                                    reload.get("problems", ())]}}


def dead_letter(ctx: ConsoleContext, letter: DeadLetter, full: bool = False) -> dict[str, Any]:
    """A dead letter: its summary, and with `full` its options and event (redacted)."""
    job, text = letter.job, ctx.redactor.text
    shown: dict[str, Any] = {"id": job.id, "rule": job.rule, "kind": job.kind,
                             "target": text(job.target), "attempts": job.attempts,
                             "at": letter.at, "reason": text(letter.reason)}
    if full:
        shown.update({"created_at": job.created_at, "options": ctx.redactor.value(job.options),
                      "event": ctx.redactor.value(job.event)})
    return shown


def silence(item: Silence, now: float | None = None) -> dict[str, Any]:
    """A silence with its state (pending, active, expired)."""
    return dict(item.to_record(), state=item.state(time.time() if now is None else now))


def cluster(ctx: ConsoleContext) -> dict[str, Any]:
    """Replicas, who holds which namespace's stream, lease time left, spool depth."""
    settings, me = ctx.settings, ctx.replica()
    spool = {"pending": ctx.store.spool_count(), "deadletters": ctx.store.deadletter_count()}
    from eventd.cluster.connection import is_cluster_store

    if not is_cluster_store(settings.store) or settings.source != "dockercloud":
        this = {"id": "this", "this": True, **_replica(me)}
        return {"cluster": None, "shared": False, "replicas": [this],
                "streams": [{"namespace": ns, "holder": "this", "token": None,
                             "ttl_left": None, "last_event": None}
                            for ns in this["namespaces"]], "spool": spool}
    from eventd.clients.dockercloud.namespaces import label
    from eventd.cluster.connection import connect
    from eventd.cluster.status import read_state

    client = connect(settings)
    try:
        state = read_state(client, settings.cluster,
                           [label(ns) for ns in settings.stream_namespaces])
    finally:
        client.close()
    replicas = [{"id": ident, "this": info.get("pid") == me.get("pid")
                 and info.get("host") == me.get("host"), **_replica(info)}
                for ident, info in sorted(state.replicas.items())]
    return {"cluster": settings.cluster, "shared": True, "replicas": replicas,
            "streams": [{"namespace": s.namespace, "holder": s.holder, "token": s.token,
                         "ttl_left": s.ttl_left, "last_event": s.last_event}
                        for s in state.streams], "spool": spool}


def _replica(info: Mapping[str, Any]) -> dict[str, Any]:
    namespaces = info.get("namespaces")
    return {"host": _str(info.get("host")), "pid": info.get("pid") if isinstance(
                info.get("pid"), int) else None,
            "ready": bool(info.get("ready")), "started": info.get("started") if isinstance(
                info.get("started"), (int, float)) else None,
            "namespaces": [_str(n) for n in namespaces] if isinstance(namespaces, list) else []}
