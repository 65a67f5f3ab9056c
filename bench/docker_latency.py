"""Die-to-webhook latency on a real Docker Engine: from the Engine's timeNano of a container's
`die` to the webhook arriving at a receiver, through `eventd run --source docker`.

`python bench/docker_latency.py [--count 100] [--parallel 1]` (issue 16). It starts its own
dockerd (tests/docker_engine.py: rootful, vfs, all state in a temp dir; Debian's docker.io and
busybox-static), a receiver that stamps each request on arrival, and eventd as a subprocess
with one rule (die with a non-zero exit code -> webhook carrying `timeNano`). Then it runs
`--count` containers that exit with code 1, `--parallel` at a time, and prints p50, p90, p99 and
max of (arrival - timeNano). Engine, eventd and receiver share one host clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.docker_engine import DockerEngine  # noqa: E402


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


def run(count: int = 100, parallel: int = 1) -> dict[str, float]:
    """Run the scenario; the latency figures in milliseconds."""
    workdir = Path(tempfile.mkdtemp(prefix="dkb", dir="/tmp"))
    receiver = Stamping()
    rules = workdir / "rules.yaml"
    rules.write_text(textwrap.dedent(f"""
        rules:
          - name: died
            match: {{type: container, action: die, attributes.exitCode: {{not: "0"}}}}
            actions:
              - webhook:
                  url: "{receiver.url}"
                  json: {{name: "{{{{ event.name }}}}", nano: "{{{{ event.timeNano }}}}"}}
    """))
    with DockerEngine(workdir / "e") as engine:
        env = dict(os.environ, DOCKER_HOST=engine.host, EVENTD_SOURCE="docker")
        eventd = subprocess.Popen(
            [sys.executable, "-m", "eventd", "run", "--rules", str(rules), "--state-dir",
             str(workdir / "state"), "--log-level", "WARNING"], env=env)
        try:
            time.sleep(2.0)  # connected (a bench, not a test: no readiness probe needed here)
            names = [f"lat-{i}" for i in range(count)]

            def one(name: str) -> None:
                engine.run(name, ["false"])

            began = time.monotonic()
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(one, names))
            deadline = time.monotonic() + 30
            while len(receiver.arrivals) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed = time.monotonic() - began
        finally:
            eventd.terminate()
            eventd.wait(15)
            engine.remove(*names)
    latencies = [(at - int(body["nano"])) / 1e6 for at, body in receiver.arrivals]
    receiver.server.shutdown()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"count": float(len(latencies)), "expected": float(count), "seconds": elapsed,
            "p50_ms": _percentile(latencies, 0.50), "p90_ms": _percentile(latencies, 0.90),
            "p99_ms": _percentile(latencies, 0.99), "max_ms": max(latencies, default=float("nan"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    figures = run(args.count, args.parallel)
    print(f"die -> webhook over {int(figures['count'])}/{int(figures['expected'])} containers "
          f"({args.parallel} at a time, {figures['seconds']:.1f} s): p50 {figures['p50_ms']:.1f} ms, "
          f"p90 {figures['p90_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
          f"max {figures['max_ms']:.1f} ms")
    return 0 if figures["count"] == figures["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
