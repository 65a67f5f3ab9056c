"""Die-to-webhook latency on a real Docker Engine: from the Engine's timeNano of a container's
`die` to the webhook arriving at a receiver, through `eventd run --source docker`.

`python bench/docker_latency.py [--count 100] [--parallel 1] [--enrich none|resource|logs]
[--command false|live] [--runs 1] [--breakdown]` (issues 16 and 26). It starts its own dockerd
(tests/docker_engine.py: rootful, vfs, all state in a temp dir; Debian's docker.io and
busybox-static), a receiver that stamps each request on arrival, and, for each run, a fresh
eventd as a subprocess with the shipped sample rule `docker-container-died`
(rules/docker/container-died.yaml: die with a non-zero exit code, not caused by eventd,
throttled per container, a warning log line and a webhook), its webhook also carrying
`timeNano` and the event's uuid. `--enrich resource` adds `enrich: resource` (one inspect per
die, as rules/container-crash.yaml asks on Docker Cloud) and puts the container's RestartCount
in the webhook; `--enrich logs` adds what rules/incidents/crash-loop-pagerduty.yaml asks
(`logs: {lines: 20}`, `history: {window: 1h}`). Then it runs `--count` containers that exit
with code 1, `--parallel` at a time, and prints p50, p90, p99 and max of (arrival - timeNano)
per run, and their medians over `--runs`. `--command false` (the default) runs `false`, which
exits within milliseconds of its start; `--command live` runs `sh -c 'echo x; sleep 0.2; exit
1'`, a container that lives a little as real services do. With `--enrich logs` eventd follows
each container's logs from its `start` event (eventd.sources.docker.follow) and the run says
how many dies took the tail a follower held (`followed`, from eventd's /metrics) instead of
reading the logs at die, and of those how many had their stream open before the die (`in
time`; a late one waited for the Engine's clean-up as a read at die does): a `false` container
is often gone before its start event reaches eventd.

`--engine-floor` runs no eventd: a bare reader asks the Engine for each dead container's
logs (and, beside it, lists the container, which does not wait for the container's lock), from
the die's timeNano to the answer: the least die -> webhook can take with `enrich: logs`;
`heard` is when the die itself reached that reader, the least any rule can take.
`--with-floor` runs that floor after each run of eventd (and of `--baseline`) on the same
Engine, so that both see the same Engine and load, alternately; with `--enrich resource` the
floor also inspects each dead container (as that rule does). `--row PARALLEL:COMMAND:ENRICH`
(repeated) measures several rows one after the other on one Engine, in one sitting, instead
of `--parallel`, `--command` and `--enrich`; with either, a table of every row ends the run.

`--breakdown` runs eventd with `--log-level DEBUG --log-format json` and says where the time
goes, from the stage lines eventd logs at DEBUG for each event (each stage's p50/p90/p99 in ms):

  engine->read      the Engine's stream to eventd's reader thread (a bare docker-py reader in
                    this process, `engine->bare`, shows what the Engine and the CPU cost alone)
  read->matched     the hand-off to the engine thread, enrichment, and rule matching; with
                    `enrich: resource`, inside it: read->enriching (the hand-off to the
                    engine thread), enrich wait (how long that thread waited for the
                    inspect) and inspect (Engine) (the call itself, started by the reader
                    thread as it read the event, on a pool of its own); with `enrich: logs`:
                    read->logs read (until the read starts: the pool's queue), read->logs
                    asked (the hand-off, and the inspect if any), logs wait (how
                    long the engine thread waited for the logs), logs read (Engine) (the
                    read itself, started early on the same pool) and logs->matched (the
                    history in the store, the `when`)
  matched->spooled  throttle, rendering and the spool's commit (SQLite, fsync)
  spooled->sending  the wait in the webhook lane (behind the jobs before it)
  sending->arrived  the HTTP request to the receiver

Engine, eventd and receiver share one host clock; eventd's log times are whole milliseconds.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.docker_engine import DockerEngine  # noqa: E402

#: what each --enrich adds to the sample rule (and to its webhook's body)
ENRICH = {
    "none": ("", ""),
    "resource": ("enrich: resource", 'restarts: "{{ resource.RestartCount }}"'),
    "logs": ("enrich: {logs: {lines: 20}, history: {window: 1h, max: 50}}",
             'crashes: "{{ history.count }}"\n'
             '            last_line: "{{ logs[-1] if logs else \'\' }}"'),
}

#: what each --command runs in each container (exit code 1 either way)
COMMANDS = {"false": ["false"], "live": ["sh", "-c", "echo x; sleep 0.2; exit 1"]}

#: the stages of --breakdown, in order: (name, from, to)
STAGES = (("engine->bare", "engine", "bare"), ("engine->read", "engine", "read"),
          ("read->matched", "read", "matched"), ("  read->enriching", "read", "wait_start"),
          ("  enrich wait", "wait_start", "wait_end"),
          ("  inspect (Engine)", "inspect_start", "inspect_end"),
          ("  read->logs read", "read", "logs_start"),
          ("  read->logs asked", "read", "logs_wait_start"),
          ("  logs wait", "logs_wait_start", "logs_wait_end"),
          ("  logs read (Engine)", "logs_start", "logs_end"),
          ("  logs->matched", "logs_wait_end", "matched"),
          ("matched->spooled", "matched", "spooled"), ("spooled->sending", "spooled", "sending"),
          ("sending->arrived", "sending", "arrived"), ("engine->arrived", "engine", "arrived"))


#: loggers whose warnings the bench expects (the rule's `log` action; settings left unset)
QUIET_LOGGERS = frozenset({"eventd.actions.log", "eventd.delivery.signing", "eventd.pipeline"})


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Stamping:
    """A webhook receiver that notes when each body arrived (time.time_ns on receipt)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, dict[str, Any]]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                at = time.time_ns()
                with owner.lock:
                    owner.arrivals.append((at, json.loads(body)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/die"


class BareReader:
    """A bare docker-py `/events` reader: when each `die` reached a client doing nothing else."""

    def __init__(self, engine: DockerEngine) -> None:
        self.seen: dict[int, int] = {}  # timeNano -> time.time_ns on receipt
        self._client = engine.client()
        self._stream = self._client.events(decode=True, filters={"event": "die"})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._stream:
                self.seen[int(raw.get("timeNano", 0))] = time.time_ns()
        except Exception:  # noqa: BLE001, S110 - closed at the end of the run
            pass

    def close(self) -> None:
        self._stream.close()
        self._client.close()
        self._thread.join(5)


#: rules/docker/container-died.yaml's rule, its webhook also carrying timeNano and the uuid
SAMPLE = """
rules:
  - name: docker-container-died
    match:
      type: container
      action: die
      attributes.exitCode: {not: "0"}
      caused_by_eventd: false
    @ENRICH@
    throttle: {key: "{{ event.id }}", window: 1m}
    actions:
      - log:
          level: warning
          message: "container {{ event.name }} ({{ event.attributes.image }}) exited with code {{ event.attributes.exitCode }}"
      - webhook:
          url: "@URL@"
          json:
            text: "container {{ event.name }} exited with code {{ event.attributes.exitCode }}"
            container: "{{ event.name }}"
            id: "{{ event.id }}"
            image: "{{ event.attributes.image }}"
            exitCode: "{{ event.attributes.exitCode }}"
            service: "{{ event.attributes['com.docker.compose.service'] | default('') }}"
            at: "{{ event.datetime }}"
            nano: "{{ event.timeNano }}"
            uuid: "{{ event.uuid }}"
            @EXTRA@
"""  # noqa: E501 - the sample's lines as shipped


def rules_text(url: str, enrich: str) -> str:
    """The sample rule docker-container-died (as shipped), plus timeNano, uuid and `enrich`."""
    clause, extra = ENRICH[enrich]
    return SAMPLE.replace("@ENRICH@", clause).replace("@URL@", url).replace("@EXTRA@", extra)


def _log_ns(stamp: str) -> int:
    """eventd's JSON log time (`2026-12-05T03:41:02.123Z`) as POSIX nanoseconds."""
    whole, _, millis = stamp.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(millis or 0) * 1_000_000


def stages_from_log(path: Path) -> dict[str, dict[str, int]]:
    """Each event's stage times (POSIX ns) from eventd's DEBUG JSON log, by event uuid."""
    times: dict[str, dict[str, int]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = record.get("message", "")
        at = _log_ns(record.get("time", ""))
        words = message.split()
        if message.startswith("read container die event "):
            times.setdefault(words[-1], {})["read"] = at
        elif message.startswith("inspected container ") and " for event " in message:
            uuid, millis = words[5], float(words[7])
            times.setdefault(uuid, {}).update(
                inspect_start=at - int(millis * 1e6), inspect_end=at)
        elif message.startswith("resource of container ") and " for event " in message:
            uuid, millis = words[6], float(words[8])
            times.setdefault(uuid, {}).update(wait_start=at - int(millis * 1e6), wait_end=at)
        elif message.startswith("read logs of container ") and " for event " in message:
            uuid, millis = words[7], float(words[9])
            times.setdefault(uuid, {}).update(logs_start=at - int(millis * 1e6), logs_end=at)
        elif message.startswith("logs of container ") and message.endswith(")"):
            uuid, millis = words[6], float(words[8])
            times.setdefault(uuid, {}).update(logs_wait_start=at - int(millis * 1e6),
                                              logs_wait_end=at)
        elif message.startswith("rule docker-container-died matched event "):
            times.setdefault(words[4], {})["matched"] = at
        elif message.startswith("webhook job ") and message.endswith(" spooled"):
            times.setdefault(words[5], {})["spooled"] = at
        elif message.startswith("webhook job ") and message.endswith(": attempt starts"):
            times.setdefault(words[5].rstrip(":"), {}).setdefault("sending", at)
    return times


def warnings_in(path: Path) -> list[str]:
    """eventd's warnings and errors, but for the sample rule's own log line per die and the
    start-up's notes on settings the bench leaves unset."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") in ("WARNING", "ERROR", "CRITICAL") \
                and record.get("logger") not in QUIET_LOGGERS:
            found.append(f"{record.get('logger')}: {record.get('message')}")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric_value(port: int, sample: str) -> float:
    """One sample of eventd's /metrics (`name` or `name{labels}`); nan when eventd does not
    answer (yet) or has no such sample (an older tree)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def _followed(port: int, outcome: str = "taken") -> float:
    """eventd_docker_log_follows_total{outcome} from eventd's /metrics (nan when that eventd
    has no followers: an older tree)."""
    return _metric_value(port, f'eventd_docker_log_follows_total{{outcome="{outcome}"}}')


def run_once(engine: DockerEngine, receiver: Stamping, workdir: Path, tag: str, count: int,
             parallel: int, enrich: str, breakdown: bool,
             source: Path | None = None, command: str = "false") -> dict[str, Any]:
    """One run with a fresh eventd (the tree `source`'s, else this one's); the latency figures
    in milliseconds (and the stages)."""
    rules = workdir / f"rules-{tag}.yaml"
    rules.write_text(rules_text(receiver.url, enrich))
    log_path = workdir / f"eventd-{tag}.log"
    level = ["--log-level", "DEBUG", "--log-format", "json"] if breakdown else [
        "--log-level", "WARNING", "--log-format", "json"]
    env = dict(os.environ, DOCKER_HOST=engine.host, EVENTD_SOURCE="docker")
    if source is not None:  # `python -m eventd` finds that tree's package first
        env["PYTHONPATH"] = str(source)
    with receiver.lock:
        receiver.arrivals.clear()
    bare = BareReader(engine) if breakdown else None
    names = [f"lat-{tag}-{i}" for i in range(count)]
    port = _free_port()
    followed = in_time = not_ended = float("nan")
    with open(log_path, "wb") as log:
        eventd = subprocess.Popen(
            [sys.executable, "-m", "eventd", "run", "--rules", str(rules), "--state-dir",
             str(workdir / f"state-{tag}"), "--metrics-addr", f"127.0.0.1:{port}", *level],
            env=env, stderr=log, cwd=source)
        try:
            # connected: under load a start can take longer than the 2 s once slept here,
            # and the dies before it were lost (the Engine's stream starts at the connect)
            deadline = time.monotonic() + 60
            while _metric_value(port, "eventd_stream_connected") != 1.0 \
                    and time.monotonic() < deadline and eventd.poll() is None:
                time.sleep(0.1)

            def one(name: str) -> None:
                engine.run(name, COMMANDS[command])

            began = time.monotonic()
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(one, names))
            deadline = time.monotonic() + 30
            while len(receiver.arrivals) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed = time.monotonic() - began
            if enrich == "logs":
                followed, in_time = _followed(port), _followed(port, "in_time")
                not_ended = _followed(port, "not_ended")
        finally:
            eventd.terminate()
            eventd.wait(15)
            if bare is not None:
                bare.close()
            engine.remove(*names)
    with receiver.lock:
        arrivals = list(receiver.arrivals)
    latencies = [(at - int(body["nano"])) / 1e6 for at, body in arrivals]
    figures: dict[str, Any] = {
        "count": len(latencies), "expected": count, "seconds": elapsed,
        "p50_ms": _percentile(latencies, 0.50), "p90_ms": _percentile(latencies, 0.90),
        "p99_ms": _percentile(latencies, 0.99), "max_ms": max(latencies, default=float("nan"))}
    figures["followed"], figures["in_time"] = followed, in_time
    figures["not_ended"] = not_ended
    figures["warnings"] = warnings_in(log_path)
    figures["logs_unread"] = sum("enrich: logs of " in line and " not read (" in line
                                 for line in log_path.read_text(errors="replace").splitlines())
    if breakdown:
        assert bare is not None
        times = stages_from_log(log_path)
        for at, body in arrivals:
            stage = times.setdefault(body["uuid"], {})
            stage.update(engine=int(body["nano"]), arrived=at)
            if int(body["nano"]) in bare.seen:
                stage["bare"] = bare.seen[int(body["nano"])]
        figures["stages"] = {
            name: [(stage[end] - stage[start]) / 1e6 for stage in times.values()
                   if start in stage and end in stage and "arrived" in stage]
            for name, start, end in STAGES}
    return figures


class EngineFloor:
    """No eventd: a bare docker-py reader that, as each `die` arrives, asks the Engine for the
    container's last 20 lines (as `enrich: logs` does, on a pool of clients kept open) and,
    beside it, lists the container (`GET /containers/json`, which reads the Engine's in-memory
    view, not the container under its lock): from the die's timeNano to each answer. The logs'
    figure is the least die -> webhook can take with `enrich: logs` on this Engine and load."""

    def __init__(self, engine: DockerEngine, workers: int = 16, inspect: bool = False) -> None:
        self.logs: dict[int, int] = {}  # timeNano -> time.time_ns when the logs were read
        self.listed: dict[int, int] = {}  # timeNano -> time.time_ns when the list answered
        self.inspected: dict[int, int] = {}  # timeNano -> time.time_ns when inspected
        #: timeNano -> time.time_ns when the die reached this reader (the least any rule's
        #: die -> webhook can take, whatever its enrichment: `heard`)
        self.heard: dict[int, int] = {}
        self._inspect = inspect
        self._clients = [engine.client() for _ in range(3 * workers)]
        self._free = list(self._clients)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(3 * workers)
        self._events = engine.client()
        self._stream = self._events.events(decode=True, filters={"event": "die"})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _call(self, into: dict[int, int], nano: int, cid: str, what: str) -> None:
        with self._lock:
            client = self._free.pop()
        try:
            if what == "logs":
                client.logs(cid, stdout=True, stderr=True, tail=20)
            elif what == "inspected":
                client.inspect_container(cid)
            else:
                client.containers(all=True, filters={"id": cid})
            into[nano] = time.time_ns()
        finally:
            with self._lock:
                self._free.append(client)

    def _read(self) -> None:
        try:
            for raw in self._stream:
                nano, cid = int(raw.get("timeNano", 0)), raw.get("id", "")
                self.heard[nano] = time.time_ns()
                self._pool.submit(self._call, self.logs, nano, cid, "logs")
                self._pool.submit(self._call, self.listed, nano, cid, "listed")
                if self._inspect:
                    self._pool.submit(self._call, self.inspected, nano, cid, "inspected")
        except Exception:  # noqa: BLE001, S110 - closed at the end of the run
            pass

    def close(self) -> None:
        self._stream.close()
        self._events.close()
        self._thread.join(5)
        self._pool.shutdown(wait=True)
        for client in self._clients:
            client.close()


def floor_answers(floor: EngineFloor, inspect: bool) -> list[tuple[str, dict[int, int]]]:
    """The floor's answers, by name: the logs, the list (and the inspect when asked)."""
    whats = [("heard", floor.heard), ("logs", floor.logs), ("listed", floor.listed)]
    return whats + [("inspected", floor.inspected)] if inspect else whats


def floor_once(engine: DockerEngine, tag: str, count: int, parallel: int,
               command: str = "false", inspect: bool = False) -> dict[str, Any]:
    """One run of --engine-floor: die -> logs read and die -> listed (and, with `inspect`,
    die -> inspected), in milliseconds."""
    floor = EngineFloor(engine, inspect=inspect)
    names = [f"flo-{tag}-{i}" for i in range(count)]
    try:
        began = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda name: engine.run(name, COMMANDS[command]), names))
        deadline = time.monotonic() + 30
        while len(floor.logs) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - began
    finally:
        floor.close()
        engine.remove(*names)
    figures: dict[str, Any] = {"seconds": elapsed, "expected": count}
    for what, seen in floor_answers(floor, inspect):
        latencies = [(at - nano) / 1e6 for nano, at in seen.items()]
        figures[what] = {"count": len(latencies), "expected": count, "seconds": elapsed,
                         "p50_ms": _percentile(latencies, 0.50),
                         "p90_ms": _percentile(latencies, 0.90),
                         "p99_ms": _percentile(latencies, 0.99),
                         "max_ms": max(latencies, default=float("nan"))}
    return figures


def report(figures: dict[str, Any], label: str) -> str:
    """One line of figures."""
    return (f"{label}: die -> webhook over {int(figures['count'])}/{int(figures['expected'])} "
            f"containers ({figures['seconds']:.1f} s): p50 {figures['p50_ms']:.1f} ms, "
            f"p90 {figures['p90_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
            f"max {figures['max_ms']:.1f} ms"
            + (f"; logs not read (budget spent or failed): {figures['logs_unread']:g}"
               if "logs_unread" in figures else "")
            + (f"; logs taken from a follower: {figures['followed']:g} (its stream open "
               f"before the die: {figures['in_time']:g})"
               if figures.get("followed", float("nan")) == figures.get("followed") else "")
            + (f"; streams not ended within half the budget (read instead or beside): "
               f"{figures['not_ended']:g}"
               if figures.get("not_ended", float("nan")) == figures.get("not_ended") else ""))


def breakdown_table(runs: list[dict[str, Any]]) -> str:
    """Each stage's p50/p90/p99 (ms), the median over the runs."""
    lines = [f"{'stage':<18} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8}  (ms; median of "
             f"{len(runs)} run(s))"]
    for name, _, _ in STAGES:
        samples = [run["stages"][name] for run in runs]
        if not any(samples):
            continue
        cells = [statistics.median(_percentile(values, q) for values in samples)
                 for q in (0.50, 0.90, 0.99)]
        lines.append(f"{name:<18} {min(map(len, samples)):>5} "
                     + " ".join(f"{cell:>8.1f}" for cell in cells))
    return "\n".join(lines)


def _row(text: str) -> tuple[int, str, str]:
    """`--row 16:false:logs` as (parallel, command, enrich)."""
    parallel, command, enrich = text.split(":")
    if command not in COMMANDS or enrich not in ENRICH:
        raise argparse.ArgumentTypeError(f"{text}: PARALLEL:{'|'.join(COMMANDS)}:"
                                         f"{'|'.join(ENRICH)}")
    return int(parallel), command, enrich


def _median_of(done: list[dict[str, Any]], keys: tuple[str, ...], count: int) -> dict[str, Any]:
    median = {key: statistics.median(run[key] for run in done) for key in keys}
    median["expected"] = count
    return median


FIGURES = ("count", "seconds", "p50_ms", "p90_ms", "p99_ms", "max_ms")


def measure_row(engine: DockerEngine, receiver: Stamping, workdir: Path, args: argparse.Namespace,
                row: tuple[int, str, str], variants: list[tuple[str, Path | None]]
                ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """One row's runs on `engine`: each run the variants in turn, then (--with-floor) a floor
    run, so that eventd and the floor see the same Engine and load, alternately."""
    parallel, command, enrich = row
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
    floors: list[dict[str, Any]] = []
    what = f"{parallel} at a time, enrich {enrich}, command {command}"
    for number in range(args.runs):
        for index, (label, source) in enumerate(variants):
            figures = run_once(engine, receiver, workdir,
                               f"{parallel}{command[0]}{enrich[0]}{number}-{index}",
                               args.count, parallel, enrich, args.breakdown, source, command)
            runs[label].append(figures)
            warned = figures.get("warnings", [])
            for line in warned[:3]:
                print(f"  eventd warned: {line[:300]}", flush=True)
            if len(warned) > 3:
                print(f"  eventd warned {len(warned)} times in all", flush=True)
            print(report(figures, f"{label}, run {number + 1} ({what})"), flush=True)
        if args.with_floor:
            figures = floor_once(engine, f"{parallel}{command[0]}{enrich[0]}{number}",
                                 args.count, parallel, command, inspect=enrich == "resource")
            floors.append(figures)
            for answer in ("heard", "logs", "listed", "inspected"):
                if answer in figures:
                    print(report(figures[answer], f"engine floor, run {number + 1} ({what}): "
                                                  f"die -> {answer}").replace(
                        "die -> webhook over", "over"), flush=True)
    return runs, floors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--enrich", choices=tuple(ENRICH), default="none")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--command", choices=tuple(COMMANDS), default="false",
                        help="what each container runs: false (exits at once) or live "
                             "(echo, sleep 0.2 s, exit 1)")
    parser.add_argument("--breakdown", action="store_true",
                        help="eventd at DEBUG: say where the time goes, stage by stage")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="another tree's eventd (e.g. `git archive main | tar -x -C DIR`), "
                             "run alternately with this one's on the same Engine")
    parser.add_argument("--engine-floor", action="store_true",
                        help="no eventd: how long the Engine takes to give a dead container's "
                             "logs (the least die -> webhook can take with enrich: logs)")
    parser.add_argument("--with-floor", action="store_true",
                        help="after each run of eventd (and --baseline), a run of the engine "
                             "floor on the same Engine (with --enrich resource it inspects too)")
    parser.add_argument("--row", type=_row, action="append", default=None,
                        metavar="PARALLEL:COMMAND:ENRICH",
                        help="measure this row (repeat for more), one after the other on one "
                             "Engine; instead of --parallel, --command and --enrich")
    args = parser.parse_args()
    if args.engine_floor:
        return engine_floor(args.count, args.parallel, args.runs, args.command)
    rows = args.row or [(args.parallel, args.command, args.enrich)]
    variants: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.baseline is not None:
        variants.insert(0, (f"baseline {args.baseline}", args.baseline.resolve()))
    workdir = Path(tempfile.mkdtemp(prefix="dkb", dir="/tmp"))
    receiver = Stamping()
    measured: list[tuple[tuple[int, str, str], dict[str, list[dict[str, Any]]],
                         list[dict[str, Any]]]] = []
    try:
        with DockerEngine(workdir / "e") as engine:
            for row in rows:
                print(f"# row {row[0]}:{row[1]}:{row[2]}, load average "
                      f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
                measured.append((row, *measure_row(engine, receiver, workdir, args, row,
                                                   variants)))
    finally:
        receiver.server.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    keys = (*FIGURES, "logs_unread", "followed", "in_time", "not_ended")
    for (parallel, command, enrich), runs, floors in measured:
        what = f"{parallel} at a time, enrich {enrich}, command {command}"
        for label, done in runs.items():
            if len(done) > 1:
                print(report(_median_of(done, keys, args.count),
                             f"{label}, median of {len(done)} runs ({what})"))
            if args.breakdown:
                print(f"{label} ({what}):")
                print(breakdown_table(done))
        for answer in ("heard", "logs", "listed", "inspected"):
            if floors and answer in floors[0]:
                median = _median_of([run[answer] for run in floors], FIGURES, args.count)
                print(report(median, f"engine floor, median of {len(floors)} runs ({what}): "
                                     f"die -> {answer}").replace("die -> webhook over", "over"))
    if args.with_floor or len(rows) > 1:
        print(summary_table(measured, args.count))
    every = [run for _, runs, _ in measured for done in runs.values() for run in done]
    return 0 if all(run["count"] == run["expected"] for run in every) else 1


def summary_table(measured: list[Any], count: int) -> str:
    """One line per row and variant (and floor answer): p50 / p90 / p99 ms, medians of runs."""
    lines = ["| row | what | p50 / p90 / p99 ms |", "|---|---|---|"]
    for (parallel, command, enrich), runs, floors in measured:
        name = f"p{parallel} {command} {enrich}"
        cells = [(f"eventd {label}", _median_of(done, FIGURES, count))
                 for label, done in runs.items()]
        cells += [(f"floor: die -> {answer}",
                   _median_of([run[answer] for run in floors], FIGURES, count))
                  for answer in ("heard", "logs", "listed", "inspected") if floors and answer in floors[0]]
        for label, median in cells:
            lines.append(f"| {name} | {label} | {median['p50_ms']:.0f} / {median['p90_ms']:.0f} / "
                         f"{median['p99_ms']:.0f} |")
    return "\n".join(lines)


def engine_floor(count: int, parallel: int, runs: int, command: str = "false") -> int:
    """--engine-floor: die -> logs read and die -> listed per run, and their medians."""
    workdir = Path(tempfile.mkdtemp(prefix="dkf", dir="/tmp"))
    done: list[dict[str, Any]] = []
    try:
        with DockerEngine(workdir / "e") as engine:
            for number in range(runs):
                figures = floor_once(engine, str(number), count, parallel, command)
                done.append(figures)
                for what in ("heard", "logs", "listed"):
                    print(report(figures[what], f"engine floor, run {number + 1} ({parallel} at "
                                                f"a time): die -> {what}").replace(
                        "die -> webhook over", "over"), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if runs > 1:
        for what in ("heard", "logs", "listed"):
            median = {key: statistics.median(run[what][key] for run in done)
                      for key in ("count", "seconds", "p50_ms", "p90_ms", "p99_ms", "max_ms")}
            median["expected"] = count
            print(report(median, f"engine floor, median of {runs} runs: die -> {what}").replace(
                "die -> webhook over", "over"))
    return 0 if all(run["logs"]["count"] == count for run in done) else 1


if __name__ == "__main__":
    sys.exit(main())
