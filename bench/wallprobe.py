"""Where the wall clock goes: CPU (user, sys), run-queue wait, context switches per 1,000 events.

`python bench/wallprobe.py [--events N] [--runs R] [--rules 100|1000] [--taskset 0] [--threads]
[--strace] [--perf FILE] [--curve] [--eventd-arg=--ui --eventd-arg=off]` runs the bare
websocket-client loop (bench/clients.py baseline --skip-utf8, as bench/run.py) and `eventd run`
with rulegen.rules(N) (as bench/run.py's throughput row, timed the same way: from the
blaster's first byte to the /metrics scrape that counts N), each against a fresh blaster,
alternately, and prints for each run: events/s, the ratio to the baseline run just before
it, the load average, and per 1,000 events: CPU (user and sys, /proc ticks), time run and
time waited runnable on a run queue (/proc schedstat, ns), voluntary and involuntary context
switches, from the first byte to the end; eventd's also thread by thread (`--threads` names
them: bench/wallsite/sitecustomize.py on eventd's PYTHONPATH). `--strace`: `strace -c -f`
attached to each client for the same span, syscalls per 1,000 events (it slows the client:
read the counts, not the times). `--taskset 0`: every process on CPU 0, the blaster too, as
`taskset -c 0 make bench`. `--code DIR` (repeatable): eventd from that tree, each in every
round after the same baseline run. On a machine shared with others, `chrt -r 10` in front runs the
whole probe above their load (what a free machine would show; keep such runs short).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import rulegen  # noqa: E402
from harness import BENCH, PYTHON  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
EXTRA: list[str] = []  # more `eventd run` arguments (--eventd-arg)
PERF: list[str] = []  # --perf FILE: `perf record -g` of eventd into FILE
CURVE: list[bool] = []  # --curve: print the scrapes' (time, count)
THREADS: list[bool] = []  # --threads: name eventd's threads
KEYS = ("utime", "stime", "run", "wait", "vcs", "ivcs")
ZERO = dict.fromkeys(KEYS, 0.0)


def _task_figures(pid: int) -> dict[str, dict[str, float]]:
    """{thread name: {utime, stime (s), vcs, ivcs}} for every thread of `pid` (names merged)."""
    out: dict[str, dict[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            run_ns, wait_ns, _ = (int(x) for x in f.read().split())
        name = f"{stat[stat.index('(') + 1:stat.rindex(')')]}/{tid}"
        fields = stat[stat.rindex(")") + 2:].split()
        vcs = int(re.findall(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[0])
        ivcs = int(re.findall(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)[0])
        figures = out.setdefault(name, dict(ZERO))
        figures["run"] += run_ns / 1e9
        figures["wait"] += wait_ns / 1e9
        figures["utime"] += int(fields[11]) / TICK
        figures["stime"] += int(fields[12]) / TICK
        figures["vcs"] += vcs
        figures["ivcs"] += ivcs
    return out


def _diff(after: dict[str, dict[str, float]],
          before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {name: {k: v - before.get(name, ZERO)[k] for k, v in fig.items()}
            for name, fig in after.items()}


def _total(figs: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: sum(f[k] for f in figs.values()) for k in KEYS}


def _strace(pid: int, out: Path) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # strace attaches to every thread
    return proc


def _strace_done(proc: subprocess.Popen[Any], out: Path) -> dict[str, int]:
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] not in ("total",):
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    return calls


def baseline(events: int, trace: bool, tmp: Path) -> dict[str, Any]:
    """The bare loop: its CPU from the blaster's first byte to its exit (wait4's rusage less
    what /proc said when the blast began)."""
    with harness.blaster("--events", str(events)) as b:
        cmd = [PYTHON, str(BENCH / "clients.py"), "baseline", b.url, "--events",
               str(events), "--skip-utf8"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=BENCH)
        start = b.wait_for("blast_start", 30)["t"]
        try:
            before = _total(_task_figures(proc.pid))
        except OSError:
            before = dict(ZERO)
        tracer = _strace(proc.pid, tmp / "strace.base") if trace else None
        _, status, usage = os.wait4(proc.pid, 0)
        assert proc.stdout is not None
        out = json.loads(proc.stdout.read().strip().splitlines()[-1])
        proc.returncode = os.waitstatus_to_exitcode(status)
        calls = _strace_done(tracer, tmp / "strace.base") if tracer else {}
    total = {"utime": usage.ru_utime - before["utime"], "stime": usage.ru_stime - before["stime"],
             "vcs": usage.ru_nvcsw - before["vcs"], "ivcs": usage.ru_nivcsw - before["ivcs"],
             "run": float("nan"), "wait": float("nan")}
    return {"rate": events / (out["t_done"] - start), "total": total, "threads": {},
            "syscalls": calls}


def eventd(events: int, rules: Path, rest_host: str, trace: bool,
           work: Path) -> dict[str, Any]:
    """eventd as bench/run.py runs it; its threads' CPU from the first byte to the scrape that
    counted N."""
    work.mkdir()
    if THREADS:  # read by bench/wallsite/sitecustomize.py in eventd, and only there
        os.environ["WALLPROBE_TIDS"] = str(work / "tids")
    extra = tuple(EXTRA)
    with harness.blaster("--events", str(events)) as b:
        with harness.eventd(work, rules, b.host, rest_host, extra) as ev:
            tracer = _strace(ev.proc.pid, work / "strace.ev") if trace else None
            perf = None
            if PERF:
                perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g",
                                         "-o", PERF[0], "-p", str(ev.proc.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            start = b.wait_for("blast_start", 30)["t"]
            before = _task_figures(ev.proc.pid)
            s, _ = ev.wait_count(events, 120 + events / 500)
            after = _task_figures(ev.proc.pid)
            names = _thread_names()
            os.environ.pop("WALLPROBE_TIDS", None)
            after = {names.get(k.split("/")[1], k): v for k, v in after.items()}
            before = {names.get(k.split("/")[1], k): v for k, v in before.items()}
            calls = _strace_done(tracer, work / "strace.ev") if tracer else {}
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait(30)
            ev.terminate()
    threads = _diff(after, before)
    curve = [(round(x.t - start, 3), x.count) for x in ev.samples if x.t >= start]
    if CURVE:
        print("    (seconds since the first byte, events counted):", curve)
    return {"rate": events / (s.t - start), "total": _total(threads), "threads": threads,
            "syscalls": calls, "scrapes": len(ev.samples)}


def _thread_names() -> dict[str, str]:
    """TID -> Python thread name, as bench/wallsite/sitecustomize.py wrote them (--threads)."""
    path = os.environ.get("WALLPROBE_TIDS")
    if not path or not os.path.exists(path):
        return {}
    names = {}
    with open(path) as f:
        for line in f:
            tid, _, name = line.strip().partition(" ")
            names[tid] = name
    return names


def _syscalls(who: str, res: dict[str, Any], events: int) -> None:
    if res["syscalls"]:
        top = sorted(res["syscalls"].items(), key=lambda kv: -kv[1])[:8]
        print(f"    {who} syscalls per 1k: " + ", ".join(
            f"{n} {c * 1000 / events:.1f}" for n, c in top))


def per_k(fig: dict[str, float], events: int) -> str:
    k = events / 1000
    return (f"user {1000 * fig['utime'] / k:6.2f} ms  sys {1000 * fig['stime'] / k:6.2f} ms  "
            f"run {1000 * fig['run'] / k:6.2f} ms  runq {1000 * fig['wait'] / k:6.2f} ms  "
            f"vcs {fig['vcs'] / k:7.1f}  ivcs {fig['ivcs'] / k:6.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rules", type=int, default=100, choices=(100, 1000))
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--taskset", default="", help="CPUs (0 or 0,1) for every process")
    parser.add_argument("--threads", action="store_true", help="name eventd's threads")
    parser.add_argument("--perf", default="", help="perf record -g eventd into this file")
    parser.add_argument("--code", action="append", default=[],
                        help="run eventd from this checkout (a `git archive` copy), on "
                             "PYTHONPATH; repeat it to compare trees in the same rounds")
    parser.add_argument("--curve", action="store_true", help="print the count over time")
    parser.add_argument("--eventd-arg", action="append", default=[],
                        help="one more `eventd run` argument (repeat it: --eventd-arg=--ui "
                             "--eventd-arg=off)")
    args = parser.parse_args(argv)
    EXTRA[:] = args.eventd_arg
    PERF[:] = [args.perf] if args.perf else []
    CURVE[:] = [True] if args.curve else []
    THREADS[:] = [True] if args.threads else []
    if args.taskset:  # everything, the blaster too, as `taskset -c 0 make bench` would
        os.sched_setaffinity(0, {int(c) for c in args.taskset.split(",")})
    codes: list[str] = args.code or [""]
    ratios: dict[str, list[float]] = {code: [] for code in codes}
    print(f"load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="eventd-wall-") as tmp, \
            harness.rest_stub() as rest:
        tmp_path = Path(tmp)
        rules = rulegen.write(tmp_path / "rules", f"rules_{args.rules}",
                              rulegen.rules(args.rules)).parent
        rest_host = f"http://127.0.0.1:{rest.server_port}/"
        for i in range(args.runs):
            base = baseline(args.events, args.strace, tmp_path)
            print(f"run {i + 1}: baseline {base['rate']:9,.0f} ev/s, per 1k: "
                  f"{per_k(base['total'], args.events)}", flush=True)
            _syscalls("baseline", base, args.events)
            for code in codes:
                path = [str(BENCH / "wallsite")] if args.threads else []
                os.environ["PYTHONPATH"] = os.pathsep.join(([code] if code else []) + path)
                ev = eventd(args.events, rules, rest_host, args.strace,
                            tmp_path / f"ev{i}-{codes.index(code)}")
                ratio = ev["rate"] / base["rate"]
                ratios[code].append(ratio)
                print(f"  eventd{' ' + code if code else ''} {ev['rate']:9,.0f} ev/s  ratio "
                      f"{ratio:.2f}x  (load {os.getloadavg()[0]:.2f}, {ev.get('scrapes')} "
                      f"scrapes; wall {1e6 / ev['rate']:.2f} ms per 1k), per 1k: "
                      f"{per_k(ev['total'], args.events)}", flush=True)
                for name, fig in sorted(ev["threads"].items(), key=lambda kv: -kv[1]["utime"]):
                    if fig["run"] > 0.005 * ev["total"]["run"]:
                        print(f"    {name:16s} {per_k(fig, args.events)}")
                _syscalls("eventd", ev, args.events)
    for code, values in ratios.items():
        print(f"eventd{' ' + code if code else ''}: median ratio "
              f"{statistics.median(values):.2f}x over {len(values)} runs "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
