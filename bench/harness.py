"""The bench's moving parts: the blaster process, eventd, a REST stub and a webhook receiver.

Every process is started by a context manager that kills it on the way out, whatever happened,
so an interrupted bench leaves nothing running.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
STREAM_PATH = "/api/audit/v1/events/"


#: What wait_count's polling reads: the event count and action progress.
POLL_NAMES = ("eventd_events_received_total", "eventd_actions_total")


class BenchError(Exception):
    """A run that could not be measured (a process died, a deadline passed)."""


def free_port() -> int:
    """A port nobody listens on right now (for eventd's --metrics-addr)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill(proc: subprocess.Popen[Any]) -> None:
    """Kill a process we started, if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


class BlasterProcess:
    """A running bench/blaster.py; its JSON report lines arrive on a queue."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([PYTHON, str(BENCH / "blaster.py"), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=BENCH)
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self.wait_for("listening", 60)
        self.port = int(ready["port"])
        self.bytes = ready.get("bytes")
        self.url = f"ws://127.0.0.1:{self.port}{STREAM_PATH}"
        self.host = f"ws://127.0.0.1:{self.port}/"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.reports.put(json.loads(line))
            except ValueError:
                continue

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next report of this kind (earlier reports of other kinds are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        for report in self.seen:
            if report["event"] == kind and not report.get("_taken"):
                report["_taken"] = True
                return report
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"blaster: no {kind!r} report within {timeout:.0f}s")
            try:
                report = self.reports.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise BenchError(
                        f"blaster exited {self.proc.returncode}: {err[-500:]}") from None
                continue
            self.seen.append(report)
            if report["event"] == kind:
                report["_taken"] = True
                return report

    def drain_reports(self) -> list[dict[str, Any]]:
        """Move every report that has arrived into `seen` and return them all."""
        while True:
            try:
                self.seen.append(self.reports.get_nowait())
            except queue.Empty:
                return self.seen


@contextmanager
def blaster(*args: str) -> Iterator[BlasterProcess]:
    """A blaster process for one run, killed afterwards."""
    b = BlasterProcess(list(args))
    try:
        yield b
    finally:
        kill(b.proc)


def run_client(cmd: list[str], env: dict[str, str] | None, timeout: float) -> dict[str, Any]:
    """Run a client process to the end and return the JSON line it printed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=BENCH)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise BenchError(f"{Path(cmd[1]).name}: no result within {timeout:.0f}s") from None
    finally:
        kill(proc)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"{Path(cmd[1]).name} exited {proc.returncode}: {err.strip()[-500:]}")
    return dict(json.loads(lines[-1]))


# -- small HTTP servers in the bench process -------------------------------------------------

class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body in one write, no Nagle: on a kept-alive connection a second small
    # write waits ~40 ms for the client's delayed ACK, which would be billed to eventd.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _RestHandler(_Quiet):
    """Every list is empty and every object missing: eventd's backfill finds nothing."""

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        server: Any = self.server
        server.hits.append(path)
        if path.rstrip("/").count("/") <= 4:  # a list endpoint such as /api/audit/v1/action/
            self._answer(200, b'{"meta":{"limit":100,"next":null,"offset":0,"previous":null,'
                              b'"total_count":0},"objects":[]}')
        else:
            self._answer(404, b'{"error":"Not found"}')

    do_POST = do_GET


class _HookHandler(_Quiet):
    def do_POST(self) -> None:  # noqa: N802
        arrived = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server: Any = self.server
        server.hits.append((arrived, body))
        self._answer(200, b"{}")


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[Any]:
    """A ThreadingHTTPServer on 127.0.0.1:0 with a `hits` list; shut down and joined after."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def rest_stub() -> Any:
    return http_server(_RestHandler)


def webhook_receiver() -> Any:
    return http_server(_HookHandler)


# -- eventd ----------------------------------------------------------------------------------

@dataclass
class Sample:
    """One scrape: when, events received (stream types only), and eventd's RSS."""

    t: float
    count: int
    rss_kib: int


@dataclass
class EventdProcess:
    """`eventd run` as a subprocess, scraped over /metrics and /proc."""

    proc: subprocess.Popen[Any]
    metrics_port: int
    workdir: Path
    samples: list[Sample] = field(default_factory=list)
    scrape_seconds: float = 0.0  # time spent waiting for /metrics, summed
    _conn: http.client.HTTPConnection | None = None

    def metrics(self, names: tuple[str, ...] = ()) -> dict[str, float]:
        """The /metrics page as {`name{labels}`: value}; `names` restricts it (cheap to render)."""
        query = "&".join(f"name[]={name}" for name in names)
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        try:
            conn.request("GET", "/metrics" + (f"?{query}" if query else ""))
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name] = float(value)
                except ValueError:
                    continue
        return values

    @staticmethod
    def received(values: dict[str, float]) -> int:
        """eventd_events_received_total over every type except eventd's own."""
        return int(sum(v for k, v in values.items()
                       if k.startswith("eventd_events_received_total{")
                       and 'type="eventd"' not in k))

    @staticmethod
    def total(values: dict[str, float], prefix: str, **labels: str) -> float:
        """Sum a counter's samples whose labels include all of `labels`."""
        want = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(v for k, v in values.items()
                   if (k == prefix or k.startswith(prefix + "{")) and all(w in k for w in want))

    def status(self, field_name: str) -> int:
        """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        raise BenchError(f"no {field_name} in /proc/{self.proc.pid}/status")

    def sample(self, names: tuple[str, ...] = ()) -> tuple[Sample, dict[str, float]]:
        """Scrape once (only `names`, if given) and remember the sample."""
        if self.proc.poll() is not None:
            raise BenchError(f"eventd exited {self.proc.returncode}: {self.stderr_tail()}")
        t0 = time.perf_counter()
        values = self.metrics(names)
        self.scrape_seconds += time.perf_counter() - t0
        s = Sample(time.time(), self.received(values), self.status("VmRSS"))
        self.samples.append(s)
        return s, values

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /metrics answers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sample()
                return
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise BenchError(f"eventd: /metrics not up within {timeout:.0f}s: "
                                     f"{self.stderr_tail()}") from None
                time.sleep(0.05)

    def wait_count(self, n: int, timeout: float, condition: Any = None,
                   on_sample: Any = None, stall: float = 20.0) -> tuple[Sample, dict[str, float]]:
        """Scrape until `n` stream events are counted (and `condition(values)` holds).

        The interval is 20 ms near the end; far from it the bench scrapes less often (up to
        1 s), so that rendering /metrics (1,000+ series with 1,000 rules, ~20 ms) does not take
        a visible share of eventd's CPU.
        """
        deadline = time.monotonic() + timeout
        last: Sample | None = None
        progress = (time.monotonic(), -1, -1.0)  # when the count or the condition last moved
        while True:
            # While counting, ask only for the two families the loop reads: the full page
            # renders every series (1,000+ with 1,000 rules) and would tax eventd's CPU.
            s, values = self.sample(POLL_NAMES)
            if on_sample is not None:
                on_sample(s)
            if s.count >= n:
                # The full page for the checks; the time stays the cheap scrape's, which saw
                # the count reached (rendering every series takes ~50 ms with 1,000 rules).
                _, values = self.sample()
                if condition is None or condition(values):
                    return s, values
            now = time.monotonic()
            actions = sum(v for k, v in values.items() if k.startswith("eventd_actions_total{"))
            if (s.count, actions) != progress[1:]:
                progress = (now, s.count, actions)
            elif now - progress[0] > stall:
                raise BenchError(f"eventd stalled at {s.count} of {n} events for {stall:.0f}s "
                                 f"(stderr: {self.stderr_tail()[-300:]!r})")
            if now > deadline:
                raise BenchError(f"eventd counted {s.count} of {n} events in {timeout:.0f}s")
            interval = 0.02
            if last is not None and s.count > last.count and s.t > last.t:
                rate = (s.count - last.count) / (s.t - last.t)
                interval = min(1.0, max(0.02, 0.3 * (n - s.count) / rate))
            last = s
            time.sleep(interval)

    def stderr_tail(self) -> str:
        path = self.workdir / "eventd.stderr"
        try:
            return path.read_text()[-800:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(self.proc)
            raise BenchError(f"eventd did not exit within {timeout:.0f}s of SIGTERM") from None


@contextmanager
def eventd(workdir: Path, rules: Path, stream_host: str, rest_host: str,
           extra_args: tuple[str, ...] = ()) -> Iterator[EventdProcess]:
    """`eventd run` against the blaster, metrics on a free port, logging at WARNING."""
    port = free_port()
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("DOCKERCLOUD_", "EVENTD_")):
            del env[name]
    env.update({"DOCKERCLOUD_STREAM_HOST": stream_host, "DOCKERCLOUD_REST_HOST": rest_host,
                "DOCKERCLOUD_USER": "bench", "DOCKERCLOUD_APIKEY": "bench"})
    exe = ROOT / ".venv" / "bin" / "eventd"
    cmd = [str(exe) if exe.exists() else "eventd", "run", "--rules", str(rules),
           "--state-dir", str(state), "--metrics-addr", f"127.0.0.1:{port}",
           "--log-level", "WARNING", *extra_args]
    with open(workdir / "eventd.stderr", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=workdir)
    ev = EventdProcess(proc, port, workdir)
    try:
        ev.wait_ready()
        yield ev
    finally:
        kill(proc)
