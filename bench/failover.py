"""Failover figure of a cluster: SIGKILL of a stream's leader -> first event processed by the
new leader, median and worst of N runs (target: under --lease-ttl + 5 s).

Two `eventd run` replicas on one Redis (REDIS_URL, default redis://127.0.0.1:6379/0, under a
cluster name of its own, deleted at the end) consume one namespace of the emulator, which
emits a container event every 20 ms. Each run kills the leader, times until the other
replica's `eventd_rule_matches_total` moves, then starts the killed one again as the standby.
`--settle S`: the standby has been up S seconds at least when the leader is killed (a replica
in its first TTL leaves a stream whose holder did not release it for the rest of that TTL).
`--alone`: one replica, killed and started again at once (a restarted pod): until the new
process has processed an event.

    python bench/failover.py [--runs 5] [--lease-ttl 10s] [--settle 0] [--alone]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eventd.emulator import Emulator  # noqa: E402
from eventd.settings import parse_duration  # noqa: E402

NAMESPACE = "acme"
RULES = """\
rules:
  - name: seen
    match: {type: container}
    actions:
      - log: {message: "{{ event.uuid }}", level: debug}
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Replica:
    """One `eventd run` process of the cluster."""

    def __init__(self, name: str, emu: Emulator, work: Path, store: str, cluster: str,
                 ttl: str) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.name, self.work = name, work
        self.argv = [sys.executable, "-m", "eventd", "run", "--rules", str(work / "rules.yaml"),
                     "--state-dir", str(work / f"state-{name}"), "--store", store,
                     "--cluster", cluster, "--lease-ttl", ttl, "--metrics-addr",
                     f"127.0.0.1:{self.port}", "--ping-interval", "1s", "--backoff-max", "0.5s"]
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent",
                    "DOCKERCLOUD_REST_HOST": emu.rest_url, "DOCKERCLOUD_STREAM_HOST": emu.stream_url,
                    "DOCKERCLOUD_USER": "user", "DOCKERCLOUD_APIKEY": "apikey",
                    "DOCKERCLOUD_NAMESPACE": NAMESPACE}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        log = (self.work / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def sample(self, name: str, **labels: str) -> float | None:
        try:
            text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=1).text
        except requests.RequestException:
            return None
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def leads(self) -> bool:
        return self.sample("eventd_stream_leader", namespace=NAMESPACE) == 1.0

    def matches(self) -> float:
        return self.sample("eventd_rule_matches_total", rule="seen") or 0.0


def wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"failover bench: {what} did not happen within {timeout:.0f} s")


def one_run(replicas: list[Replica], ttl: float, settle: float) -> tuple[float, float]:
    """Kill the leader; seconds until the standby processed an event (and how long the standby
    had been up at the kill); restart the killed one. Alone: until the restarted one did."""
    leader = wait(lambda: next((r for r in replicas if r.leads()), None), 60, "a leader")
    other = next((r for r in replicas if r is not leader), None)
    if other is not None:
        wait(lambda: other.sample("eventd_stream_leader", namespace=NAMESPACE) == 0.0, 60,
             "the standby up")
        wait(lambda: time.monotonic() - other.started >= settle, settle + 1, "the settling")
    wait(lambda: leader.matches() > 0, 30, "events processed by the leader")
    before = other.matches() if other is not None else 0.0
    killed = time.monotonic()
    age = killed - other.started if other is not None else 0.0
    leader.kill()
    if other is None:
        leader.start()
        wait(lambda: leader.matches() > 0, ttl + 30, "the restarted replica's first event")
        return time.monotonic() - killed, age
    wait(lambda: other.matches() > before, ttl + 30, "the takeover")
    took = time.monotonic() - killed
    leader.start()
    return took, age


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lease-ttl", default="10s")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds the standby has been up at least at the kill")
    parser.add_argument("--alone", action="store_true",
                        help="one replica, killed and started again at once")
    args = parser.parse_args()
    ttl = parse_duration(args.lease_ttl, "--lease-ttl")
    store = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    client = redis.Redis.from_url(store)
    client.ping()
    cluster = f"bench-failover-{uuid.uuid4().hex[:8]}"
    figures: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, Emulator(tick=0.05, namespaces=(NAMESPACE,)) as emu:
        work = Path(tmp)
        (work / "rules.yaml").write_text(RULES)
        replicas = [Replica(n, emu, work, store, cluster, args.lease_ttl)
                    for n in (("a",) if args.alone else ("a", "b"))]
        stop = threading.Event()

        def emit() -> None:
            while not stop.wait(0.02):
                emu.emit_event(type="container", namespace=NAMESPACE)

        emitter = threading.Thread(target=emit, daemon=True)
        try:
            for replica in replicas:
                replica.start()
            emitter.start()
            for run in range(1, args.runs + 1):
                took, age = one_run(replicas, ttl, args.settle)
                figures.append(took)
                say(f"run {run}: SIGKILL of the leader -> first event on the new leader "
                    f"{took:.2f} s" + ("" if args.alone else f" (standby up {age:.2f} s)"))
        finally:
            stop.set()
            for replica in replicas:
                replica.stop()
            keys = list(client.scan_iter(f"{cluster}:*"))
            if keys:
                client.delete(*keys)
    target = ttl + 5
    median, worst = statistics.median(figures), max(figures)
    print("| figure | value | target | met |")
    print("|---|---|---|---|")
    print(f"| failover: SIGKILL of the leader -> first event processed by the new leader, "
          f"median of {len(figures)} (--lease-ttl {args.lease_ttl}) | {median:.2f} s | "
          f"< {target:.0f} s | {'met' if median < target else 'NOT met'} |")
    print(f"| failover, worst | {worst:.2f} s | < {target:.0f} s | "
          f"{'met' if worst < target else 'NOT met'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
