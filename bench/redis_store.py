"""The Redis store's row: eventd's throughput with `--store redis://...` beside SQLite and the
bare websocket-client baseline of the same run.

`.venv/bin/python bench/redis_store.py [--runs N] [--events N] [--redis-url URL]`

Two rule sets, each run on both stores: the bench's 100 rules (log actions: the store only
keeps the de-dup window's snapshot and the throttles), and the same 100 rules plus a webhook
on every container event (about 1 event in 4 accepted into the spool, one Redis round trip
each, delivered to a local receiver). Rounds interleave the five clients; figures are medians.
Each Redis run uses a cluster name of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import redis  # noqa: E402
import rulegen  # noqa: E402
import run  # noqa: E402


def eventd_rate(work: Path, rules: Path, events: int, rest_host: str,
                store: tuple[str, ...]) -> float:
    """Events per second from the blaster's first byte to N events counted by eventd."""
    with harness.blaster("--events", str(events)) as b, \
            harness.eventd(work, rules, b.host, rest_host, extra_args=store) as ev:
        start = b.wait_for("blast_start", 30)["t"]
        sample, _ = ev.wait_count(events, 120 + events / 500)
        ev.terminate()
    return events / (sample.t - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    cfg = run.Config.from_args(argparse.Namespace(
        quick=True, runs=args.runs, events=args.events, memory_events=None, memory_runs=None,
        latency_seconds=None, latency_rate=0.0, latency_runs=None, only=["throughput"]))
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="eventd-bench-redis-") as tmp, \
            harness.rest_stub() as rest, harness.webhook_receiver() as hook:
        tmp_path = Path(tmp)
        rest_host = f"http://127.0.0.1:{rest.server_port}/"
        plain = rulegen.write(tmp_path / "r100", "rules_100", rulegen.rules(100)).parent
        hooked = rulegen.write(tmp_path / "r100hook", "rules_100", rulegen.rules(100, [
            rulegen.webhook_rule(f"http://127.0.0.1:{hook.server_port}/hook")])).parent
        count = iter(range(1_000_000))

        def once(name: str, rules: Path, store: str) -> None:
            work = tmp_path / f"run{next(count)}"
            work.mkdir()
            cluster = f"bench-{secrets.token_hex(4)}"
            extra = ("--store", store, "--cluster", cluster) if store != "sqlite" else ()
            try:
                rate = eventd_rate(work, rules, args.events, rest_host, extra)
            finally:
                keys = list(client.scan_iter(match=f"{cluster}:*"))
                if keys:
                    client.delete(*keys)
            rates.setdefault(name, []).append(rate)
            run.say(f"  {name}: {rate:,.0f} events/s")

        for i in range(args.runs):
            run.say(f"round {i + 1}/{args.runs} ({args.events:,} events)")
            rates.setdefault("baseline", []).append(run.run_baseline(cfg)["events_per_s"])
            run.say(f"  baseline: {rates['baseline'][-1]:,.0f} events/s")
            once("100 rules, sqlite", plain, "sqlite")
            once("100 rules, redis", plain, args.redis_url)
            once("100 rules + webhook, sqlite", hooked, "sqlite")
            once("100 rules + webhook, redis", hooked, args.redis_url)
    base = statistics.median(rates["baseline"])
    print("| figure | events/s (median) | vs baseline | runs |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {median:,.0f} | {median / base:.2f}x | {runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
