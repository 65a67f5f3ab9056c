"""eventd's soak: a steady stream, two webhook targets, random faults of every kind, then a verdict.

`make soak` (15 minutes) or `make soak SOAK_ARGS="--minutes 3"`. A stream server in this
process sends ~200 events/s; rules send container events (and failed actions) to receiver `a`,
services and actions to receiver `b`. Two fault lanes run side by side at random (seeded):
- daemon and stream: a RST of the stream, a silence (no data, no pongs), a SIGKILL of eventd
  and a restart on the same --state-dir;
- receivers: one target down for a few seconds to minutes, answering 503 to its next 3-30
  requests, or 429 with Retry-After to its next 1-5.
Then the stream stops, the faults heal, and the soak waits for the spool to drain. It prints a
summary (and writes bench/results/soak-latest.json) and exits 1 if a promise broke: a webhook
lost, an event delivered under a second Idempotency-Key, or one later than its faults + 65 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from soak_check import Fault, check, healthy_p99_during_outages  # noqa: E402
from soak_receiver import SoakReceiver  # noqa: E402
from soak_stream import StreamServer  # noqa: E402

MIB = 1024.0
DRAIN_STALL = 120.0  # give up draining after this long without a delivery
DRAIN_MAX = 660.0  # and after the dead-letter deadline in any case


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def write_rules(path: Path, a: SoakReceiver, b: SoakReceiver) -> None:
    """Three rules: two to target a, one to target b (JSON is YAML)."""
    def hook(url: str) -> dict[str, Any]:
        return {"webhook": {"url": url, "json": {"uuid": "{{ event.uuid }}",
                                                 "type": "{{ event.type }}"}}}
    rules = [
        {"name": "soak-a-container", "match": {"type": "container"}, "actions": [hook(a.url)]},
        {"name": "soak-a-action-failed", "match": {"type": "action", "state": "Failed"},
         "actions": [hook(a.url)]},
        {"name": "soak-b", "match": {"type": ["service", "action"]}, "actions": [hook(b.url)]},
    ]
    path.write_text(json.dumps({"rules": rules}, indent=1) + "\n")


class Daemon:
    """eventd on one --state-dir, SIGKILLed and restarted; scraped once a second."""

    def __init__(self, work: Path, rules: Path, stream_host: str, rest_host: str) -> None:
        self.work = work
        self.rules = rules
        self.state = work / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DOCKERCLOUD_", "EVENTD_"))}
        self.env.update({"DOCKERCLOUD_STREAM_HOST": stream_host,
                         "DOCKERCLOUD_REST_HOST": rest_host,
                         "DOCKERCLOUD_USER": "soak", "DOCKERCLOUD_APIKEY": "soak"})
        exe = harness.ROOT / ".venv" / "bin" / "eventd"
        self.exe = str(exe) if exe.exists() else "eventd"
        self.lock = threading.Lock()  # guards self.ev
        self.control = threading.Lock()  # one kill, restart or start at a time
        self.ev: harness.EventdProcess | None = None
        self.starts = 0
        self.peak_hwm_kib = 0
        self.max_rss_kib = 0
        self.max_pending = 0.0
        self.rss_at_max_pending_kib = 0
        self.rss_low_pending_kib = 0  # the highest RSS seen while the spool held < 1,000
        self.deadletters_by_pid: dict[int, float] = {}
        self.pending = 0.0  # the spool's depth at the last scrape
        self.crashes: list[str] = []
        self.stopping = threading.Event()

    def start(self) -> None:
        port = harness.free_port()
        cmd = [self.exe, "run", "--rules", str(self.rules), "--state-dir", str(self.state),
               "--metrics-addr", f"127.0.0.1:{port}", "--log-level", "WARNING"]
        with open(self.work / "eventd.stderr", "a") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.env,
                                    cwd=self.work)
        ev = harness.EventdProcess(proc, port, self.work)
        ev.wait_ready(60)
        with self.lock:
            self.ev = ev
            self.starts += 1

    def _hwm(self, ev: harness.EventdProcess) -> None:
        try:
            self.peak_hwm_kib = max(self.peak_hwm_kib, ev.status("VmHWM"))
        except (OSError, harness.BenchError):
            pass

    def start_surely(self) -> None:
        """start(), tried again for a minute: a soak must not end because one start failed."""
        deadline = time.monotonic() + 60
        while True:
            try:
                self.start()
                return
            except harness.BenchError as exc:
                self.crashes.append(f"eventd did not start: {exc}")
                say(self.crashes[-1])
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def sigkill_and_restart(self, pause: float) -> None:
        """SIGKILL eventd, wait `pause` seconds, start it again on the same state directory."""
        with self.control:
            with self.lock:
                ev, self.ev = self.ev, None
            if ev is not None:
                self._hwm(ev)
                ev.proc.send_signal(signal.SIGKILL)
                ev.proc.wait(10)
            time.sleep(pause)
            self.start_surely()

    def terminate(self) -> int | None:
        with self.lock:
            ev, self.ev = self.ev, None
        if ev is None:
            return None
        self._hwm(ev)
        return ev.terminate(60)

    def scrape_pending(self) -> float | None:
        """The spool's depth now (None if eventd does not answer)."""
        with self.lock:
            ev = self.ev
        try:
            return ev.metrics(("eventd_spool_pending",)).get("eventd_spool_pending") if ev else None
        except (OSError, http.client.HTTPException):
            return None

    def restart_if_dead(self) -> None:
        """An eventd that exited without being told to is a broken promise; start another."""
        if not self.control.acquire(blocking=False):
            return  # a kill and restart is under way
        try:
            with self.lock:
                ev = self.ev
                if ev is None or ev.proc.poll() is None:
                    return
                self.ev = None
            self.crashes.append(f"eventd exited {ev.proc.returncode} unasked: "
                                f"{ev.stderr_tail()[-300:]}")
            say(self.crashes[-1])
            self.start_surely()
        finally:
            self.control.release()

    def sample_forever(self) -> None:
        names = ("eventd_spool_pending", "eventd_deadletter_total")
        while not self.stopping.wait(1.0):
            with self.lock:
                ev = self.ev
            if ev is None:
                continue
            try:
                values = ev.metrics(names)
                rss = ev.status("VmRSS")
            except (OSError, http.client.HTTPException, harness.BenchError):
                continue
            pending = self.pending = values.get("eventd_spool_pending", 0.0)
            self.deadletters_by_pid[ev.proc.pid] = values.get("eventd_deadletter_total", 0.0)
            self.max_rss_kib = max(self.max_rss_kib, rss)
            if pending >= self.max_pending:
                self.max_pending, self.rss_at_max_pending_kib = pending, rss
            if pending < 1000:
                self.rss_low_pending_kib = max(self.rss_low_pending_kib, rss)
            self._hwm(ev)


def probes_take(failures: int) -> float:
    """Seconds a client probing 1, 2, 4 ... 60 s apart (as issue 10 asks) needs to use up N 503s."""
    return sum(min(60.0, 2.0 ** k) for k in range(failures)) + 1.0


class Soak:
    """The run: servers, eventd, two fault lanes, the drain and the verdict."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.seconds = args.minutes * 60.0
        self.work = work
        self.receivers = {"a": SoakReceiver("a"), "b": SoakReceiver("b")}
        self.stream = StreamServer(args.rate, args.seed)
        self.faults: list[Fault] = []
        self.kills: list[tuple[float, int | None]] = []
        self.t0 = 0.0
        self.deadline = 0.0

    # -- faults -------------------------------------------------------------------------
    def _pause(self, low: float, high: float) -> bool:
        """Sleep a random while; False when the run is over (no time for another fault)."""
        time.sleep(self.rng.uniform(low, high))
        return self.deadline - time.time() > 10

    def _kinds(self, kinds: tuple[str, ...]) -> Any:
        """Every kind once in a random order, then at random."""
        first = list(kinds)
        self.rng.shuffle(first)
        yield from first
        while True:
            yield self.rng.choice(kinds)

    def daemon_lane(self, daemon: Daemon) -> None:
        for kind in self._kinds(("rst", "silence", "sigkill")):
            if not self._pause(5, 20):
                return
            fault = Fault(kind, None, time.time())
            self.faults.append(fault)
            if kind == "rst":
                fault.detail["dropped"] = self.stream.drop()
                fault.start = time.time()
            elif kind == "silence":
                seconds = self.rng.uniform(5, 40)
                reconnected, _ = self.stream.silence(seconds)
                fault.detail.update(seconds=round(seconds, 1), eventd_reconnected=reconnected)
            else:
                self.kills.append((time.time(), self.stream.live_number()))
                daemon.sigkill_and_restart(self.rng.uniform(0, 3))
            fault.end = time.time()
            say(f"fault {kind}: {fault.length(fault.end):.1f} s {fault.detail or ''}")

    def receiver_lane(self) -> None:
        longest = min(180.0, self.seconds * 0.2)
        first_down = True
        for kind in self._kinds(("down", "503", "429")):
            if not self._pause(10, 30):
                return
            name = self.rng.choice(sorted(self.receivers))
            receiver = self.receivers[name]
            fault = Fault(kind, name, time.time())
            self.faults.append(fault)
            left = self.deadline - time.time()
            if kind == "down":
                seconds = longest if first_down else math.exp(
                    self.rng.uniform(math.log(3), math.log(longest)))
                first_down = False
                seconds = min(seconds, max(3.0, left - 5))
                fault.detail["seconds"] = round(seconds, 1)
                receiver.stop()
                time.sleep(seconds)
                self.restart_receiver(receiver)
                fault.end = time.time()
            else:
                if kind == "503":
                    count, headers = self.rng.randint(3, 30), {}
                    while count > 3 and probes_take(count) > left - 5:
                        count -= 1  # a fault that fits in the run, so the drain is bounded
                    receiver.fail_next(503, count)
                    fault.nominal = probes_take(count)
                else:
                    count, after = self.rng.randint(1, 5), self.rng.randint(1, 10)
                    headers = {"Retry-After": str(after)}
                    receiver.fail_next(429, count, headers)
                    fault.nominal = count * after + 1.0
                fault.detail.update(count=count, nominal_s=fault.nominal, **headers)
                stop = time.time() + max(5.0, left - 5)
                while receiver.script_left() and time.time() < stop:
                    time.sleep(0.2)
                fault.end = receiver.script_done_at
                fault.detail["used_up_s"] = round(fault.end - fault.start, 1) if fault.end else None
            say(f"fault {kind} on {name}: {fault.detail}")

    @staticmethod
    def restart_receiver(receiver: SoakReceiver) -> None:
        """Listen again on the same port (retried: the port may linger a moment)."""
        for _ in range(100):
            try:
                receiver.start()
                return
            except OSError:
                time.sleep(0.1)
        receiver.start()

    # -- the run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        for receiver in self.receivers.values():
            receiver.start()
        rules = self.work / "soak-rules.yaml"
        write_rules(rules, self.receivers["a"], self.receivers["b"])
        self.stream.start()
        with harness.rest_stub() as rest:
            daemon = Daemon(self.work, rules, self.stream.host,
                            f"http://127.0.0.1:{rest.server_address[1]}/")
            daemon.start()
            sampler = threading.Thread(target=daemon.sample_forever, daemon=True)
            sampler.start()
            self.t0 = time.time()
            self.deadline = self.t0 + self.seconds
            say(f"soak: {self.args.minutes:g} min at {self.args.rate:g} events/s, seed "
                f"{self.args.seed}, work dir {self.work}")
            lanes = [threading.Thread(target=self.daemon_lane, args=(daemon,), daemon=True),
                     threading.Thread(target=self.receiver_lane, daemon=True)]
            for lane in lanes:
                lane.start()
            while time.time() < self.deadline or any(lane.is_alive() for lane in lanes):
                time.sleep(1.0)
                daemon.restart_if_dead()
            self.stream.stop()
            stream_end = time.time()
            say(f"stream stopped after {stream_end - self.t0:.0f} s; draining")
            drained = self.drain(stream_end, daemon)
            pending_at_end = daemon.scrape_pending()
            code = daemon.terminate()
            daemon.stopping.set()
            result = self.verdict(daemon, drained, code, stream_end)
            result["spool_pending_at_end"] = None if pending_at_end is None else int(pending_at_end)
            return result

    def drain(self, since: float, daemon: Daemon) -> float:
        """Wait until every required webhook arrived, or deliveries stall; the time it took."""
        from soak_check import MATCHERS, required_sends
        certain, _ = required_sends(self.stream.sends, self.kills)
        want = {name: {u for u, s in certain.items() if MATCHERS[name](s.kind, s.state)}
                for name in self.receivers}
        last_ok = {name: r.ok for name, r in self.receivers.items()}
        moved = time.time()
        while True:
            missing = 0
            for name, r in self.receivers.items():
                with r.lock:
                    got = {h.uuid for h in r.hits if h.status < 300}
                missing += len(want[name] - got)
            now = time.time()
            if not missing:
                return now - since
            ok = {name: r.ok for name, r in self.receivers.items()}
            if ok != last_ok or any(r.script_left() for r in self.receivers.values()):
                last_ok, moved = ok, now  # scripted failures left: eventd cannot deliver yet
            daemon.restart_if_dead()
            if now - moved > DRAIN_STALL or now - since > DRAIN_MAX:
                say(f"drain: {missing} webhooks still missing; giving up")
                return now - since
            time.sleep(2.0)

    def verdict(self, daemon: Daemon, drained: float, code: int | None,
                stream_end: float) -> dict[str, Any]:
        now = time.time()
        for f in self.faults:  # a scripted fault the run ended in: over when its script was
            if f.end is None and f.target is not None:
                r = self.receivers[f.target]
                if not r.script_left() and r.script_done_at is not None:
                    f.end = r.script_done_at
                    f.detail["used_up_s"] = round(f.end - f.start, 1)
        hits = {name: list(r.hits) for name, r in self.receivers.items()}
        result = check(self.stream.sends, hits, self.faults, self.kills, now)
        listed = subprocess.run([daemon.exe, "deadletter", "list", "--state-dir",
                                 str(daemon.state)], capture_output=True, text=True, env=daemon.env)
        letters = [line for line in listed.stdout.splitlines()
                   if line.strip() and line.strip() != "no dead letters"]
        counts: dict[str, int] = {}
        for f in self.faults:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        result.update({
            "minutes": self.args.minutes, "rate": self.args.rate, "seed": self.args.seed,
            "stream_seconds": round(stream_end - self.t0, 1), "drain_seconds": round(drained, 1),
            "stream_connections": self.stream.connections, "eventd_starts": daemon.starts,
            "eventd_exit_code": code, "faults": counts,
            "fault_log": [{"kind": f.kind, "target": f.target,
                           "at_s": round(f.start - self.t0, 1),
                           "seconds": round(f.length(now), 1), **f.detail} for f in self.faults],
            "deadletters": len(letters), "deadletters_metric": sum(daemon.deadletters_by_pid.values()),
            "max_spool_pending": int(daemon.max_pending),
            "peak_rss_mib": round(daemon.peak_hwm_kib / MIB, 1),
            "max_rss_sampled_mib": round(daemon.max_rss_kib / MIB, 1),
            "rss_at_max_spool_mib": round(daemon.rss_at_max_pending_kib / MIB, 1),
            "rss_max_while_spool_under_1000_mib": round(daemon.rss_low_pending_kib / MIB, 1),
            "healthy_target_during_long_outages": healthy_p99_during_outages(
                hits, self.stream.sends, self.faults, now),
        })
        if letters:
            result["broken"].append(f"{len(letters)} dead letters")
        result["broken"].extend(daemon.crashes)
        if code not in (0, None):
            result["broken"].append(f"eventd exited {code} after SIGTERM")
        return result


def summary(r: dict[str, Any]) -> str:
    """The human-readable verdict."""
    lines = [f"soak: {r['minutes']:g} min, {r['rate']:g} events/s, seed {r['seed']}: "
             f"{r['events_sent']:,} events sent over {r['stream_connections']} connections, "
             f"{r['events_uncertain_at_kill']} sent in the 2 s before a SIGKILL (not required)",
             "faults: " + ", ".join(f"{k} x{v}" for k, v in sorted(r["faults"].items())),
             f"eventd: {r['eventd_starts']} starts, exit {r['eventd_exit_code']} after SIGTERM; "
             f"dead letters {r['deadletters']}; max spool {r['max_spool_pending']:,}; "
             f"peak RSS {r['peak_rss_mib']} MiB (sampled max {r['max_rss_sampled_mib']}, at the "
             f"deepest spool {r['rss_at_max_spool_mib']}, with the spool under 1,000 "
             f"{r['rss_max_while_spool_under_1000_mib']})",
             f"drain after the stream stopped: {r['drain_seconds']} s; left in the spool then: "
             f"{r['spool_pending_at_end']}"]
    for name, t in r["targets"].items():
        p99 = t["latency_p99_s"]
        lines.append(
            f"target {name}: {t['delivered']:,} of {t['expected']:,} delivered, lost {t['lost']}, "
            f"new-key repeats {t['new_key_repeats']}, same-key repeats {t['repeats_same_key']}, "
            f"late {t['late']}, unexpected {t['unexpected']}, delivered of those sent just "
            f"before a SIGKILL {t['late_uncertain_delivered']}; requests {t['requests']:,} "
            f"{t['statuses']}; latency p50 {t['latency_p50_s'] or 0:.3f} s p99 {p99 or 0:.1f} s "
            f"max {t['latency_max_s'] or 0:.1f} s; longest gap {t['max_gap_s'] or 0:.1f} s")
    for row in r["healthy_target_during_long_outages"]:
        lines.append(f"while {row['down']} was down {row['seconds']} s, {row['other']} got "
                     f"{row['webhooks']} webhooks, p99 {row['p99_s'] or 0:.2f} s")
    lines.append("verdict: " + ("PASS" if not r["broken"] else "FAIL: " + "; ".join(r["broken"])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="stream for this long (15)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (200)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000,
                        help="random seed of the faults (default: from the clock)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (state, logs)")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="eventd-soak-")
    work = Path(tmp)
    soak = Soak(args, work)
    result = soak.run()
    out = harness.BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "soak-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result), flush=True)
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"kept {work}")
    return 1 if result["broken"] else 0


if __name__ == "__main__":
    sys.exit(main())
