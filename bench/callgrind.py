"""CPU per event, counted: instructions under callgrind, for eventd and the bare loop (issue 26).

`python bench/callgrind.py [--only ROW ...] [--n1 5000] [--n2 15000]`, also run by `make bench`
(alone: `make bench BENCH_ARGS="--only callgrind"`). Wall clock on a shared 2-core machine moves
with the neighbours' load; an instruction count does not. Each row is counted twice, on a
stream of N1 and of N2 events from bench/blaster.py (pre-framed, closes after the last event),
with the process under `valgrind --tool=callgrind` and PYTHONHASHSEED=0:

    instructions per event = (I(N2) - I(N1)) / (N2 - N1)

so start-up and shutdown cancel out. The bare loops (bench/clients.py baseline) end at the
close; eventd runs without a metrics port (nothing polls it) and gets SIGTERM when it logs
that the stream closed (for audit and webhook rows: once every line or webhook arrived). The
blaster is stopped the moment eventd logs the close, so eventd's reconnection (and the REST
backfill it would start) is refused in every run alike.

Rows: the bare websocket-client recv() loop with wsaccel installed and skip_utf8_validation
(the honest baseline: eventd does not validate UTF-8 either), the same loop validating; eventd
with 1, 100 and 1,000 rules of rulegen.scaled (each rule follows one object, so matches grow
with rules: 0.75 and 7.4 per event at 100 and 1,000); 100 rules plus an audit action on
every event; 100 rules plus a webhook on 10% of events (node and nodecluster events);
`eventd_wall`, the configuration of the wall-clock bench's 100-rule row (bench/run.py:
rulegen.rules(100), 1.98 matches an event, a metrics port, so the console's Live ring listens
to every event; nothing scrapes it during the count), the wall target's proxy. The
cost of one matched rule is the 1,000-rule row minus the 100-rule row, over the matches
they differ by (counted in-process on the same stream with eventd's own RuleSet).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import rulegen  # noqa: E402
import streamgen  # noqa: E402
from harness import BENCH, PYTHON, ROOT, BenchError  # noqa: E402

N1, N2 = 5_000, 15_000
ROWS = ("bare", "bare_validating", "eventd_1", "eventd_100", "eventd_1000", "eventd_audit",
        "eventd_webhook", "eventd_wall")
#: issue 26's targets, instructions per event
TARGETS = {"eventd_1": 25_000, "eventd_100": 30_000, "eventd_1000": 50_000}
TARGET_PER_MATCH = 2_000
LOST = "stream lost ("  # what eventd logs (WARNING) when a connection ends
CLOSED = "stream lost (closed)"  # ... when the blaster closed it after the last event
WEBHOOK_TYPES = ("node", "nodecluster")  # 10% of the blaster's mix


def say(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def valgrind(out: Path) -> list[str]:
    """The callgrind prefix of a command; only the total is read, so collect nothing else."""
    exe = shutil.which("valgrind")
    if exe is None:
        raise BenchError("valgrind is not installed (Debian package `valgrind`)")
    return [exe, "--tool=callgrind", "-q", f"--callgrind-out-file={out}"]


def total_instructions(out: Path) -> int:
    """The `totals:` (or `summary:`) line of a callgrind output file: Ir over every thread."""
    text = out.read_text()
    found = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.MULTILINE)
    if found is None:
        raise BenchError(f"no totals in {out}")
    return int(found.group(1))


#: another checkout's eventd to count (--code DIR), e.g. the commit before a change
CODE: Path | None = None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCKERCLOUD_", "EVENTD_", "PYTHON"))}
    env["PYTHONHASHSEED"] = "0"
    if CODE is not None:
        env["PYTHONPATH"] = str(CODE)
    return env


WSACCEL: dict[str, str | None] = {}  # what the bare loop reported: wsaccel's version or None


def count_bare(n: int, work: Path, validate: bool) -> int:
    """The bare websocket-client loop over n events, counted."""
    out = work / f"bare-{n}-{int(validate)}.out"
    with harness.blaster("--events", str(n)) as b:
        cmd = [*valgrind(out), PYTHON, str(BENCH / "clients.py"), "baseline", b.url,
               "--events", str(n)] + ([] if validate else ["--skip-utf8"])
        result = harness.run_client(cmd, _env(), 600 + n / 20)
    if result["events"] != n:
        raise BenchError(f"bare loop got {result['events']} of {n} events")
    WSACCEL["version"] = result.get("wsaccel")
    return total_instructions(out)


@dataclass
class EventdRun:
    """One eventd row: its rules, and what must have happened before SIGTERM."""

    rules: list[dict[str, Any]]
    done: Callable[[Path, int, Any], bool] | None = None  # (workdir, n, receiver) -> finished?
    metrics: bool = False  # a metrics port (and so the console and its Live ring), never scraped


def count_eventd(n: int, work: Path, run: EventdRun, rest_host: str, receiver: Any) -> int:
    """eventd over n events, SIGTERM once it logged the close (and `done` holds), counted."""
    out = work / "eventd.out"
    rules = rulegen.write(work / "rules", "rules", run.rules).parent
    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    with harness.blaster("--events", str(n)) as b:
        env = _env()
        env.update({"DOCKERCLOUD_STREAM_HOST": b.host, "DOCKERCLOUD_REST_HOST": rest_host,
                    "DOCKERCLOUD_USER": "bench", "DOCKERCLOUD_APIKEY": "bench"})
        # Pings every 10 s from a process slowed 50-fold by callgrind, on a busy machine, end
        # in pong timeouts; a run has no use for them (the blaster's reader answers them).
        cmd = [*valgrind(out), PYTHON, "-m", "eventd", "run", "--rules", str(rules),
               "--state-dir", str(state), "--log-level", "WARNING",
               "--ping-interval", "1h", "--pong-timeout", "1h",
               # SIGTERM lets the engine drain what was read: all of it, however slow
               "--shutdown-timeout", "1h"]
        if run.metrics:
            cmd += ["--metrics-addr", f"127.0.0.1:{harness.free_port()}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=work)
        closed = threading.Event()
        lost: list[str] = []  # the stream lost for another reason: the run is void
        tail: list[str] = []

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                tail.append(line)
                del tail[:-20]
                if LOST in line and CLOSED not in line:
                    lost.append(line.strip())
                if CLOSED in line and not closed.is_set():
                    # At once, before eventd's backoff (0-1 s) ends: a reconnect would start a
                    # backfill over REST (importing requests), in one run and not the other.
                    harness.kill(b.proc)
                    closed.set()

        threading.Thread(target=pump, daemon=True).start()
        try:
            deadline = time.monotonic() + 600 + n / 10
            while not (closed.is_set() and (run.done is None or run.done(work, n, receiver))):
                if proc.poll() is not None:
                    raise BenchError(f"eventd exited {proc.returncode}: {''.join(tail)[-600:]}")
                if lost:
                    raise BenchError(f"eventd lost the stream before its end: {lost[0]}")
                if time.monotonic() > deadline:
                    raise BenchError(f"eventd did not finish {n} events: {''.join(tail)[-600:]}")
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(300)
        finally:
            harness.kill(proc)
    if code != 0:
        raise BenchError(f"eventd exited {code} after SIGTERM: {''.join(tail)[-600:]}")
    return total_instructions(out)


def _audited(work: Path, n: int, _receiver: Any) -> bool:
    try:
        with open(work / "audit.jsonl", "rb") as f:
            return sum(1 for _ in f) >= n
    except OSError:
        return False


def stream_types(n: int) -> list[dict[str, Any]]:
    """The events the blaster sends for n (same seed: same types, states and parents)."""
    stream = streamgen.build_stream(n)
    data, events, start = bytes(stream.data), [], 0
    for end in stream.ends:
        frame = data[start:end]
        start = end
        header = 2 if frame[1] < 126 else 4
        events.append(json.loads(frame[header:]))
    return events


def matches_per_event(rules: list[dict[str, Any]], events: list[dict[str, Any]],
                      work: Path) -> float:
    """Rule matches per event, by eventd's own RuleSet, on the stream the row reads."""
    sys.path.insert(0, str(ROOT))
    from eventd.ruleset.loader import load_rules

    path = rulegen.write(work, "count", rules)
    ruleset = load_rules([path], {})
    return sum(len(ruleset.match(dict(e))) for e in events) / len(events)


def measure(rows: tuple[str, ...], n1: int = N1, n2: int = N2) -> dict[str, dict[str, Any]]:
    """Every asked row: I(N1), I(N2), instructions per event, matches per event."""
    results: dict[str, dict[str, Any]] = {}
    # Byte-compile first: the first run of freshly edited code would count the compiling.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str((CODE or ROOT) / "eventd")],
                   check=False, capture_output=True)
    events = stream_types(n2)
    webhooks = {n: sum(1 for e in events[:n] if e["type"] in WEBHOOK_TYPES) for n in (n1, n2)}
    with tempfile.TemporaryDirectory(prefix="eventd-callgrind-") as tmp, \
            harness.rest_stub() as rest, harness.webhook_receiver() as hook:
        tmp_path = Path(tmp)
        rest_host = f"http://127.0.0.1:{rest.server_port}/"
        hook_url = f"http://127.0.0.1:{hook.server_port}/hook"
        counter = iter(range(1_000_000))

        def work() -> Path:
            path = tmp_path / f"run{next(counter)}"
            path.mkdir()
            return path

        def runs(name: str) -> EventdRun | None:
            if name == "eventd_1":
                return EventdRun(rulegen.scaled(1))
            if name == "eventd_100":
                return EventdRun(rulegen.scaled(100))
            if name == "eventd_1000":
                return EventdRun(rulegen.scaled(1000))
            if name == "eventd_audit":
                # the audit path is relative: eventd runs in the row's work directory
                return EventdRun(rulegen.scaled(100) + [rulegen.audit_rule(Path("audit.jsonl"))],
                                 _audited)
            if name == "eventd_webhook":
                rule = {"name": "hook-10pct", "match": {"type": list(WEBHOOK_TYPES)},
                        "actions": [{"webhook": {"url": hook_url, "json": {
                            "uuid": "{{ event.uuid }}", "state": "{{ event.state }}"}}}]}
                return EventdRun(rulegen.scaled(100) + [rule], lambda _w, n, r: len(r.hits) >= webhooks[n])
            if name == "eventd_wall":
                # the wall-clock bench's eventd_100 (bench/run.py): rulegen.rules(100), 1.98
                # matches an event, the metrics port on (the console's Live ring listens)
                return EventdRun(rulegen.rules(100), metrics=True)
            return None

        for name in rows:
            say(f"callgrind {name}: {n1:,} and {n2:,} events")
            row: dict[str, Any] = {}
            try:
                counts = {}
                for n in (n1, n2):
                    t0 = time.monotonic()
                    run = runs(name)
                    if run is None:
                        counts[n] = count_bare(n, work(), validate=name == "bare_validating")
                    else:
                        hook.hits.clear()
                        counts[n] = count_eventd(n, work(), run, rest_host, hook)
                    say(f"  {n:,} events: {counts[n]:,} instructions "
                        f"({time.monotonic() - t0:.0f} s)")
                row = {"i_n1": counts[n1], "i_n2": counts[n2],
                       "per_event": (counts[n2] - counts[n1]) / (n2 - n1)}
                if name.startswith("bare"):
                    row["wsaccel"] = WSACCEL.get("version")
                run = runs(name)
                if run is not None:
                    row["matches_per_event"] = matches_per_event(run.rules, events, work())
            except BenchError as exc:
                row = {"error": str(exc)}
                say(f"  failed: {exc}")
            results[name] = row
    return results


def per_match(results: dict[str, dict[str, Any]]) -> float | None:
    """The cost of one more matched rule: 1,000 rules minus 100, over their matches' difference."""
    hi, lo = results.get("eventd_1000", {}), results.get("eventd_100", {})
    if "per_event" not in hi or "per_event" not in lo:
        return None
    extra = hi["matches_per_event"] - lo["matches_per_event"]
    return (hi["per_event"] - lo["per_event"]) / extra if extra > 0 else None


LABELS = {
    "bare": "bare websocket-client recv() loop, wsaccel, skip_utf8_validation=True (baseline)",
    "bare_validating": "same loop validating UTF-8 (wsaccel)",
    "eventd_1": "eventd, 1 rule",
    "eventd_100": "eventd, 100 rules",
    "eventd_1000": "eventd, 1,000 rules",
    "eventd_audit": "eventd, 100 rules + audit on every event",
    "eventd_webhook": "eventd, 100 rules + webhook on 10% of events",
    "eventd_wall": "eventd, the wall-clock bench's 100 rules (rulegen.rules), metrics port on",
}


def table(results: dict[str, dict[str, Any]], n1: int = N1,
          n2: int = N2) -> list[dict[str, str]]:
    """Rows for bench/run.py's table: figure, value, ratio to the bare loop, target, met."""
    base = results.get("bare", {}).get("per_event")
    out = []
    for name, row in results.items():
        figure = f"callgrind: {LABELS.get(name, name)}"
        if name.startswith("bare") and not row.get("wsaccel"):
            figure = figure.replace("wsaccel", "WITHOUT wsaccel")
        if "matches_per_event" in row:
            figure += f" ({row['matches_per_event']:.2f} matches/event)"
        if "error" in row:
            out.append({"figure": figure, "value": f"failed: {row['error'][:120]}",
                        "ratio": "n/a", "target": "-", "met": "n/a"})
            continue
        value = row["per_event"]
        target = TARGETS.get(name)
        out.append({"figure": figure, "value": f"{value:,.0f} instructions/event",
                    "ratio": f"{value / base:.2f}x" if base else "n/a",
                    "target": f"<= {target:,}" if target else "-",
                    "met": ("met" if value <= target else "NOT met") if target else "-"})
    cost = per_match(results)
    if cost is not None:
        out.append({"figure": "callgrind: one more matched rule, log action below the level "
                              "((1,000 rules - 100 rules) / their matches' difference)",
                    "value": f"{cost:,.0f} instructions", "ratio": "-",
                    "target": f"<= {TARGET_PER_MATCH:,}",
                    "met": "met" if cost <= TARGET_PER_MATCH else "NOT met"})
    if out:
        out.append({"figure": f"callgrind method: (I({n2:,}) - I({n1:,})) / {n2 - n1:,}, "
                              "PYTHONHASHSEED=0, `python bench/callgrind.py`",
                    "value": "-", "ratio": "-", "target": "-", "met": "-"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--n1", type=int, default=N1)
    parser.add_argument("--n2", type=int, default=N2)
    parser.add_argument("--code", type=Path, default=None,
                        help="count the eventd of another checkout (e.g. `git worktree add`)")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "callgrind.json")
    args = parser.parse_args(argv)
    global CODE
    CODE = args.code.resolve() if args.code else None
    results = measure(tuple(args.only), args.n1, args.n2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print("| figure | value | ratio to baseline | target | met |\n|---|---|---|---|---|")
    for r in table(results, args.n1, args.n2):
        print(f"| {r['figure']} | {r['value']} | {r['ratio']} | {r['target']} | {r['met']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
