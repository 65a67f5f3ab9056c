"""A target down for minutes, another healthy: how soon the first drains, how the other fares.

`python bench/outage.py [--outage 180] [--rate 20] [--after 90]` (issue 10, part 1). Two real
webhook receivers (tests/receiver.py) and one Dispatcher with a fresh spool: receiver A goes
down for `--outage` seconds while both get `--rate` webhooks a second each, for the outage
and `--after` seconds more. It prints how long after A's return its whole queue was
delivered (target: within 65 s), the latency of B's webhooks throughout (target: p99 under
1 s), and whether any Idempotency-Key arrived twice. `run()` returns the figures, for the soak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventd.actions.base import ActionContext  # noqa: E402
from eventd.actions.webhook import WebhookAction  # noqa: E402
from eventd.delivery.dispatcher import Dispatcher  # noqa: E402
from eventd.ops.metrics import Metrics  # noqa: E402
from eventd.records import ActionJob  # noqa: E402
from eventd.settings import Settings  # noqa: E402
from eventd.stores.sqlite import SqliteStore  # noqa: E402
from tests.receiver import WebhookReceiver  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(outage: float = 180.0, rate: float = 20.0, after: float = 90.0) -> dict[str, Any]:
    """Run the scenario; the figures as a dict."""
    with tempfile.TemporaryDirectory() as state, WebhookReceiver() as down, \
            WebhookReceiver() as healthy:
        store = SqliteStore(Path(state))
        context = ActionContext(settings=Settings(), metrics=Metrics())
        hook = WebhookAction(context)
        dispatcher = Dispatcher(context, store, {"webhook": hook})
        dispatcher.start()
        sent: dict[str, float] = {}
        started = time.monotonic()
        down.down_for(outage)
        returned_at = started + outage
        count = 0
        try:
            while time.monotonic() - started < outage + after:
                for receiver, name in ((down, "a"), (healthy, "b")):
                    job_id = f"{name}-{count:07d}"
                    options = {"url": receiver.url + "/hook", "json": {"n": count}}
                    sent[job_id] = time.monotonic()
                    dispatcher.submit(ActionJob(
                        id=job_id, rule="outage", kind="webhook", options=options, event={},
                        target=hook.target(options), created_at=time.time()))
                count += 1
                time.sleep(max(0.0, started + count / rate - time.monotonic()))
            dispatcher.wait_idle(120)
        finally:
            dispatcher.close(5)
            hook.close()
            store.close()
        a_during = [r for r in down.delivered()
                    if sent[str(r.header("Idempotency-Key"))] < returned_at]
        a_keys = Counter(r.header("Idempotency-Key") for r in down.delivered())
        b_keys = Counter(r.header("Idempotency-Key") for r in healthy.delivered())
        b_latency = [r.at - sent[str(r.header("Idempotency-Key"))] for r in healthy.delivered()]
        accepted_during = sum(1 for key, at in sent.items() if key.startswith("a-")
                              and at < returned_at)
        return {
            "outage_s": outage, "rate_per_s": rate,
            "a_accepted_during_outage": accepted_during,
            "a_delivered_from_outage": len(a_during),
            "a_drained_after_return_s": (max(r.at for r in a_during) - returned_at)
            if a_during else float("nan"),
            "a_first_delivery_after_return_s": (min(r.at for r in a_during) - returned_at)
            if a_during else float("nan"),
            "a_repeated_keys": sum(1 for n in a_keys.values() if n > 1),
            "b_delivered": len(b_latency), "b_sent": sum(1 for k in sent if k.startswith("b-")),
            "b_p50_s": _percentile(b_latency, 0.50), "b_p99_s": _percentile(b_latency, 0.99),
            "b_max_s": max(b_latency) if b_latency else float("nan"),
            "b_repeated_keys": sum(1 for n in b_keys.values() if n > 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=180.0, help="seconds target A is down")
    parser.add_argument("--rate", type=float, default=20.0, help="webhooks per second per target")
    parser.add_argument("--after", type=float, default=90.0, help="seconds to go on after it")
    args = parser.parse_args()
    threading.current_thread().name = "bench"
    fig = run(args.outage, args.rate, args.after)
    print(f"target A down {fig['outage_s']:.0f} s at {fig['rate_per_s']:.0f}/s: "
          f"{fig['a_delivered_from_outage']} of {fig['a_accepted_during_outage']} accepted during "
          f"the outage delivered; first {fig['a_first_delivery_after_return_s']:.1f} s and last "
          f"{fig['a_drained_after_return_s']:.1f} s after its return (target < 65 s)")
    print(f"target B healthy: {fig['b_delivered']} of {fig['b_sent']} delivered, latency p50 "
          f"{fig['b_p50_s'] * 1000:.1f} ms, p99 {fig['b_p99_s'] * 1000:.1f} ms, max "
          f"{fig['b_max_s'] * 1000:.1f} ms (target p99 < 1 s)")
    print(f"keys delivered twice: A {fig['a_repeated_keys']}, B {fig['b_repeated_keys']}")


if __name__ == "__main__":
    main()
