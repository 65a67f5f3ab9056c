"""`eventd replay`: recorded events (the JSON lines of `run --record`) through the rules.

Without --dry-run the actions run for real, through the same spool and dispatcher as the
daemon, and replay returns once every one is delivered or dead-lettered. With --dry-run
nothing is called and nothing is written: it prints what each event would do.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from eventd.actions import ACTIONS, resolve
from eventd.actions.base import ActionJob
from eventd.engine import Engine, Outcome
from eventd.errors import CredentialsMissing, MalformedEvent
from eventd.events import Received, parse_event
from eventd.ops.metrics import Metrics
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.stores import open_store

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
            kind = resolve(name)
            self.per_event, self.acts_on_objects = bool(kind.per_event), bool(kind.acts_on_objects)
        except ImportError:
            self.per_event = self.acts_on_objects = False

    def inactive(self, options: dict[str, Any]) -> bool:
        return False

    def target(self, options: dict[str, Any]) -> str:
        return self.name


def run(path: Path, settings: Settings, environ: Mapping[str, str], *, dry_run: bool,
        out: IO[str]) -> int:
    """Replay a file; 0 when everything ran (or would run), 1 if an action failed for good."""
    from eventd.daemon import rules_environ

    ruleset = load_rules(settings.rules, rules_environ(settings, environ))
    metrics = Metrics()
    if dry_run:
        return _dry_run(path, ruleset, metrics, out)
    return _real_run(path, ruleset, settings, environ, metrics, out)


def _dry_run(path: Path, ruleset: Any, metrics: Metrics, out: IO[str]) -> int:
    jobs: list[ActionJob] = []
    kinds = {name: _DryKind(name) for name in ACTIONS}
    store = open_store(Settings(store="memory"))  # throttles as live, and nothing written
    engine = Engine(ruleset, jobs.append, kinds, store, metrics)
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
    from eventd.daemon import build_pipeline
    from eventd.sources.dockercloud.auth import load_credentials

    try:
        credentials = load_credentials(environ)
    except CredentialsMissing:
        credentials = None
        if any("dockercloud" in rule.kinds or rule.enrich for rule in ruleset.rules):
            log.warning("no Docker Cloud credentials: dockercloud actions and enrichment will fail")
    # Replay delivers through the spool, as the daemon does: it takes the state directory.
    pipeline = build_pipeline(settings, metrics=metrics, credentials=credentials,
                              environ=environ, ruleset=ruleset, exclusive=True)
    engine, dispatcher = pipeline.engine, pipeline.dispatcher
    assert engine is not None
    events = 0
    try:
        pipeline.start()
        for received in read_events(path, metrics):
            events += 1
            engine.process(received)
        dispatcher.wait_idle(None)
    finally:
        pipeline.close(5.0)
    sample = metrics.registry.get_sample_value
    delivered = sum(sample("eventd_actions_total", {"kind": k, "outcome": "success"}) or 0
                    for k in ACTIONS)
    dead = sample("eventd_deadletter_total") or 0
    print(f"summary: {events} events replayed, {int(delivered)} actions delivered, "
          f"{int(dead)} dead-lettered", file=out)
    return 1 if dead else 0
