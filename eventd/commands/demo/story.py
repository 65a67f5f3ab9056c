"""`eventd demo`: the emulator, the daemon and an alert receiver in one process, narrated.

For a newcomer without a Docker Cloud account: one command shows eventd receive events,
match rules, alert once, redeploy over REST and survive a dropped stream, in plain lines
on stdout. The story is the packaged scenario; the narrator (`narrator.py`) listens to
eventd's hooks, its metrics, the alert receiver (`receiver.py`) and the emulator's records;
eventd's own log goes to a file in the demo's directory.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import eventd
from eventd.commands.demo.narrator import Narrator
from eventd.commands.demo.receiver import WebhookReceiver
from eventd.commands.samples import rules_path
from eventd.ops.logconfig import RedactingFilter, TextFormatter, redact

USER = "demo"
LEAD = 1.0  # seconds between start and the story's first step, for eventd to connect
SCENARIO = "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its subcommand parser."""
    parser.add_argument("--follow", action="store_true",
                        help="keep everything running after the story, until Ctrl-C")
    parser.add_argument("--speed", type=float, default=1.5, metavar="X",
                        help="play the story X times faster (default 1.5: about 15 s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the demo's temporary directory (eventd's log, the audit file, "
                             "the state) instead of removing it at the end")


def scenario_path() -> Path:
    """The packaged demo scenario."""
    return Path(eventd.__file__).parent / "emulator" / "scenarios" / f"{SCENARIO}.yaml"


# -- the demo ------------------------------------------------------------------------------
def _story(speed: float) -> tuple[Any, float]:
    """The packaged scenario played `speed` times faster after LEAD; and when it is over."""
    from eventd.emulator import load_scenario

    scenario = load_scenario(scenario_path())
    steps = []
    end = LEAD
    for step in scenario.steps:
        args = dict(step.args)
        at = LEAD + step.at / speed
        if step.name == "burst":
            args["rate"] = float(args.get("rate", 50)) * speed
            end = max(end, at + int(args.get("count", 100)) / args["rate"])
        steps.append(replace(step, at=at, args=args))
        end = max(end, at)
    return replace(scenario, steps=tuple(steps)), end


def run(args: argparse.Namespace, out: TextIO | None = None, apikey: str | None = None) -> int:
    """Run the demo; 0 when the story went as told (an alert and a redeploy happened).

    `apikey` is for tests that check it never shows; by default each run makes a fresh one.
    """
    out = out or sys.stdout
    speed = max(0.1, float(getattr(args, "speed", 1.5) or 1.5))
    follow = bool(getattr(args, "follow", False))
    keep = bool(getattr(args, "keep", False))
    apikey = apikey or secrets.token_hex(16)  # a fresh key per run: nothing real to leak
    workdir = Path(tempfile.mkdtemp(prefix="eventd-demo-"))
    try:
        return _run(out, speed, follow, keep, apikey, workdir)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(out: TextIO, speed: float, follow: bool, keep: bool, apikey: str,
         workdir: Path) -> int:
    """The demo in `workdir` (removed afterwards unless `keep`); its exit code."""
    from eventd.clients.dockercloud.auth import load_credentials
    from eventd.daemon import Daemon
    from eventd.emulator import Emulator
    from eventd.errors import EventdError
    from eventd.hooks import hooks
    from eventd.ruleset.loader import load_rules
    from eventd.settings import Settings

    audit, log_file = workdir / "audit.jsonl", workdir / "eventd.log"
    narrator: Narrator | None = None
    receiver: WebhookReceiver | None = None
    emulator: Any = None
    daemon: Any = None
    unsubscribe: Any = None
    log_handler: logging.Handler | None = None
    metrics_url = ""
    levels = _Levels()
    try:
        rules = rules_path()
        scenario, story_end = _story(speed)
        emulator = Emulator(user=USER, apikey=apikey, namespace=USER, scenario=scenario,
                            tick=0.2 / speed)
        env = {"DOCKERCLOUD_USER": USER, "DOCKERCLOUD_APIKEY": apikey,
               "EVENTD_AUDIT_PATH": str(audit), "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/",
               "CRASH_DIGEST_WAIT": "1s"}  # the crash digest, short enough for the story
        credentials = load_credentials(env, home=workdir)
        ruleset = load_rules((rules,), env)
        quiet = frozenset(r.name for r in ruleset if r.kinds <= {"audit"})
        log_handler = _log_to(log_file, credentials.secrets() + [apikey])
        levels.set()
        started = time.monotonic()  # the emulator's story clock starts with it
        emulator.start()
        env.update({"DOCKERCLOUD_REST_HOST": emulator.rest_url,
                    "DOCKERCLOUD_STREAM_HOST": emulator.stream_url})
        steps = [(step.at, step.name, dict(step.args)) for step in scenario.steps]
        narrator = Narrator(out, emulator, credentials.secrets() + [apikey], quiet, steps, started)
        receiver = WebhookReceiver(on_request=narrator.alert).start()
        env["ALERT_WEBHOOK_URL"] = receiver.url + "/alerts"
        settings = Settings.from_env(env, rules=(rules,), state_dir=workdir / "state",
                                     metrics_addr=("127.0.0.1", 0), shutdown_timeout=5.0)
        unsubscribe = hooks.subscribe(narrator)
        daemon = Daemon(settings, credentials, environ=env)
        daemon.start()
        metrics_url = f"http://127.0.0.1:{daemon.health_port}/"
        _intro(out, emulator, receiver.url + "/alerts", rules, len(ruleset), quiet, workdir,
               metrics_url, speed)
        deadline = narrator.started + story_end + 1.0
        previous = _interrupt_on_sigterm()
        try:
            while follow or time.monotonic() < deadline:
                narrator.poll(daemon.metrics)
                if daemon.stopped.is_set():
                    break
                if follow and 0 < deadline <= time.monotonic():
                    deadline = 0
                    _follow_hint(out, emulator, metrics_url)
                time.sleep(0.02)
        except KeyboardInterrupt:
            print("", file=out)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        daemon.wait_idle(3.0)
        narrator.poll(daemon.metrics)
    except (EventdError, OSError) as exc:
        print(f"eventd demo: {redact(str(exc), [apikey])}", file=sys.stderr)
        return 2
    finally:
        if daemon is not None:
            daemon.stop(timeout=5.0)
        if unsubscribe is not None:
            unsubscribe()
        if receiver is not None:
            receiver.stop()
        if emulator is not None:
            emulator.stop()
        if log_handler is not None:
            logging.getLogger().removeHandler(log_handler)
            log_handler.close()
        levels.restore()
    return _summary(out, narrator, daemon, receiver, audit, log_file, metrics_url, follow, keep)


class _Levels:
    """eventd at INFO while the demo runs (its `log` actions are live), the emulator quieter."""

    NAMES = {"eventd": logging.INFO, "eventd.emulator": logging.WARNING}

    def __init__(self) -> None:
        self.saved = {name: logging.getLogger(name).level for name in self.NAMES}

    def set(self) -> None:
        for name, level in self.NAMES.items():
            logging.getLogger(name).setLevel(level)

    def restore(self) -> None:
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)


def _log_to(path: Path, secret_values: list[str]) -> logging.Handler:
    """eventd's own log lines go to a file (redacted): the narration is on stdout."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(TextFormatter())
    handler.addFilter(RedactingFilter(secret_values))
    logging.getLogger().addHandler(handler)
    return handler


def _interrupt_on_sigterm() -> Any:
    """Make SIGTERM end the demo like Ctrl-C does (with the summary); the old handler or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _intro(out: TextIO, emulator: Any, receiver_url: str, rules: Path, rule_count: int,
           quiet: frozenset[str], workdir: Path, metrics_url: str, speed: float) -> None:
    world = emulator.world.summary()
    containers = [c["name"] for c in world.get("container", []) if c["state"] != "Terminated"]
    services = ", ".join(
        f"{s['name']} ({sum(1 for c in containers if c.startswith(s['name'] + '-'))})"
        for s in world.get("service", []))
    quiet_note = (f"not shown: the matches of {', '.join(sorted(quiet))}, which only "
                  "writes the audit file" if quiet else "")
    lines = [
        "eventd demo: a fake Docker Cloud, eventd and an alert receiver, all in this process.",
        "",
        f"  emulator  Docker Cloud's REST API at {emulator.rest_url}, Stream API at "
        f"{emulator.stream_url}",
        f"            services (containers): {services}; "
        f"nodes: {', '.join(n['name'] for n in world.get('node', []))}",
        f"  receiver  {receiver_url}  (stands in for Slack: prints each alert)",
        f"  eventd    {rule_count} rules from {rules}",
        f"            state in {workdir / 'state'}, its log in {workdir / 'eventd.log'}",
        f"            metrics and health at {metrics_url}metrics, /healthz, /readyz",
        "",
        f"  The story ({speed:g}x speed): a container crashes, the stream drops, a node goes",
        "  unreachable, a redeploy fails, a burst of events arrives. Watch eventd alert once,",
        "  redeploy the crashed service over REST, and reconnect by itself.",
        "",
        "  Each line: seconds since start, then what it is about:",
        "    cloud   what the emulator does          event   what the stream carries",
        "    match   a rule matched an event         log, action   what eventd does about it",
        "    rest    eventd's REST calls             alert   what the receiver got",
        *([f"  ({quiet_note})"] if quiet_note else []),
        "",
    ]
    print("\n".join(lines), file=out, flush=True)


def _follow_hint(out: TextIO, emulator: Any, metrics_url: str) -> None:
    control = emulator.rest_url + "_emulator"
    print(f"\n  The story is over; everything keeps running (Ctrl-C to stop). Try:\n"
          f"    curl -s {metrics_url}metrics | grep ^eventd_\n"
          f"    curl -s -X POST {control}/faults -H 'Content-Type: application/json' "
          f"-d '{{\"drop\": true}}'      # drop the stream\n"
          f"    curl -s {control}/state\n", file=out, flush=True)


def _total(metrics: Any, name: str) -> float:
    total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def _summary(out: TextIO, narrator: Narrator | None, daemon: Any, receiver: WebhookReceiver | None,
             audit: Path, log_file: Path, metrics_url: str, follow: bool, keep: bool) -> int:
    if narrator is None or daemon is None or receiver is None:
        return 1
    texts = [request.text() for request in receiver.requests]
    metrics = daemon.metrics
    elapsed = time.monotonic() - narrator.started
    matches = ", ".join(f"{rule} {int(n)}" for rule, n in sorted(narrator.matches.items()) if n)
    audit_lines = len(audit.read_bytes().splitlines()) if audit.exists() else 0
    crash_alerts = sum(1 for text in texts if "crash" in text)
    calls = [c for c in narrator.emulator.rest_calls() if not c.path.startswith("/_emulator")]
    redeploys = sum(1 for c in calls
                    if c.method == "POST" and c.path.rstrip("/").endswith("/redeploy"))
    lines = [
        "",
        f"Summary after {elapsed:.1f} s",
        f"  events received by eventd  {int(_total(metrics, 'eventd_events_received_total'))}",
        f"  rules matched              {int(sum(narrator.matches.values()))}  "
        f"({matches or 'none'})",
        f"  alerts received            {len(texts)}  (about the crash: {crash_alerts})",
        f"  REST calls made by eventd  {len(calls)}  (redeploys: {redeploys})",
        f"  stream reconnects          {narrator.counts['reconnects']}",
        f"  audit file                 {audit_lines} records" + (f", in {audit}" if keep else ""),
        "  eventd's log               "
        + (str(log_file) if keep else "removed with the demo's temporary directory "
                                      "(`eventd demo --keep` keeps it)"),
        f"  metrics                    were served at {metrics_url}metrics"
        + ("" if follow else " (`eventd demo --follow` keeps them up)"),
        "",
        "Next: `eventd init rules/` writes these sample rules and their tests to rules/;",
        "`eventd check rules/` validates them and `eventd test rules/tests/` runs their tests;",
        "`eventd emulate` runs the emulator alone and `eventd receive` prints the alerts;",
        "`eventd run --rules rules/ --metrics-addr 127.0.0.1:9108` runs the daemon against",
        "Docker Cloud or the emulator (`--source docker`: a Docker Engine's events instead).",
    ]
    print(redact("\n".join(lines), narrator.secrets), file=out, flush=True)
    if not texts or redeploys < 1:
        print("eventd demo: the story did not go as expected (no alert or no redeploy)",
              file=sys.stderr)
        return 1
    return 0
