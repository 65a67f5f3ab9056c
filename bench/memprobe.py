"""Where eventd's memory goes: RSS before the first event, along the stream, and what holds it.

`.venv/bin/python bench/memprobe.py [--events N] [--rules 100] [--trace FRAMES] [--webhook]`
runs `eventd run` against the blaster (100 rules, as the bench's memory figure) and prints
VmRSS once /metrics answers (before any event), after 100k events and at the end, and VmHWM.
With `--trace N`, eventd runs under tracemalloc (N frames) and the largest allocation sites
at the end are printed (tracemalloc itself costs memory and time: read its sites, not its RSS).
`--webhook` adds a webhook rule to a receiver that is down, so the spool only grows.
`--smaps` prints, at the end, the daemon's resident memory per library and mapping
(bench/smaps.py: libpython, libcrypto, each package's extension modules, the heap).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import rulegen  # noqa: E402
import smaps  # noqa: E402

MIB = 1024.0

TRACER = '''
import os, signal, sys, tracemalloc
tracemalloc.start(int(sys.argv.pop(1)))
BASE = []
def mark(*_):
    BASE.append(tracemalloc.take_snapshot())
def dump(*_):
    snap = tracemalloc.take_snapshot()
    key = "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
    with open(os.environ["MEMPROBE_OUT"] + ".part", "w") as f:
        stats = snap.compare_to(BASE[0], key) if BASE else snap.statistics(key)
        if BASE:
            f.write("growth since the first event, by site:\\n")
        now, peak = tracemalloc.get_traced_memory()
        f.write("traced %.1f MiB now, %.1f MiB at the peak\\n" % (now / 1048576, peak / 1048576))
        for s in stats[:30]:
            size = getattr(s, "size_diff", s.size)
            f.write("%7.2f MiB %8d  %s\\n" % (size / 1048576, s.count, s.traceback.format()[-1]))
            for line in s.traceback.format()[:-1][-8:]:
                f.write("                        %s\\n" % line)
    os.rename(os.environ["MEMPROBE_OUT"] + ".part", os.environ["MEMPROBE_OUT"])
signal.signal(signal.SIGUSR1, dump)
signal.signal(signal.SIGUSR2, mark)
from eventd.cli import main
sys.exit(main(sys.argv[1:]))
'''


def breakdown(ev: harness.EventdProcess) -> str:
    """Anonymous memory (the heap) and file-backed pages (code, libraries), and threads."""
    return (f"RssAnon {ev.status('RssAnon') / MIB:.1f} MiB, RssFile {ev.status('RssFile') / MIB:.1f} "
            f"MiB, {ev.status('Threads')} threads")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--trace", type=int, default=0, metavar="FRAMES")
    parser.add_argument("--mark-at", type=int, default=0, metavar="EVENTS",
                        help="with --trace: compare the end with this many events counted "
                             "(default: with the first /metrics answer)")
    parser.add_argument("--dump-at", type=int, default=0, metavar="EVENTS",
                        help="with --trace: print the sites with this many events counted, "
                             "mid-stream (default: at the end)")
    parser.add_argument("--webhook", action="store_true",
                        help="every container event also goes to a webhook that is down")
    parser.add_argument("--smaps", action="store_true",
                        help="print the resident memory per library at the end (bench/smaps.py)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set a variable for eventd (e.g. EVENTD_SPOOL_SYNC=full)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="eventd-memprobe-"))
    extra = []
    if args.webhook:
        extra.append(rulegen.webhook_rule(f"http://127.0.0.1:{harness.free_port()}/down"))
    rules = rulegen.write(work, "rules", rulegen.rules(args.rules, extra))
    out = work / "trace.txt"
    with harness.rest_stub() as rest, harness.blaster("--events", str(args.events)) as b:
        port = harness.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCLOUD_", "EVENTD_"))}
        env.update({"DOCKERCLOUD_STREAM_HOST": b.host, "MEMPROBE_OUT": str(out),
                    "DOCKERCLOUD_REST_HOST": f"http://127.0.0.1:{rest.server_address[1]}/",
                    "DOCKERCLOUD_USER": "bench", "DOCKERCLOUD_APIKEY": "bench"})
        env.update(item.split("=", 1) for item in args.env)
        head = [harness.PYTHON, "-c", TRACER, str(args.trace)] if args.trace else \
            [harness.PYTHON, "-m", "eventd"]
        cmd = [*head, "run", "--rules", str(rules), "--state-dir", str(work / "state"),
               "--metrics-addr", f"127.0.0.1:{port}", "--log-level", "WARNING"]
        with open(work / "eventd.stderr", "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=work)
        ev = harness.EventdProcess(proc, port, work)
        try:
            ev.wait_ready(60)
            if args.trace and not args.mark_at:
                proc.send_signal(signal.SIGUSR2)  # the baseline the end is compared to
            first = ev.samples[0]
            print(f"VmRSS when /metrics answers: {first.rss_kib / MIB:.1f} MiB "
                  f"(events counted {first.count}); {breakdown(ev)}")
            at_100k: list[int] = []
            marked: list[int] = []
            dumped: list[int] = []

            def watch(sample: harness.Sample) -> None:
                if not at_100k and sample.count >= 100_000:
                    at_100k.append(sample.rss_kib)
                if args.trace and args.mark_at and not marked and sample.count >= args.mark_at:
                    marked.append(sample.count)
                    proc.send_signal(signal.SIGUSR2)
                if args.trace and args.dump_at and not dumped and sample.count >= args.dump_at:
                    dumped.append(sample.count)
                    proc.send_signal(signal.SIGUSR1)

            s, _ = ev.wait_count(args.events, 120 + args.events / 200, on_sample=watch)
            time.sleep(1.0)
            end = ev.status("VmRSS")
            print(f"VmRSS at 100k events: {at_100k[0] / MIB:.1f} MiB" if at_100k else "")
            print(f"VmRSS at {args.events:,} events: {end / MIB:.1f} MiB; "
                  f"VmHWM {ev.status('VmHWM') / MIB:.1f} MiB; {breakdown(ev)}")
            curve, step = [], max(1, len(ev.samples) // 12)
            for x in ev.samples[::step]:
                curve.append(f"{x.count // 1000}k:{x.rss_kib / MIB:.1f}")
            print("VmRSS curve (events:MiB): " + " ".join(curve))
            if args.smaps:
                print(smaps.report(proc.pid))
            if args.trace:
                if not dumped:
                    proc.send_signal(signal.SIGUSR1)
                deadline = time.monotonic() + 120
                while not out.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                print(out.read_text())
            ev.terminate()
        finally:
            harness.kill(proc)
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
