"""The Alertmanager round trip, timed: fire -> active in Alertmanager -> still active past its
first endsAt -> resolve -> resolved in Alertmanager -> "resolved" notification at a receiver.

A real Alertmanager (Debian's prometheus-alertmanager; group_wait 1s, group_interval 1s), the
emulator, eventd in this process with `--alert-resend 1s`, the test receiver. Each run uses a
node of its own; the figures are medians over `--runs` (5). Run from the repository root:
`.venv/bin/python bench/alert_roundtrip.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from eventd.emulator import Emulator  # noqa: E402
from tests.daemon_helpers import emulator_env, start_daemon, write_rules  # noqa: E402
from tests.external import Alertmanager  # noqa: E402
from tests.receiver import WebhookReceiver  # noqa: E402

RULES = """
rules:
  - name: node-unreachable
    match: {type: node, state: Unreachable}
    actions:
      - alertmanager:
          url: "${AM_URL}"
          labels: {alertname: NodeUnreachable, node: "{{ event.resource_uri }}"}
  - name: node-deployed-again
    match: {type: node, state: Deployed}
    actions:
      - alertmanager:
          url: "${AM_URL}"
          labels: {alertname: NodeUnreachable, node: "{{ event.resource_uri }}"}
          resolve: true
"""


def until(condition: Callable[[], Any], timeout: float = 30.0) -> float:
    """Poll every 10 ms; the time it became true (raises after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError("condition not met")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    figures: dict[str, list[float]] = {"active": [], "past_ends": [], "resolved": [], "notified": []}
    with tempfile.TemporaryDirectory() as tmp, Emulator(tick=0.02) as emulator:
        receiver = WebhookReceiver().start()
        with Alertmanager(Path(tmp) / "am", webhook_url=f"{receiver.url}/am") as am:
            rules = write_rules(Path(tmp) / "rules", RULES)
            daemon = start_daemon(emulator, rules, Path(tmp) / "state",
                                  env=emulator_env(emulator, AM_URL=am.url), alert_resend=1.0)
            try:
                emulator.wait_for_connections(1, 10)
                for run in range(runs):
                    node = f"/api/infra/v1/node/00000000-0000-4000-8000-{run:012d}/"

                    def alert(node: str = node) -> dict[str, Any] | None:
                        alerts = requests.get(f"{am.url}/api/v2/alerts", timeout=5).json()
                        return next((a for a in alerts if a["labels"].get("node") == node), None)

                    def notified(status: str, node: str = node) -> bool:
                        return any(a["status"] == status and a["labels"].get("node") == node
                                   for r in receiver.requests for a in r.json()["alerts"])

                    t0 = time.monotonic()
                    emulator.emit_event(type="node", action="update", state="Unreachable",
                                        resource_uri=node)
                    figures["active"].append(until(alert) - t0)
                    until(lambda: notified("firing"))
                    # 4 s (4 x resend) past the first send, plus 2 s: still active
                    until(lambda t0=t0: time.monotonic() - t0 > 6.0)
                    found = alert()
                    figures["past_ends"].append(1.0 if found and found["status"]["state"] == "active"
                                                else 0.0)
                    t1 = time.monotonic()
                    emulator.emit_event(type="node", action="update", state="Deployed",
                                        resource_uri=node)
                    figures["resolved"].append(until(lambda: alert() is None) - t1)
                    figures["notified"].append(until(lambda: notified("resolved")) - t1)
                    print(f"run {run + 1}: active {figures['active'][-1]:.3f} s, resolved "
                          f"{figures['resolved'][-1]:.3f} s, notified {figures['notified'][-1]:.3f} s",
                          file=sys.stderr)
            finally:
                daemon.stop()
        receiver.stop()
    print(f"| step ({runs} runs, median) | time |\n|---|---|")
    print(f"| Unreachable event -> alert active in Alertmanager | "
          f"{statistics.median(figures['active']) * 1000:.0f} ms |")
    print(f"| still active 6 s later (first endsAt + 2 s) | {int(sum(figures['past_ends']))} of {runs} |")
    print(f"| Deployed event -> alert resolved in Alertmanager | "
          f"{statistics.median(figures['resolved']) * 1000:.0f} ms |")
    print(f"| Deployed event -> \"resolved\" notification at the receiver | "
          f"{statistics.median(figures['notified']) * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
