"""`eventd replay`: recorded events (the JSON lines of `run --record`) through the rules.

Without --dry-run the actions run for real, through the same spool and dispatcher as the
daemon, and replay returns once every one is delivered or dead-lettered. With --dry-run
nothing is called and nothing is written: it prints what each event would do.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from eventd.actions import ACTIONS, resolve
from eventd.actions.base import ActionContext, ActionJob
from eventd.engine import Engine, MemoryStore, Outcome
from eventd.errors import CredentialsMissing, MalformedEvent
from eventd.events import Received, parse_event
from eventd.ops.metrics import Metrics
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings

log = logging.getLogger(__name__)


def read_events(path: Path, metrics: Metrics, out: IO[str] | None = None) -> Iterator[Received]:
    """Yield the events of a JSON-lines file; a bad line is counted, reported and skipped."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = parse_event(line)
            except MalformedEvent as exc:
                metrics.events_invalid.labels(reason=exc.reason).inc()
                message = f"{path}:{number}: skipped: {exc.reason} ({exc.sample[:80]!r})"
                if out is not None:
                    print(message, file=out)
                else:
                    log.warning("%s", message)
                continue
            yield Received(event=event, received_at=time.time(), raw=line.rstrip(b"\n"))


class _DryKind:
    """Stands in for an action kind in a dry run: names a target, calls nothing."""

    def __init__(self, name: str) -> None:
        self.name = name
        try:
            self.per_event = bool(getattr(resolve(name), "per_event", False))
        except ImportError:
            self.per_event = False

    def target(self, options: dict[str, Any]) -> str:
        return self.name


def run(path: Path, settings: Settings, environ: Mapping[str, str], *, dry_run: bool,
        out: IO[str]) -> int:
    """Replay a file; 0 when everything ran (or would run), 1 if an action failed for good."""
    ruleset = load_rules(settings.rules, environ)
    metrics = Metrics()
    if dry_run:
        return _dry_run(path, ruleset, metrics, out)
    return _real_run(path, ruleset, settings, environ, metrics, out)


def _dry_run(path: Path, ruleset: Any, metrics: Metrics, out: IO[str]) -> int:
    jobs: list[ActionJob] = []
    kinds = {name: _DryKind(name) for name in ACTIONS}
    engine = Engine(ruleset, jobs.append, kinds, MemoryStore(), metrics)
    events = matched = actions = 0
    for received in read_events(path, metrics, out):
        events += 1
        outcome = engine.process(received)
        if outcome is None or not outcome.rules:
            continue
        matched += 1
        _print_outcome(out, received, outcome)
        actions += sum(1 for d in outcome.decisions if d.status == "accepted")
    print(f"summary: {events} events, {matched} matched a rule, {actions} actions would run "
          f"(dry run: nothing was called or written)", file=out)
    return 0


def _print_outcome(out: IO[str], received: Received, outcome: Outcome) -> None:
    event = received.event
    print(f"event {event.get('uuid', '?')} {event.get('type', '?')} {event.get('state', '')} "
          f"{event.get('resource_uri', '')}", file=out)
    for name in outcome.rules:
        print(f"  rule {name}", file=out)
        for decision in outcome.decisions:
            if decision.rule != name:
                continue
            if decision.status == "accepted":
                options = json.dumps(decision.options, sort_keys=True, default=str)
                print(f"    {decision.kind}: {options}", file=out)
            else:
                print(f"    {decision.kind}: {decision.status} ({decision.reason})", file=out)


def _real_run(path: Path, ruleset: Any, settings: Settings, environ: Mapping[str, str],
              metrics: Metrics, out: IO[str]) -> int:
    from eventd.delivery.dispatcher import Dispatcher
    from eventd.delivery.guards import LoopGuard
    from eventd.sources.dockercloud.action_waiter import ActionWaiter
    from eventd.sources.dockercloud.auth import load_credentials
    from eventd.sources.dockercloud.enrich import Enricher
    from eventd.sources.dockercloud.rest import RestClient
    from eventd.stores.sqlite import SqliteStore

    try:
        credentials = load_credentials(environ)
    except CredentialsMissing:
        credentials = None
        if any("dockercloud" in rule.kinds or rule.enrich for rule in ruleset.rules):
            log.warning("no Docker Cloud credentials: dockercloud actions and enrichment will fail")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(settings.state_dir, synchronous=settings.spool_sync,
                                 dedupe_window=settings.dedupe_window)
    rest = RestClient(settings.rest_host, credentials) if credentials is not None else None
    stopping = threading.Event()
    loop_guard, waiter = LoopGuard(), ActionWaiter()
    context = ActionContext(settings=settings, metrics=metrics, credentials=credentials, rest=rest,
                            state_dir=settings.state_dir, stopping=stopping,
                            extras={"loop_guard": loop_guard, "action_waiter": waiter})
    kinds = {name: resolve(name)(context) for name in ACTIONS}
    dispatcher = Dispatcher(context, store, kinds)
    dispatcher.start()
    engine = Engine(ruleset, dispatcher.submit, kinds, store, metrics,
                    enricher=Enricher(rest) if rest is not None else None,
                    loop_guard=loop_guard, action_waiter=waiter)
    events = 0
    try:
        for received in read_events(path, metrics):
            events += 1
            engine.process(received)
        dispatcher.wait_idle(None)
    finally:
        stopping.set()
        dispatcher.close(5.0)
        for kind in kinds.values():
            kind.close()
        store.close()
    sample = metrics.registry.get_sample_value
    delivered = sum(sample("eventd_actions_total", {"kind": k, "outcome": "success"}) or 0
                    for k in ACTIONS)
    dead = sample("eventd_deadletter_total") or 0
    print(f"summary: {events} events replayed, {int(delivered)} actions delivered, "
          f"{int(dead)} dead-lettered", file=out)
    return 1 if dead else 0
