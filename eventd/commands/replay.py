"""`eventd replay`: recorded events (the JSON lines of `run --record`) through the rules.

Without --dry-run the actions run for real (REST calls, webhooks), through the same spool and
dispatcher as the daemon, and replay returns once every one is delivered or dead-lettered, or
at its --timeout (what is left stays in the spool). With --dry-run nothing is written and no
action runs: it prints what each event would do, URLs redacted as in the daemon's logs; only
the read-only enrichment GET is made, as live, when credentials for a REST host are found.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from eventd.actions import ACTIONS, resolve
from eventd.engine import Engine, Outcome
from eventd.errors import CredentialsMissing, MalformedEvent
from eventd.events import Received, parse_event
from eventd.ops.logconfig import redact
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
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
        out: IO[str], timeout: float | None = None) -> int:
    """Replay a file; 0 when everything ran (or would run), 1 if an action failed for good
    or was not finished by `timeout` seconds (real runs only)."""
    from eventd.pipeline import rules_environ

    ruleset = load_rules(settings.rules, rules_environ(settings, environ))
    metrics = Metrics()
    if dry_run:
        return _dry_run(path, ruleset, settings, environ, metrics, out)
    return _real_run(path, ruleset, settings, environ, metrics, out, timeout)


class _DryEnricher:
    """The live enrichment (a read-only GET) when a REST host can be asked; notes what it did."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        from eventd.clients.dockercloud.auth import load_credentials
        from eventd.clients.dockercloud.rest import RestClient
        from eventd.sources.dockercloud.enrich import Enricher

        self.note = ""
        self.secrets: list[str] = []
        self.rest: Any = None
        try:
            credentials = load_credentials(environ)
        except CredentialsMissing:
            self.enricher = None
            return
        self.secrets = credentials.secrets()
        self.rest = RestClient(settings.rest_host, credentials, user_agent=settings.user_agent)
        self.enricher = Enricher(self.rest)

    def resource(self, event: dict[str, Any]) -> dict[str, Any] | None:
        from eventd.sources.dockercloud.enrich import resource_path

        if self.enricher is None:
            self.note = ("enrich skipped: no REST host (no Docker Cloud credentials found; "
                         "rules with `enrich` see no resource)")
            return None
        value = self.enricher.resource(event)
        found = "found" if value is not None else "nothing (rules see no resource)"
        self.note = f"enrich: GET {self.rest.url(resource_path(event) or '')} (read-only) -> {found}"
        return value

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()


def _dry_run(path: Path, ruleset: Any, settings: Settings, environ: Mapping[str, str],
             metrics: Metrics, out: IO[str]) -> int:
    jobs: list[ActionJob] = []
    kinds = {name: _DryKind(name) for name in ACTIONS}
    store = open_store(Settings(store="memory"))  # throttles as live, and nothing written
    enricher = _DryEnricher(settings, environ)
    engine = Engine(ruleset, jobs.append, kinds, store, metrics, enricher=enricher)
    events = matched = actions = 0
    try:
        for received in read_events(path, metrics, out):
            events += 1
            enricher.note = ""
            outcome = engine.process(received)
            if outcome is None or not outcome.rules:
                if enricher.note:  # a rule's `match` held, then it needed the resource
                    _print_event(out, received, enricher.secrets)
                    print(f"  {enricher.note}", file=out)
                continue
            matched += 1
            _print_outcome(out, received, outcome, enricher.note, enricher.secrets)
            actions += sum(1 for d in outcome.decisions if d.status == "accepted")
    finally:
        enricher.close()
    print(f"summary: {events} events, {matched} matched a rule, {actions} actions would run "
          f"(dry run: no action ran, nothing was written)", file=out)
    return 0


def _print_event(out: IO[str], received: Received, secrets: list[str]) -> None:
    event = received.event
    print(redact(f"event {event.get('uuid', '?')} {event.get('type', '?')} {event.get('state', '')} "
                 f"{event.get('resource_uri', '')}", secrets), file=out)


def _print_outcome(out: IO[str], received: Received, outcome: Outcome, note: str = "",
                   secrets: list[str] | None = None) -> None:
    secrets = secrets or []
    _print_event(out, received, secrets)
    if note:
        print(f"  {note}", file=out)
    for name in outcome.rules:
        print(f"  rule {name}", file=out)
        for decision in outcome.decisions:
            if decision.rule != name:
                continue
            if decision.status == "accepted":
                options = json.dumps(decision.options, sort_keys=True, default=str)
                print(redact(f"    {decision.kind}: {options}", secrets), file=out)
            elif decision.reason.startswith(decision.status):  # "throttled (key ...)"
                print(redact(f"    {decision.kind}: {decision.reason}", secrets), file=out)
            else:
                print(redact(f"    {decision.kind}: {decision.status} ({decision.reason})", secrets),
                      file=out)


def _real_run(path: Path, ruleset: Any, settings: Settings, environ: Mapping[str, str],
              metrics: Metrics, out: IO[str], timeout: float | None) -> int:
    from eventd.clients.dockercloud.auth import load_credentials
    from eventd.pipeline import build_pipeline

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
    deadline = None if timeout is None else time.monotonic() + timeout
    left = 0
    try:
        pipeline.start()
        for received in read_events(path, metrics):
            events += 1
            engine.process(received)
        finished = dispatcher.wait_idle(
            None if deadline is None else max(0.0, deadline - time.monotonic()))
    finally:
        left = pipeline.close(5.0)
    sample = metrics.registry.get_sample_value
    delivered = sum(sample("eventd_actions_total", {"kind": k, "outcome": "success"}) or 0
                    for k in ACTIONS)
    dead = sample("eventd_deadletter_total") or 0
    print(f"summary: {events} events replayed, {int(delivered)} actions delivered, "
          f"{int(dead)} dead-lettered", file=out)
    if not finished:
        print(f"replay: --timeout reached: {left} action(s) not finished stay in the spool in "
              f"{settings.state_dir} (a daemon on that state directory delivers them)", file=out)
    return 1 if dead or not finished else 0
