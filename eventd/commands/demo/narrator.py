"""The demo's narrator: what happens, as short lines (`  3.1s  event   container web-1 Stopped`).

It listens instead of parsing log text: eventd's news through `eventd.hooks` (connected,
disconnected, delivered, throttled...), the rule match counts from its metrics, the alert
receiver's requests, and the emulator's public records (events sent, REST calls answered).
Hooks run on eventd's threads, so they only queue; `poll()` prints, in order, on the demo's.
"""

from __future__ import annotations

import json
import queue
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from eventd.hooks import Observer
from eventd.ops.logconfig import escape_controls, redact

if TYPE_CHECKING:
    from eventd.commands.demo.receiver import Received
    from eventd.emulator import Emulator
    from eventd.ops.metrics import Metrics
    from eventd.records import ActionJob

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Within one poll, what the emulator did comes before what eventd did about it.
_STEP, _EVENT, _REST, _EVENTD = range(4)

_STORIES = {
    "container_exit": "a container of service {service} is killed (exit code {exit_code})",
    "drop_connections": "the Stream API server drops every connection (no close frame)",
    "node_unreachable": "node-{node} stops answering Docker Cloud",
    "failed_action": "a '{action}' of service {service} is started and fails",
    "burst": "a burst of {count} update events",
    "restart_stream": "the Stream API server restarts",
}


class Narrator(Observer):
    """Collects what happens from every source and prints it as one story."""

    def __init__(self, out: TextIO, emulator: Emulator, secret_values: list[str],
                 quiet_rules: frozenset[str] = frozenset(),
                 steps: Sequence[tuple[float, str, Mapping[str, Any]]] = (),
                 started: float | None = None) -> None:
        self.out = out
        self.emulator = emulator
        self.secrets = secret_values
        self.quiet_rules = quiet_rules
        self.started = time.monotonic() if started is None else started
        self.matches: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self._inbox: queue.Queue[tuple[float, int, str, Any]] = queue.Queue()
        self._steps = sorted(steps, key=lambda step: step[0])
        self._events_seen = 0
        self._calls_seen = 0
        self._last_poll = self.started
        self._pending: Counter[str] = Counter()
        self._burst_left = 0
        self._burst_hidden = 0
        self._disconnected = False

    # -- what eventd says (hooks: any thread) -----------------------------------------------
    def _put(self, tag: str, payload: Any) -> None:
        self._inbox.put((time.monotonic(), _EVENTD, tag, payload))

    def on_connected(self, url: str, gap_seconds: float | None) -> None:
        """Queue: connected, or reconnected after a gap."""
        self._put("connected", (url, gap_seconds))

    def on_disconnected(self, reason: str, retry_in: float, was_connected: bool) -> None:
        """Queue: connection lost or refused."""
        self._put("disconnected", (reason, retry_in, was_connected))

    def on_backfilled(self, since: str, count: int) -> None:
        """Queue: actions of the gap recovered."""
        self._put("backfilled", count)

    def on_throttled(self, rule: str, event: Mapping[str, Any]) -> None:
        """Queue: a match held back by the rule's throttle."""
        self._put("throttled", rule)

    def on_delivered(self, job: ActionJob, result: str) -> None:
        """Queue: an action done."""
        self._put("delivered", (job.kind, job.rule, str(job.options.get("message", "")), result))

    def on_dead_lettered(self, job: ActionJob, reason: str) -> None:
        """Queue: an action given up."""
        self._put("dead", (job.kind, job.rule, reason))

    def on_reloaded(self, ok: bool, rules: int) -> None:
        """Queue: rules reloaded (or kept)."""
        self._put("reloaded", (ok, rules))

    def alert(self, received: Received) -> None:
        """The alert receiver's callback (its thread): queue what arrived."""
        self._inbox.put((time.monotonic(), _EVENTD, "alert", received.text()))

    # -- printing (the demo's thread) -------------------------------------------------------
    def say(self, tag: str, text: str, at: float | None = None) -> None:
        """Print one line of the story, uuids shortened, secrets redacted."""
        elapsed = (at if at is not None else time.monotonic()) - self.started
        text = escape_controls(_UUID.sub(lambda m: m.group(0)[:8] + "…", text))
        print(redact(f"{elapsed:5.1f}s  {tag:<7} {text}", self.secrets), file=self.out, flush=True)

    def poll(self, metrics: Metrics) -> None:
        """Print what happened since the last poll, in order; a rule's match before its actions."""
        now = time.monotonic()
        since = self._last_poll  # what the emulator did in this window happened after this
        items: list[tuple[float, int, str, Any]] = []
        while self._steps and self.started + self._steps[0][0] <= now:
            _, name, args = self._steps.pop(0)
            items.append((since, _STEP, name, args))
        events = self.emulator.sent_events()
        items.extend((since, _EVENT, "event", event) for event in events[self._events_seen:])
        self._events_seen = len(events)
        calls = self.emulator.rest_calls()
        items.extend((since, _REST, "rest", call) for call in calls[self._calls_seen:])
        self._calls_seen = len(calls)
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        self._last_poll = now
        self._read_matches(metrics)  # after draining: a drained action's match is counted
        for at, order, tag, payload in sorted(items, key=lambda item: (item[0], item[1])):
            if order == _STEP:
                self._step(tag, dict(payload), at)
            elif order == _EVENT:
                self._event(payload, at)
            elif order == _REST:
                if payload.method != "GET":  # an action of a rule: its match comes first
                    self._flush_matches(None, at)
                self._call(payload.method, payload.path, payload.status, at)
            else:
                self._news(tag, payload, at)
        self._flush_matches()

    def _read_matches(self, metrics: Metrics) -> None:
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

    def _news(self, tag: str, payload: Any, at: float) -> None:
        if tag == "alert":
            self.say("alert", f"received: {json.dumps(payload, ensure_ascii=False)}", at)
        elif tag == "connected":
            url, gap = payload
            self._disconnected = False
            if gap is None:
                self.say("stream", f"eventd connected to {url}", at)
            else:
                self.counts["reconnects"] += 1
                self.say("stream", f"reconnected after {gap:.1f} s; eventd emitted a `connected` "
                                   "event with the gap, for rules to react to", at)
        elif tag == "disconnected":
            reason, retry_in, was_connected = payload
            self._disconnected = True
            if was_connected:
                self.say("stream", f"connection lost ({reason}); eventd reconnects in "
                                   f"{retry_in:.1f} s", at)
            else:
                self.say("stream", f"cannot connect ({reason}); eventd tries again in "
                                   f"{retry_in:.1f} s", at)
        elif tag == "backfilled":
            self.say("stream", "eventd asked the REST API for actions missed during the gap: "
                               f"{payload} found", at)
        elif tag == "throttled":
            self._pending.pop(payload, None)
            self.say("match", f"rule {payload} again, but throttled: no actions this time", at)
        elif tag == "delivered":
            kind, rule, message, result = payload
            self._flush_matches(rule, at)
            if kind == "log":
                self.say("log", message, at)
            elif kind in ("webhook", "alertmanager"):
                self.say("action", f"{kind} for rule {rule} -> alert receiver: {result}", at)
            elif kind != "audit":
                self.say("action", f"{kind} for rule {rule}: {result}", at)
        elif tag == "dead":
            kind, rule, reason = payload
            self._flush_matches(rule, at)
            self.say("action", f"{kind} for rule {rule} gave up: {reason} (a dead letter)", at)
        elif tag == "reloaded":
            ok, rules = payload
            self.say("eventd", f"rules reloaded: {rules} rules" if ok
                     else f"rule reload failed: keeping the {rules} rules in force", at)

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

    def _event(self, event: Mapping[str, Any], at: float) -> None:
        text = self._describe(str(event.get("type")), str(event.get("action")),
                              str(event.get("state")), str(event.get("resource_uri")))
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
        values = {**args, "node": int(args.get("index", 0)) + 1}
        try:
            text = _STORIES[step].format(**values)
        except (KeyError, ValueError):
            text = f"{step} {args}"
        if step == "burst":
            self._burst_left = max(0, int(args.get("count", 0)))
            self._burst_hidden = -1  # the first event of the burst is shown
        self.say("cloud", text, at)
