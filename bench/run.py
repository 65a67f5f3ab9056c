"""eventd's benchmark: throughput, latency, memory, recovery; ratios to a baseline run alongside.

`make bench` (or `.venv/bin/python bench/run.py [--quick] [--runs N] [--only FIGURE ...]`).
Each run of each figure is a fresh blaster process and a fresh client process; figures are
medians over runs. Rounds interleave the throughput clients, so drift on the machine hits all
of them alike. Progress goes to stderr; the markdown table (for the README) goes to stdout,
and everything measured, run by run, to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import callgrind  # noqa: E402
import harness  # noqa: E402
import rulegen  # noqa: E402
from harness import BENCH, PYTHON, ROOT, BenchError  # noqa: E402

PEER_VENV = BENCH / ".venv-peer"
PEER_PACKAGES = ("python-dockercloud==1.0.12", "websocket-client==0.37.0")
MIB = 1024.0
LATENCY_GRACE = 10.0  # seconds to wait for webhooks after the stream has ended

#: Peak RSS targets (issue 21): while streaming, and once HTTP is in use (requests loaded).
STREAMING_MIB = 42
HTTP_MIB = 46

FIGURES = ("drain", "baseline", "throughput", "peer", "latency", "memory", "spool", "recovery",
           "callgrind")


def say(message: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Config:
    """What to run, and how big."""

    runs: int
    events: int
    memory_events: int
    memory_runs: int
    spool_events: int
    latency_seconds: float
    latency_rate: float
    latency_runs: int
    recovery_segment: int
    recovery_drops: int
    only: tuple[str, ...]
    quick: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        quick = args.quick
        return cls(
            runs=args.runs or (3 if quick else 5),
            events=args.events or (20_000 if quick else 200_000),
            memory_events=args.memory_events or (300_000 if quick else 1_000_000),
            memory_runs=args.memory_runs or (1 if quick else 3),
            spool_events=args.spool_events or (100_000 if quick else 300_000),
            latency_seconds=args.latency_seconds or (5.0 if quick else 30.0),
            latency_rate=args.latency_rate,
            latency_runs=args.latency_runs or (1 if quick else 3),
            recovery_segment=500,
            recovery_drops=1,
            only=tuple(args.only or FIGURES),
            quick=quick,
        )


@dataclass
class Results:
    """Every run's raw numbers, by series name."""

    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, series: str, value: dict[str, Any]) -> None:
        self.runs.setdefault(series, []).append(value)

    def values(self, series: str, key: str) -> list[float]:
        return [r[key] for r in self.runs.get(series, []) if r.get(key) is not None]

    def median(self, series: str, key: str) -> float | None:
        vals = self.values(series, key)
        return statistics.median(vals) if vals else None


# -- one run of each kind -------------------------------------------------------------------

def _rate(events: int, start: float, done: float | None) -> float | None:
    return events / (done - start) if done and done > start else None


def run_drain(cfg: Config) -> dict[str, Any]:
    """The blaster into a raw recv_into loop: the ceiling every client is far below."""
    with harness.blaster("--events", str(cfg.events)) as b:
        out = harness.run_client([PYTHON, str(BENCH / "clients.py"), "drain", b.url,
                                  "--bytes", str(int(b.bytes) + 4)], None, 120)
        start = b.wait_for("blast_start", 10)["t"]
    seconds = out["t_done"] - start
    return {"events_per_s": cfg.events / seconds, "mib_per_s": out["bytes"] / seconds / MIB / MIB,
            "seconds": seconds, "bytes": out["bytes"]}


def run_baseline(cfg: Config, skip_utf8: bool = True) -> dict[str, Any]:
    """The bare websocket-client loop (the baseline: not validating UTF-8, as eventd)."""
    with harness.blaster("--events", str(cfg.events)) as b:
        cmd = [PYTHON, str(BENCH / "clients.py"), "baseline", b.url, "--events", str(cfg.events)]
        out = harness.run_client(cmd + (["--skip-utf8"] if skip_utf8 else []), None,
                                 60 + cfg.events / 2000)
        start = b.wait_for("blast_start", 10)["t"]
    if out["events"] != cfg.events:
        raise BenchError(f"baseline got {out['events']} of {cfg.events} events")
    return {"events_per_s": _rate(cfg.events, start, out["t_done"]),
            "seconds": out["t_done"] - start, "websocket_client": out["websocket_client"],
            "wsaccel": out.get("wsaccel")}


def peer_python() -> tuple[Path | None, str]:
    """bench/.venv-peer's python, created on first use; or None and why not."""
    python = PEER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import dockercloud, websocket; print(websocket.__version__)"]
    env = {**os.environ, "DOCKERCLOUD_AUTH": "Basic eA=="}
    if python.exists():
        done = subprocess.run(probe, capture_output=True, text=True, env=env)
        if done.returncode == 0:
            return python, done.stdout.strip()
    say(f"  creating {PEER_VENV.relative_to(ROOT)} with {' '.join(PEER_PACKAGES)} ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True,
                       capture_output=True, text=True, timeout=120)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", *PEER_PACKAGES], check=True,
                       capture_output=True, text=True, timeout=600)
        done = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=60)
    except subprocess.CalledProcessError as exc:
        return None, (exc.stderr or exc.stdout or str(exc)).strip().splitlines()[-1][:200]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)[:200]
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["import failed"])[-1][:200]
    return python, done.stdout.strip()


def run_peer(cfg: Config, python: Path) -> dict[str, Any]:
    """python-dockercloud's Events with a JSON-parsing handler."""
    with harness.blaster("--events", str(cfg.events)) as b:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCLOUD_")}
        # The SDK builds its Basic header from DOCKERCLOUD_USER/APIKEY with b64encode(str),
        # which raises TypeError on Python 3 at import; DOCKERCLOUD_AUTH is sent as is.
        env.update({"DOCKERCLOUD_STREAM_HOST": b.host,
                    "DOCKERCLOUD_AUTH": "Basic " + base64.b64encode(b"bench:bench").decode()})
        out = harness.run_client([str(python), str(BENCH / "peer_client.py"), str(cfg.events)],
                                 env, 60 + cfg.events / 2000)
        start = b.wait_for("blast_start", 10)["t"]
    return {"events_per_s": _rate(cfg.events, start, out["t_done"]),
            "seconds": out["t_done"] - start, "websocket_client": out["websocket_client"]}


SANITY = ("eventd_events_invalid_total", "eventd_events_duplicate_total", "eventd_dropped_total",
          "eventd_internal_errors_total", "eventd_template_errors_total")


def _sanity(values: dict[str, float]) -> dict[str, float]:
    return {name: harness.EventdProcess.total(values, name) for name in SANITY}


def run_eventd(cfg: Config, work: Path, rules: Path, events: int, rest_host: str,
               condition: Callable[[dict[str, float]], bool] | None = None,
               track_memory: bool = False, rest_hits: list[str] | None = None) -> dict[str, Any]:
    """eventd against a fresh blaster: time from the first byte to N events counted."""
    with harness.blaster("--events", str(events)) as b, \
            harness.eventd(work, rules, b.host, rest_host) as ev:
        start = b.wait_for("blast_start", 30)["t"]
        at_100k: list[int] = []

        def watch(sample: harness.Sample) -> None:
            if track_memory and not at_100k and sample.count >= 100_000:
                at_100k.append(sample.rss_kib)

        s, values = ev.wait_count(events, 120 + events / 500, condition, watch)
        hwm_streaming = ev.status("VmHWM")
        if rest_hits is not None:
            _await_backfill(ev, rest_hits)
        hwm = ev.status("VmHWM")
        result: dict[str, Any] = {
            "events_per_s": events / (s.t - start), "seconds": s.t - start,
            "rss_end_kib": s.rss_kib, "hwm_kib": hwm, "hwm_streaming_kib": hwm_streaming,
            "scrapes": len(ev.samples),
            "scrape_ms_mean": 1000 * ev.scrape_seconds / max(1, len(ev.samples)),
            "actions": {k: v for k, v in values.items()
                        if k.startswith("eventd_actions_total{") and v},
            **_sanity(values),
        }
        if track_memory:
            result["rss_start_kib"] = ev.samples[0].rss_kib  # when /metrics first answered
            result["rss_100k_kib"] = at_100k[0] if at_100k else None
            result["spool_pending"] = values.get("eventd_spool_pending")
            step = max(1, len(ev.samples) // 60)
            result["rss_curve"] = [[x.count, x.rss_kib] for x in ev.samples[::step]]
        result["exit_code"] = ev.terminate()
    return result


def _await_backfill(ev: harness.EventdProcess, rest_hits: list[str],
                    timeout: float = 15.0) -> None:
    """After its blast the blaster closes the stream: the peak RSS should include what a
    real daemon then does (reconnect, and backfill the gap over REST: its first HTTP call)."""
    seen = len(rest_hits)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, values = ev.sample()
        if values.get("eventd_stream_connected") == 1 and any(
                "/api/audit/v1/action" in path for path in rest_hits[seen:]):
            return
        time.sleep(0.1)
    raise harness.BenchError("eventd did not reconnect and backfill after the stream closed")


def run_latency(cfg: Config, work: Path, rest_host: str) -> dict[str, Any]:
    """A steady rate through one webhook rule; delay from frame sent to webhook received."""
    events = int(cfg.latency_rate * cfg.latency_seconds)
    with harness.webhook_receiver() as hook:
        rules = work / "rules"
        rulegen.write(rules, "hook", [rulegen.webhook_rule(
            f"http://127.0.0.1:{hook.server_port}/hook")])
        with harness.blaster("--events", str(events), "--rate", str(cfg.latency_rate)) as b, \
                harness.eventd(work, rules, b.host, rest_host) as ev:
            b.wait_for("blast_start", 30)
            end = b.wait_for("blast_end", cfg.latency_seconds * 3 + 30)
            expected = int(end["types"].get("container", 0))
            deadline = time.monotonic() + LATENCY_GRACE
            while len(hook.hits) < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            _, values = ev.sample()
            exit_code = ev.terminate()
        delays = []
        for arrived, body in list(hook.hits):
            sent = float(json.loads(body)["sent"])
            delays.append((arrived - sent) * 1000.0)
    delivered = len(delays)
    on_time = sorted(delays)
    # A webhook still missing LATENCY_GRACE seconds after the stream ended counts as infinitely
    # late, so a backlog shows in the percentiles instead of being left out of them.
    delays = sorted(delays) + [math.inf] * max(0, expected - delivered)

    def pct(p: float) -> float | None:
        return delays[min(len(delays) - 1, int(p / 100.0 * len(delays)))] if delays else None

    return {"p50_ms": pct(50), "p99_ms": pct(99), "max_ms": delays[-1] if delays else None,
            "webhooks": delivered, "expected": expected, "events": events,
            "delivered_p50_ms": on_time[len(on_time) // 2] if on_time else None,
            "blaster_max_late_s": end.get("max_late"), "exit_code": exit_code,
            **_sanity(values)}


def run_recovery(cfg: Config, work: Path, rules: Path, rest_host: str) -> dict[str, Any]:
    """Drop the connection (RST) after a segment; time until the next event is processed."""
    seg, drops = cfg.recovery_segment, cfg.recovery_drops
    total = seg * (drops + 1)
    samples: list[tuple[float, int]] = []
    with harness.blaster("--events", str(total), "--drop-after", str(seg), "--drops",
                         str(drops), "--drop-delay", "0.5") as b, \
            harness.eventd(work, rules, b.host, rest_host) as ev:
        deadline = time.monotonic() + 60 + drops * 10
        while time.monotonic() < deadline:
            s, _ = ev.sample()
            samples.append((s.t, s.count))
            if s.count >= total:
                break
            time.sleep(0.005)
        else:
            raise BenchError(f"recovery: eventd counted {samples[-1][1]} of {total}")
        _, values = ev.sample()
        exit_code = ev.terminate()
        reports = b.drain_reports()
    accepts = sorted(r["t"] for r in reports if r["event"] == "accept")
    out = []
    for drop in (r for r in reports if r["event"] == "drop"):
        t_drop, after = drop["t"], drop["after"]
        before = [c for t, c in samples if t <= t_drop]
        settled = bool(before) and before[-1] == after
        first = next((t for t, c in samples if t > t_drop and c > after), None)
        accept = next((t for t in accepts if t > t_drop), None)
        out.append({"after": after, "settled_before_drop": settled,
                    "recovery_s": first - t_drop if first else None,
                    "reconnect_s": accept - t_drop if accept else None})
    return {"drops": out, "exit_code": exit_code, **_sanity(values)}


# -- orchestration ----------------------------------------------------------------------------

def measure(cfg: Config, res: Results) -> None:
    only = set(cfg.only)
    with tempfile.TemporaryDirectory(prefix="eventd-bench-") as tmp, harness.rest_stub() as rest:
        tmp_path = Path(tmp)
        rest_host = f"http://127.0.0.1:{rest.server_port}/"
        rules100 = rulegen.write(tmp_path / "rules100", "rules_100", rulegen.rules(100)).parent
        rules1000 = rulegen.write(tmp_path / "rules1000", "rules_1000",
                                  rulegen.rules(1000)).parent
        peer: Path | None = None
        if "peer" in only:
            peer, why = peer_python()
            if peer is None:
                res.notes["peer"] = f"unavailable: {why}"
                say(f"  peer {res.notes['peer']}")
            else:
                res.notes["peer_websocket_client"] = why
        counter = iter(range(1_000_000))

        def work() -> Path:
            path = tmp_path / f"run{next(counter)}"
            path.mkdir()
            return path

        for i in range(cfg.runs):
            say(f"round {i + 1}/{cfg.runs} ({cfg.events:,} events)")
            if "drain" in only:
                _one(res, "drain", lambda: run_drain(cfg))
            if "baseline" in only or "throughput" in only:
                _one(res, "baseline", lambda: run_baseline(cfg))
            if "baseline" in only or "throughput" in only:
                _one(res, "baseline_validating", lambda: run_baseline(cfg, skip_utf8=False))
            if "throughput" in only:
                _one(res, "eventd_100", lambda: run_eventd(cfg, work(), rules100, cfg.events,
                                                           rest_host))
                _one(res, "eventd_1000", lambda: run_eventd(cfg, work(), rules1000, cfg.events,
                                                            rest_host))
                _one(res, "eventd_audit", lambda: _audit_run(cfg, work(), rest_host))
            if peer is not None:
                _one(res, "peer", lambda: run_peer(cfg, peer))
        if "latency" in only:
            for i in range(cfg.latency_runs):
                say(f"latency {i + 1}/{cfg.latency_runs}: {cfg.latency_rate:g} events/s for "
                    f"{cfg.latency_seconds:g} s")
                _one(res, "latency", lambda: run_latency(cfg, work(), rest_host))
        if "memory" in only or "spool" in only:
            # eventd as pip installs it: its modules byte-compiled (pip compiles at install
            # time). Run from a checkout under PYTHONDONTWRITEBYTECODE=1, every start would
            # compile ~640 KB of source instead, about 1.8 MiB more resident (bench/smaps.py
            # --imports), which no installed eventd pays.
            subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "eventd")],
                           check=False, capture_output=True)
        if "memory" in only:
            for i in range(cfg.memory_runs):
                say(f"memory {i + 1}/{cfg.memory_runs}: {cfg.memory_events:,} events")
                _one(res, "memory", lambda: run_eventd(cfg, work(), rules100, cfg.memory_events,
                                                       rest_host, track_memory=True,
                                                       rest_hits=rest.hits))
        if "spool" in only:
            # The same 100 rules plus a webhook on container events (~36%) to a port nobody
            # listens on: the spool only grows; memory must not grow with it.
            down = f"http://127.0.0.1:{harness.free_port()}/down"
            hook = {"name": "hook-down", "match": {"type": "container"}, "actions": [
                {"webhook": {"url": down, "json": {"uuid": "{{ event.uuid }}"}}}]}
            rules_down = rulegen.write(tmp_path / "rules_down", "rules_down",
                                       rulegen.rules(100, [hook])).parent
            for i in range(cfg.memory_runs):
                say(f"spool {i + 1}/{cfg.memory_runs}: {cfg.spool_events:,} events, "
                    "webhook target down")
                _one(res, "spool", lambda: run_eventd(cfg, work(), rules_down, cfg.spool_events,
                                                      rest_host, track_memory=True,
                                                      rest_hits=rest.hits))
        if "recovery" in only:
            for i in range(cfg.runs):
                say(f"recovery {i + 1}/{cfg.runs}")
                _one(res, "recovery", lambda: run_recovery(cfg, work(), rules100, rest_host))
    if "callgrind" in only:  # its own processes, servers and rule sets (bench/callgrind.py)
        say("callgrind: instructions per event")
        t0 = time.monotonic()
        res.add("callgrind", {**callgrind.measure(callgrind.ROWS),
                              "wall_s": round(time.monotonic() - t0, 2)})


def _audit_run(cfg: Config, work: Path, rest_host: str) -> dict[str, Any]:
    """100 rules plus an audit action on every event; done when every event is audited too."""
    rules = rulegen.write(work / "rules", "rules_100_audit",
                          rulegen.rules(100, [rulegen.audit_rule(work / "audit.jsonl")])).parent

    def audited(values: dict[str, float]) -> bool:
        done = harness.EventdProcess.total(values, "eventd_actions_total", kind="audit",
                                           outcome="success")
        return done >= cfg.events

    result = run_eventd(cfg, work, rules, cfg.events, rest_host, condition=audited)
    with open(work / "audit.jsonl", "rb") as f:
        result["audit_lines"] = sum(1 for _ in f)
    return result


def _one(res: Results, series: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement; a failure is recorded and reported, and the bench goes on."""
    t0 = time.monotonic()
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - one failed run is reported, the rest still run
        value = {"error": f"{type(exc).__name__}: {exc}"}
    value["wall_s"] = round(time.monotonic() - t0, 2)
    res.add(series, value)
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in value.items()
             if k in ("events_per_s", "p99_ms", "hwm_kib", "error", "wall_s", "exit_code")}
    say(f"  {series}: {shown}")


# -- the table ----------------------------------------------------------------------------

def _fmt_rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f} ev/s"


def _ratio(v: float | None, base: float | None) -> str:
    return "n/a" if v is None or not base else f"{v / base:.2f}x"


def _ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    if math.isinf(v):
        return f"undelivered {LATENCY_GRACE:g} s after the stream ended"
    return f"{v:.1f} ms"


def _mib(median: float | None, values: list[float]) -> str:
    """A median in MiB, with the range of the runs when there are several."""
    if median is None:
        return "n/a"
    if len(values) < 2:
        return f"{median / MIB:.1f} MiB"
    return f"{median / MIB:.1f} MiB ({min(values) / MIB:.1f} to {max(values) / MIB:.1f})"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def table(cfg: Config, res: Results) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    base = res.median("baseline", "events_per_s")
    n = len(res.values("baseline", "events_per_s"))

    def row(figure: str, value: str, ratio: str, target: str, met: str) -> None:
        rows.append({"figure": figure, "value": value, "ratio": ratio, "target": target,
                     "met": met})

    def runs(series: str, key: str = "events_per_s") -> str:
        ok = len(res.values(series, key))
        total = len(res.runs.get(series, []))
        return f"{ok}" if ok == total else f"{ok} of {total}"

    wsc = next((r.get("websocket_client") for r in res.runs.get("baseline", [])
                if r.get("websocket_client")), "?")
    accel = next((r.get("wsaccel") for r in res.runs.get("baseline", []) if "wsaccel" in r), None)
    wsa = f"wsaccel {accel}" if accel else "without wsaccel"
    if "drain" in res.runs:
        drain = res.median("drain", "events_per_s")
        mib = res.median("drain", "mib_per_s")
        ok = None if drain is None or not base else drain >= 10 * base
        row(f"blaster drain rate (raw recv_into; {runs('drain')} runs)",
            f"{_fmt_rate(drain)} ({mib or 0:,.0f} MiB/s)", _ratio(drain, base),
            ">= 10x baseline", _met(ok))
    if base is not None or "baseline" in res.runs:
        row(f"baseline: websocket-client {wsc} recv() loop, skip_utf8_validation=True, {wsa} "
            f"({n} runs)", _fmt_rate(base), "1.00x" if base else "n/a", "-", "-")
    if "baseline_validating" in res.runs:
        v = res.median("baseline_validating", "events_per_s")
        row(f"same loop validating UTF-8 ({runs('baseline_validating')} runs)",
            _fmt_rate(v), _ratio(v, base), "-", "-")
    e100 = res.median("eventd_100", "events_per_s")
    if "eventd_100" in res.runs:
        row(f"eventd, 100 rules, metrics on ({runs('eventd_100')} runs)", _fmt_rate(e100),
            _ratio(e100, base), ">= 2.0x baseline (second core free)",
            _met(None if e100 is None or not base else e100 >= 2.0 * base))
    if "eventd_1000" in res.runs:
        v = res.median("eventd_1000", "events_per_s")
        rel = None if v is None or not e100 else v / e100
        row(f"eventd, 1,000 rules ({runs('eventd_1000')} runs)", _fmt_rate(v), _ratio(v, base),
            ">= 0.9x the 100-rule figure" + (f" (is {rel:.2f}x)" if rel else ""),
            _met(None if rel is None else rel >= 0.9))
    if "eventd_audit" in res.runs:
        v = res.median("eventd_audit", "events_per_s")
        row(f"eventd, 100 rules + audit on every event ({runs('eventd_audit')} runs)",
            _fmt_rate(v), _ratio(v, base), ">= 0.6x baseline",
            _met(None if v is None or not base else v >= 0.6 * base))
    if "peer" in res.notes and res.notes["peer"].startswith("unavailable"):
        row("peer: python-dockercloud 1.0.12 Events", res.notes["peer"], "n/a", "-", "-")
    elif "peer" in res.runs:
        v = res.median("peer", "events_per_s")
        pw = res.notes.get("peer_websocket_client", "?")
        row(f"peer: python-dockercloud 1.0.12 Events, websocket-client {pw} "
            f"({runs('peer')} runs)", _fmt_rate(v), _ratio(v, base), "-", "-")
    if "latency" in res.runs:
        p50 = res.median("latency", "p50_ms")
        p99 = res.median("latency", "p99_ms")
        mx = max(res.values("latency", "max_ms"), default=None)
        got = sum(res.values("latency", "webhooks"))
        want = sum(res.values("latency", "expected"))
        what = (f"{cfg.latency_rate:g} ev/s for {cfg.latency_seconds:g} s, webhook on container "
                f"events ({got:,} of {want:,} delivered; {runs('latency', 'p99_ms')} run(s))")
        row(f"latency p50 ({what})", _ms(p50), "-", "-", "-")
        row("latency p99", _ms(p99), "-", "< 20 ms",
            _met(None if p99 is None else p99 < 20 and got == want))
        row("latency max", _ms(mx), "-", "-", "-")
    if "memory" in res.runs:
        hwm = res.median("memory", "hwm_kib")
        growth = [r["rss_end_kib"] - r["rss_100k_kib"] for r in res.runs["memory"]
                  if r.get("rss_100k_kib") is not None and r.get("rss_end_kib") is not None]
        g = statistics.median(growth) if growth else None
        rate = res.median("memory", "events_per_s")
        streaming = res.median("memory", "hwm_streaming_kib")
        row(f"peak RSS (VmHWM) while streaming {cfg.memory_events:,} events, 100 rules "
            f"({runs('memory', 'hwm_kib')} run(s), median; {_fmt_rate(rate)})",
            _mib(streaming, res.values("memory", "hwm_streaming_kib")), "-",
            f"< {STREAMING_MIB} MiB", _met(None if streaming is None
                                           else streaming < STREAMING_MIB * MIB))
        row("peak RSS (VmHWM) once the stream closed, eventd reconnected and backfilled over "
            "REST (its first HTTP call loads requests)",
            _mib(hwm, res.values("memory", "hwm_kib")), "-", f"< {HTTP_MIB} MiB",
            _met(None if hwm is None else hwm < HTTP_MIB * MIB))
        row(f"RSS growth, 100k -> {cfg.memory_events:,} events",
            "n/a" if g is None else f"{g / MIB:+.1f} MiB", "-", "< 2 MiB",
            _met(None if g is None else g < 2 * MIB))
        start = res.median("memory", "rss_start_kib")
        row("RSS when /metrics first answers (before the blast is read)",
            "n/a" if start is None else f"{start / MIB:.1f} MiB", "-", "-", "-")
    if "spool" in res.runs:
        hwm, pending = res.median("spool", "hwm_kib"), res.median("spool", "spool_pending")
        growths = [r["rss_end_kib"] - r["rss_100k_kib"] for r in res.runs["spool"]
                   if r.get("rss_100k_kib") is not None and r.get("rss_end_kib") is not None]
        g = statistics.median(growths) if growths else None
        row(f"peak RSS with a webhook target down, {cfg.spool_events:,} events "
            f"({'?' if pending is None else f'{pending:,.0f}'} actions in the spool at the end; "
            f"{runs('spool', 'hwm_kib')} run(s), median)",
            _mib(hwm, res.values("spool", "hwm_kib")), "-", f"< {HTTP_MIB} MiB",
            _met(None if hwm is None else hwm < HTTP_MIB * MIB))
        row("RSS growth with the target down, 100k -> end",
            "n/a" if g is None else f"{g / MIB:+.1f} MiB", "-", "< 2 MiB",
            _met(None if g is None else g < 2 * MIB))
    if "recovery" in res.runs:
        drops = [d for r in res.runs["recovery"] for d in r.get("drops", [])]
        rec = [d["recovery_s"] for d in drops if d.get("recovery_s") is not None]
        recon = [d["reconnect_s"] for d in drops if d.get("reconnect_s") is not None]
        med = statistics.median(rec) if rec else None
        what = f"{len(rec)} of {len(drops)} drops recovered"
        if recon:
            what += f"; reconnect median {statistics.median(recon):.2f} s"
        row(f"recovery: drop (RST) -> first event processed, median ({what})",
            "n/a" if med is None else f"{med:.2f} s", "-", "< 2 s",
            _met(None if med is None else med < 2 and len(rec) == len(drops)))
        row("recovery, worst", "n/a" if not rec else f"{max(rec):.2f} s", "-", "< 2 s",
            _met(None if not rec else max(rec) < 2 and len(rec) == len(drops)))
    eventd_runs = [r for s in ("eventd_100", "eventd_1000", "eventd_audit", "latency", "memory",
                               "spool", "recovery") for r in res.runs.get(s, [])]
    if eventd_runs:
        codes = [r.get("exit_code") for r in eventd_runs]
        zero = sum(1 for c in codes if c == 0)
        lost = sum(r.get(k, 0) or 0 for r in eventd_runs for k in SANITY)
        row("eventd exit code 0 after SIGTERM", f"{zero} of {len(codes)} runs", "-",
            "all", _met(zero == len(codes)))
        row("eventd invalid + duplicate + dropped + internal/template errors", f"{lost:g}", "-",
            "0", _met(lost == 0))
    for measured in res.runs.get("callgrind", []):
        rows.extend(callgrind.table({k: v for k, v in measured.items() if isinstance(v, dict)}))
    errors = sum(1 for s in res.runs.values() for r in s if "error" in r)
    if errors:
        row("runs that failed (see latest.json)", str(errors), "-", "0", "NOT met")
    return rows


def markdown(rows: list[dict[str, str]], header: str) -> str:
    lines = [header, "", "| figure | value | ratio to baseline | target | met |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['figure']} | {r['value']} | {r['ratio']} | {r['target']} | {r['met']} |"
              for r in rows]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """Infinite delays (webhooks never delivered) as the string "inf": JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip()

    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "kernel": platform.release(),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 runs, 20k events, 5 s latency, 300k for memory")
    parser.add_argument("--runs", type=int, default=0, help="runs per figure (default 5)")
    parser.add_argument("--events", type=int, default=0,
                        help="events per throughput run (default 200,000)")
    parser.add_argument("--memory-events", type=int, default=0, help="default 1,000,000")
    parser.add_argument("--memory-runs", type=int, default=0,
                        help="runs of the memory and of the spool figure (default 3)")
    parser.add_argument("--spool-events", type=int, default=0,
                        help="events with a webhook target down (default 300,000)")
    parser.add_argument("--latency-seconds", type=float, default=0, help="default 30")
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-runs", type=int, default=0, help="default 3")
    parser.add_argument("--only", nargs="+", choices=FIGURES,
                        help="measure only these figures (throughput includes the baseline)")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    args = parser.parse_args(argv)
    cfg = Config.from_args(args)
    started = dt.datetime.now(dt.timezone.utc)
    res = Results()
    say(f"eventd bench {'(quick) ' if cfg.quick else ''}started {started:%Y-%m-%d %H:%M:%S} UTC")

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds every `with`, so no process or temp dir is left

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    try:
        measure(cfg, res)
    except KeyboardInterrupt:
        say("interrupted: reporting what was measured")
    elapsed = time.monotonic() - t0
    env = environment()
    rows = table(cfg, res)
    header = (f"eventd bench, {started:%Y-%m-%d %H:%M} UTC, commit {env['commit']}"
              f"{' (dirty)' if env['dirty'] else ''}, Python {env['python']}, {env['cpus']} CPUs,"
              f" {'quick' if cfg.quick else 'full'} run in {elapsed:.0f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_json_safe({
        "started": started.isoformat(), "seconds": round(elapsed, 1), "environment": env,
        "config": cfg.__dict__, "table": rows, "notes": res.notes, "runs": res.runs,
    }), indent=1, default=str, allow_nan=False) + "\n")
    print(markdown(rows, header))
    say(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
