"""`eventd demo`: the emulator, the daemon and an alert receiver in one process, narrated.

For a newcomer without a Docker Cloud account: one command shows eventd receive events,
match rules, alert once, redeploy over REST and survive a dropped stream, in plain lines
on stdout. The narration comes from three places: the `eventd` loggers (a handler that
turns known records into lines), the alert receiver, and the emulator's recorded REST calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import eventd
from eventd.ops.logconfig import redact

USER = "demo"
LEAD = 1.0  # seconds between start and the story's first step, for eventd to connect
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its subcommand parser."""
    parser.add_argument("--follow", action="store_true",
                        help="keep everything running after the story, until Ctrl-C")
    parser.add_argument("--speed", type=float, default=1.5, metavar="X",
                        help="play the story X times faster (default 1.5: about 15 s)")


def scenario_path() -> Path:
    """The packaged demo scenario."""
    return Path(eventd.__file__).parent / "emulator" / "scenarios" / "demo.yaml"


def rules_path() -> Path:
    """The repository's rules/ next to the package (a checkout), else the packaged ones."""
    package = Path(eventd.__file__).parent
    for candidate in (package.parent / "rules", package / "rules"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise FileNotFoundError(f"no sample rules in {package.parent / 'rules'} or {package / 'rules'}")


# -- the alert receiver --------------------------------------------------------------------
class AlertReceiver:
    """A local stand-in for Slack: answers 200 to every POST and reports the alert text."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.count = 0
        self.texts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                text = _alert_text(body)
                receiver.count += 1
                receiver.texts.append(text)
                report(text)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-receiver",
                                       daemon=True)

    def start(self) -> AlertReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2)


def _alert_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:200]
    if isinstance(data, dict):
        for key in ("text", "message", "summary", "content"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return json.dumps(data)[:200]


# -- narration -----------------------------------------------------------------------------
class _Records(logging.Handler):
    """Hands log records to the narrating thread; never formats or blocks here."""

    def __init__(self, sink: queue.Queue[Any]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("eventd") or record.levelno >= logging.WARNING:
            self.sink.put(("log", time.monotonic(), record))


class Narrator:
    """Turns what happens into short lines: `  3.1s  event   container web-1 Stopped (exit 137)`."""

    def __init__(self, out: TextIO, emulator: Any, secret_values: list[str],
                 quiet_rules: frozenset[str] = frozenset()) -> None:
        self.out = out
        self.emulator = emulator
        self.secrets = secret_values
        self.quiet_rules = quiet_rules
        self.started = time.monotonic()
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.handler = _Records(self.inbox)
        self.matches: dict[str, float] = {}
        self._pending: Counter[str] = Counter()
        self._burst_left = 0
        self._burst_hidden = 0
        self._disconnected = False
        self.counts: Counter[str] = Counter()

    def say(self, tag: str, text: str, at: float | None = None) -> None:
        elapsed = (at if at is not None else time.monotonic()) - self.started
        text = _UUID.sub(lambda m: m.group(0)[:8] + "…", text)
        line = f"{elapsed:5.1f}s  {tag:<7} {text}"
        print(redact(line, self.secrets), file=self.out, flush=True)

    def alert(self, text: str) -> None:
        self.inbox.put(("alert", time.monotonic(), text))

    def poll(self, metrics: Any) -> None:
        """Print what happened since the last poll, in order; a rule's match before its actions."""
        items: list[Any] = []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        self._read_matches(metrics)  # after draining: a drained action's match is counted
        for kind, at, payload in sorted(items, key=lambda item: item[1]):
            if kind == "alert":
                self.say("alert", f"received: {json.dumps(payload, ensure_ascii=False)}", at)
            else:
                self._record(payload, at)
        self._flush_matches()

    def _read_matches(self, metrics: Any) -> None:
        for family in metrics.rule_matches.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    rule = sample.labels["rule"]
                    new = int(sample.value - self.matches.get(rule, 0.0))
                    self.matches[rule] = sample.value
                    if new > 0 and rule not in self.quiet_rules:
                        self._pending[rule] += new

    def _flush_matches(self, rule: str | None = None, at: float | None = None) -> None:
        for name in [rule] if rule is not None else sorted(self._pending):
            for _ in range(self._pending.pop(name, 0)):
                self.say("match", f"rule {name}", at)

    def _record(self, record: logging.LogRecord, at: float) -> None:
        msg = record.msg if isinstance(record.msg, str) else str(record.msg)
        args: tuple[Any, ...] = record.args if isinstance(record.args, tuple) else ()
        name = record.name
        if name == "eventd.emulator.core" and msg.startswith("event ") and len(args) == 4:
            self._event(*args, at=at)
        elif name == "eventd.emulator.core" and msg.startswith("scenario step") and len(args) == 4:
            self._step(str(args[0]), dict(args[3]), at)
        elif name == "eventd.emulator.rest_server" and msg.startswith("REST ") and len(args) == 3:
            self._call(str(args[0]), str(args[1]), int(args[2]), at)
        elif name.startswith("eventd.emulator"):
            if record.levelno >= logging.WARNING:
                self.say("cloud", record.getMessage(), at)
        elif msg.startswith("stream lost") and len(args) == 2:
            self._disconnected = True
            self.say("stream", f"connection lost ({args[0]}); eventd reconnects in "
                               f"{args[1]:.1f} s", at)
        elif msg == "connected to %s":
            self._disconnected = False
            self.say("stream", f"eventd connected to {args[0]}", at)
        elif msg == "connected to %s (gap %.1f s)":
            self._disconnected = False
            self.counts["reconnects"] += 1
            self.say("stream", f"reconnected after {args[1]:.1f} s; eventd emitted a `connected` "
                               "event with the gap, for rules to react to", at)
        elif msg.startswith("backfill since %s: %d"):
            self.say("stream", f"eventd asked the REST API for actions missed during the gap: "
                               f"{args[1]} found", at)
        elif name == "eventd.actions.log" and msg == "rule %s: %s":
            self._flush_matches(str(args[0]), at)
            self.say("log", str(args[1]), at)
        elif name == "eventd.delivery.dispatcher" and msg == "%s for rule %s: %s":
            kind, rule, result = args
            self._flush_matches(str(rule), at)
            if kind in ("webhook", "alertmanager"):
                self.say("action", f"{kind} for rule {rule} -> alert receiver: {result}", at)
            elif kind not in ("log", "audit"):
                self.say("action", f"{kind} for rule {rule}: {result}", at)
        elif msg == "rule %s throttled for event %s":
            self._pending.pop(str(args[0]), None)
            self.say("match", f"rule {args[0]} again, but throttled: no actions this time", at)
        elif name in ("eventd.daemon", "eventd.ops.health", "eventd.sources.dockercloud.stream",
                      "eventd.delivery.dispatcher") \
                and record.levelno < logging.WARNING:
            pass  # start-up and shutdown chatter: the intro and the summary say it better
        elif record.levelno >= logging.INFO:
            level = "" if record.levelno == logging.INFO else record.levelname.lower() + ": "
            self.say("eventd", f"{level}{record.getMessage()}", at)

    def _call(self, method: str, path: str, status: int, at: float) -> None:
        if path.startswith("/_emulator"):
            return
        self.counts["rest"] += 1
        note = ""
        if method == "POST" and path.rstrip("/").endswith("/redeploy"):
            self.counts["redeploy"] += 1
            note = f"  (redeploy service {self._name_in(path, 'service')})"
        elif method == "GET" and "/container/" in path:
            note = "  (eventd reads the container: events carry no exit code)"
        self.say("rest", f"{method} {path} -> {status}{note}", at)

    def _name_in(self, path: str, kind: str) -> str:
        match = re.search(rf"/{kind}/({_UUID.pattern})", path)
        if match is None:
            return "?"
        with self.emulator.world.lock:
            try:
                return str(self.emulator.world.lookup(kind, match.group(1)).name)
            except Exception:  # noqa: BLE001 - an unknown object is shown by uuid
                return match.group(1)[:8]

    def _event(self, kind: Any, action: Any, state: Any, uri: Any, at: float) -> None:
        text = self._describe(str(kind), str(action), str(state), str(uri))
        if self._disconnected:
            text += "   (eventd is disconnected: missed, the stream has no replay)"
        if self._burst_left > 0:
            self._burst_left -= 1
            if self._burst_hidden < 0:
                self._burst_hidden = 0
                self.say("event", text, at)
            else:
                self._burst_hidden += 1
            if self._burst_left == 0 and self._burst_hidden:
                self.say("event", f"... and {self._burst_hidden} more update events", at)
            return
        self.say("event", text, at)

    def _describe(self, kind: str, action: str, state: str, uri: str) -> str:
        parts = [p for p in uri.split("/") if p]
        text = f"{kind} {parts[-1][:8] if parts else '?'}"
        with self.emulator.world.lock:
            try:
                obj = self.emulator.world.lookup(parts[-2], parts[-1])
            except Exception:  # noqa: BLE001 - not an emulator object: show the uri
                obj = None
            if obj is not None:
                text = f"{kind} {obj.name!r}" if kind == "action" else f"{kind} {obj.name}"
                exit_code = getattr(obj, "exit_code", None)
                if state == "Stopped" and exit_code not in (None, 0):
                    state = f"{state} (exit {exit_code})"
        verb = "" if action == "update" else f" [{action}]"
        return f"{text} {state}{verb}"

    def _step(self, step: str, args: dict[str, Any], at: float) -> None:
        stories = {
            "container_exit": "a container of service {service} is killed (exit code {exit_code})",
            "drop_connections": "the Stream API server drops every connection (no close frame)",
            "node_unreachable": "node-{node} stops answering Docker Cloud",
            "failed_action": "a '{action}' of service {service} is started and fails",
            "burst": "a burst of {count} update events",
            "restart_stream": "the Stream API server restarts",
        }
        values = {**args, "node": int(args.get("index", 0)) + 1}
        try:
            text = stories[step].format(**values)
        except (KeyError, ValueError):
            text = f"{step} {args}"
        if step == "burst":
            self._burst_left = max(0, int(args.get("count", 0)))
            self._burst_hidden = -1  # the first event of the burst is shown
        self.say("cloud", text, at)


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
    from eventd.daemon import Daemon
    from eventd.emulator import Emulator
    from eventd.errors import EventdError
    from eventd.ruleset.loader import load_rules
    from eventd.settings import Settings
    from eventd.sources.dockercloud.auth import load_credentials

    out = out or sys.stdout
    speed = max(0.1, float(getattr(args, "speed", 1.5) or 1.5))
    follow = bool(getattr(args, "follow", False))
    apikey = apikey or secrets.token_hex(16)  # a fresh key per run: nothing real to leak
    scenario, story_end = _story(speed)
    workdir = Path(tempfile.mkdtemp(prefix="eventd-demo-"))
    audit = workdir / "audit.jsonl"
    emulator = Emulator(user=USER, apikey=apikey, namespace=USER, scenario=scenario,
                        tick=0.2 / speed)
    narrator: Narrator | None = None
    logger, emulator_logger = logging.getLogger("eventd"), logging.getLogger("eventd.emulator")
    saved_levels, root = (logger.level, emulator_logger.level), logging.getLogger()
    receiver: AlertReceiver | None = None
    daemon: Any = None
    try:
        rules = rules_path()
        emulator.start()
        env = {"DOCKERCLOUD_REST_HOST": emulator.rest_url,
               "DOCKERCLOUD_STREAM_HOST": emulator.stream_url,
               "DOCKERCLOUD_USER": USER, "DOCKERCLOUD_APIKEY": apikey,
               "EVENTD_AUDIT_PATH": str(audit), "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/"}
        credentials = load_credentials(env, home=workdir)
        ruleset = load_rules((rules,), env)
        quiet = frozenset(r.name for r in ruleset if r.kinds <= {"audit"})
        narrator = Narrator(out, emulator, credentials.secrets() + [apikey], quiet)
        receiver = AlertReceiver(narrator.alert).start()
        env["ALERT_WEBHOOK_URL"] = receiver.url
        settings = Settings.from_env(env, rules=(rules,), state_dir=workdir / "state",
                                     metrics_addr=("127.0.0.1", 0), shutdown_timeout=5.0)
        root.addHandler(narrator.handler)
        logger.setLevel(logging.DEBUG)  # eventd.delivery.dispatcher says each action's result at DEBUG
        emulator_logger.setLevel(logging.INFO)  # not every websocket frame
        daemon = Daemon(settings, credentials, environ=env)
        daemon.start()
        metrics_url = f"http://127.0.0.1:{daemon.health_port}/"
        _intro(out, emulator, receiver, rules, len(ruleset), quiet, workdir, metrics_url, speed)
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
    except (EventdError, FileNotFoundError) as exc:
        print(f"eventd demo: {redact(str(exc), [apikey])}", file=sys.stderr)
        return 2
    finally:
        if daemon is not None:
            daemon.stop(timeout=5.0)
        if receiver is not None:
            receiver.stop()
        emulator.stop()
        if narrator is not None:
            root.removeHandler(narrator.handler)
        logger.setLevel(saved_levels[0])
        emulator_logger.setLevel(saved_levels[1])
    return _summary(out, narrator, daemon, receiver, audit, metrics_url, follow)


def _interrupt_on_sigterm() -> Any:
    """Make SIGTERM end the demo like Ctrl-C does (with the summary); the old handler or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _intro(out: TextIO, emulator: Any, receiver: AlertReceiver, rules: Path, rule_count: int,
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
        f"  receiver  {receiver.url}  (stands in for Slack: prints each alert)",
        f"  eventd    {rule_count} rules from {rules}",
        f"            state in {workdir / 'state'}",
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


def _summary(out: TextIO, narrator: Narrator | None, daemon: Any,
             receiver: AlertReceiver | None, audit: Path, metrics_url: str, follow: bool) -> int:
    if narrator is None or daemon is None or receiver is None:
        return 1
    metrics = daemon.metrics
    elapsed = time.monotonic() - narrator.started
    matches = ", ".join(f"{rule} {int(n)}" for rule, n in sorted(narrator.matches.items()) if n)
    audit_lines = len(audit.read_bytes().splitlines()) if audit.exists() else 0
    crash_alerts = sum(1 for text in receiver.texts if "crash" in text)
    calls = [c for c in narrator.emulator.rest_calls() if not c.path.startswith("/_emulator")]
    redeploys = sum(1 for c in calls
                    if c.method == "POST" and c.path.rstrip("/").endswith("/redeploy"))
    lines = [
        "",
        f"Summary after {elapsed:.1f} s",
        f"  events received by eventd  {int(_total(metrics, 'eventd_events_received_total'))}",
        f"  rules matched              {int(sum(narrator.matches.values()))}  "
        f"({matches or 'none'})",
        f"  alerts received            {receiver.count}  (about the crash: {crash_alerts})",
        f"  REST calls made by eventd  {len(calls)}  (redeploys: {redeploys})",
        f"  stream reconnects          {narrator.counts['reconnects']}",
        f"  audit file                 {audit}  ({audit_lines} records)",
        f"  metrics                    were served at {metrics_url}metrics"
        + ("" if follow else " (`eventd demo --follow` keeps them up)"),
        "",
        "Next: `eventd check rules/` validates rule files; `eventd emulate` runs the emulator",
        "alone; `eventd run --rules rules/ --metrics-addr 127.0.0.1:9108` runs the daemon against",
        "Docker Cloud or the emulator; deploy/ has a Dockerfile, compose, Kubernetes and systemd.",
    ]
    print(redact("\n".join(lines), narrator.secrets), file=out, flush=True)
    if receiver.count < 1 or redeploys < 1:
        print("eventd demo: the story did not go as expected (no alert or no redeploy)",
              file=sys.stderr)
        return 1
    return 0
