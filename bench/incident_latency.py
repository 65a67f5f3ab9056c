"""Event -> incident at the fake, with logs attached: from the Engine's timeNano of a
container's `die` to PagerDuty's fake accepting the trigger that carries its last 20 lines.

`python bench/incident_latency.py [--count 50]` (issue 24). It starts its own dockerd
(tests/docker_engine.py), the PagerDuty Events API v2 fake (tests/incident_services.py) that
stamps each accepted event on arrival, and `eventd run --source docker` as a subprocess with one
rule (die with a non-zero exit code, `enrich: logs` -> pagerduty, one incident per container).
Each container prints 50 lines and exits 1, one at a time. Prints p50, p90, p99 and max of
(arrival - timeNano), and the mean time eventd spent reading logs (eventd_enrich_duration_seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from tests.daemon_helpers import free_port  # noqa: E402
from tests.docker_engine import DockerEngine  # noqa: E402
from tests.incident_services import Answer, PagerDutyFake  # noqa: E402

KEY = "0123456789abcdef0123456789abcdef"
FIFTY = "i=1; while [ $i -le 50 ]; do echo \"line $i of $HOSTNAME\"; i=$((i+1)); done; exit 1"


class Stamping(PagerDutyFake):
    """The fake, noting when (time.time_ns) each accepted trigger arrived, and its body."""

    def __init__(self) -> None:
        super().__init__((KEY,))
        self.arrivals: list[tuple[int, dict[str, Any]]] = []

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        at = time.time_ns()
        answer = super().answer(method, path, headers, body)
        if answer[0] == 202:
            import json

            self.arrivals.append((at, json.loads(body)))
        return answer


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(count: int = 50) -> dict[str, float]:
    """Run the scenario; the latency figures in milliseconds."""
    workdir = Path(tempfile.mkdtemp(prefix="inb", dir="/tmp"))
    fake = Stamping().start()
    rules = workdir / "rules.yaml"
    rules.write_text(textwrap.dedent("""
        rules:
          - name: died
            match: {type: container, action: die, attributes.exitCode: {not: "0"}}
            enrich: {logs: {lines: 20}}
            actions:
              - pagerduty:
                  url: "${PD_URL}"
                  routing_key: "${PAGERDUTY_ROUTING_KEY}"
                  labels: {alertname: Died, container: "{{ event.name }}"}
                  summary: "{{ event.name }} exited {{ event.attributes.exitCode }}"
                  custom_details: {nano: "{{ event.timeNano }}"}
    """))
    port = free_port()
    names = [f"inc-lat-{i}" for i in range(count)]
    with DockerEngine(workdir / "e") as engine:
        env = dict(os.environ, DOCKER_HOST=engine.host, EVENTD_SOURCE="docker",
                   PD_URL=fake.url, PAGERDUTY_ROUTING_KEY=KEY)
        eventd = subprocess.Popen(
            [sys.executable, "-m", "eventd", "run", "--rules", str(rules), "--state-dir",
             str(workdir / "state"), "--log-level", "WARNING", "--metrics-addr",
             f"127.0.0.1:{port}"], env=env)
        try:
            time.sleep(2.0)  # connected (a bench, not a test)
            began = time.monotonic()
            for name in names:
                engine.run(name, ["sh", "-c", FIFTY])
                deadline = time.monotonic() + 10
                while len(fake.arrivals) < names.index(name) + 1 and time.monotonic() < deadline:
                    time.sleep(0.005)
            elapsed = time.monotonic() - began
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        finally:
            eventd.terminate()
            eventd.wait(15)
            engine.remove(*names)
    fake.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    latencies = [(at - int(body["payload"]["custom_details"]["nano"])) / 1e6
                 for at, body in fake.arrivals]
    with_logs = sum(1 for _, body in fake.arrivals
                    if body["payload"]["custom_details"].get("logs", "").count("\n") == 19)
    read = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("eventd_enrich_duration_seconds_") and 'what="logs"' in line
            and not line.startswith("eventd_enrich_duration_seconds_bucket")}
    mean_read = 1000 * read.get("eventd_enrich_duration_seconds_sum", float("nan")) / max(
        1.0, read.get("eventd_enrich_duration_seconds_count", 0.0))
    return {"count": float(len(latencies)), "expected": float(count), "seconds": elapsed,
            "with_logs": float(with_logs), "p50_ms": _percentile(latencies, 0.50),
            "p90_ms": _percentile(latencies, 0.90), "p99_ms": _percentile(latencies, 0.99),
            "max_ms": max(latencies, default=float("nan")), "logs_read_mean_ms": mean_read}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    args = parser.parse_args()
    figures = run(args.count)
    print(f"die -> PagerDuty incident with 20 log lines over {int(figures['count'])}/"
          f"{int(figures['expected'])} containers ({int(figures['with_logs'])} with 20 lines, "
          f"{figures['seconds']:.1f} s): p50 {figures['p50_ms']:.1f} ms, "
          f"p90 {figures['p90_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
          f"max {figures['max_ms']:.1f} ms; logs read in {figures['logs_read_mean_ms']:.1f} ms "
          f"on average")
    return 0 if figures["count"] == figures["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
