"""The `postgres` kind's throughput against a bare psycopg loop, in the same run (issue 22).

`python bench/postgres.py [--events 100000] [--runs 3] [--dsn postgresql://...]`

- eventd: the blaster streams N events, one rule writes each into `eventd_events`' columns
  (every stream event a row (`type: {not: eventd}`), through the spool, batched by the dispatcher); the clock
  runs from the blaster's first byte until the table holds N rows.
- bare loop: the same number of rows of the same shape (the stream's templates, a fresh uuid
  each, the same id/rule/event_type/event/matched_at values), `cursor.execute` per row, a
  commit every 256 rows: the most eventd puts in one transaction (its batches are what is
  waiting in the queue, up to 256), so the loop commits no more often than eventd does.
- for information: psycopg's `executemany` (pipelined) with the same commits.

Rounds alternate eventd and the loops, so drift on the machine hits both; figures are
medians. Prints markdown rows for the README's Benchmark table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
import streamgen  # noqa: E402

from eventd.actions.pgtables import events_ddl  # noqa: E402

BATCH = 256
INSERT = ("INSERT INTO {table} (id, rule, event_type, event, matched_at) VALUES "
          "(%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fresh_table(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}".encode())
        conn.execute(events_ddl(name).encode())
    return name


def rows_in(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()[0])


def run_eventd(dsn: str, events: int, work: Path, table: str) -> dict[str, Any]:
    rules = work / "rules"
    rules.mkdir()
    (rules / "pg.yaml").write_text(orjson.dumps({"rules": [{
        "name": "to-postgres", "match": {"type": {"not": "eventd"}},
        "actions": [{"postgres": {"dsn": dsn, "table": table}}]}]}).decode())
    with harness.rest_stub() as rest, harness.blaster("--events", str(events)) as b, \
            harness.eventd(work, rules, b.host, f"http://127.0.0.1:{rest.server_port}/") as ev:
        start = b.wait_for("blast_start", 30)["t"]
        deadline = time.monotonic() + 60 + events / 500
        while True:
            values = ev.metrics(("eventd_actions_total",))
            done = ev.total(values, "eventd_actions_total", kind="postgres", outcome="success")
            if done >= events:
                end = time.time()
                break
            if time.monotonic() > deadline:
                raise harness.BenchError(f"eventd wrote {done} of {events} rows: "
                                         f"{ev.stderr_tail()}")
            time.sleep(0.02 if events - done < 5000 else 0.2)
        failed = ev.total(ev.metrics(), "eventd_actions_total", kind="postgres",
                          outcome="deadletter")
        exit_code = ev.terminate()
    found = rows_in(dsn, table)
    if found != events:
        raise harness.BenchError(f"the table holds {found} rows for {events} events")
    return {"rows_per_s": events / (end - start), "seconds": end - start,
            "deadletters": failed, "exit_code": exit_code}


def same_rows(events: int, seed: int = 1) -> list[tuple[Any, ...]]:
    """Rows shaped as eventd writes them for the blaster's events."""
    rng = random.Random(seed)
    pool = streamgen.templates(seed)
    matched = dt.datetime.now(dt.timezone.utc).isoformat()
    out = []
    for _ in range(events):
        event = dict(rng.choice(pool))
        event["uuid"] = str(uuid.uuid4())
        out.append((uuid.uuid4().hex, "to-postgres", event["type"],
                    orjson.dumps(event).decode(), matched))
    return out


def run_loop(dsn: str, rows: list[tuple[Any, ...]], table: str, many: bool) -> dict[str, Any]:
    sql = INSERT.format(table=table).encode()
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor:
            for at in range(0, len(rows), BATCH):
                chunk = rows[at:at + BATCH]
                if many:
                    cursor.executemany(sql, chunk)
                else:
                    for row in chunk:
                        cursor.execute(sql, row)
                conn.commit()
        seconds = time.perf_counter() - started
    if rows_in(dsn, table) != len(rows):
        raise harness.BenchError("the bare loop's table is short")
    return {"rows_per_s": len(rows) / seconds, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"eventd": [], "loop": [], "many": []}
    rows = same_rows(args.events)
    with tempfile.TemporaryDirectory(prefix="eventd-bench-pg-") as tmp:
        for run in range(args.runs):
            say(f"round {run + 1}/{args.runs}")
            work = Path(tmp) / f"run{run}"
            work.mkdir()
            table = fresh_table(args.dsn, f"bench_eventd_{run}")
            results["eventd"].append(run_eventd(args.dsn, args.events, work, table))
            say(f"  eventd {results['eventd'][-1]['rows_per_s']:,.0f} rows/s")
            table = fresh_table(args.dsn, f"bench_loop_{run}")
            results["loop"].append(run_loop(args.dsn, rows, table, many=False))
            say(f"  loop   {results['loop'][-1]['rows_per_s']:,.0f} rows/s")
            table = fresh_table(args.dsn, f"bench_many_{run}")
            results["many"].append(run_loop(args.dsn, rows, table, many=True))
            say(f"  many   {results['many'][-1]['rows_per_s']:,.0f} rows/s")
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            for run in range(args.runs):
                for kind in ("eventd", "loop", "many"):
                    conn.execute(f"DROP TABLE IF EXISTS bench_{kind}_{run}".encode())
    median = {k: statistics.median(r["rows_per_s"] for r in v) for k, v in results.items()}
    ratio = median["eventd"] / median["loop"]
    print(f"| postgres kind: {args.events:,} events -> rows, every stream event ({args.runs} runs) | "
          f"{median['eventd']:,.0f} rows/s | {ratio:.2f}x the bare loop | >= 0.8x | "
          f"{'met' if ratio >= 0.8 else 'NOT met'} |")
    print(f"| bare psycopg {psycopg.__version__} loop: execute per row, commit every {BATCH} "
          f"({args.runs} runs) | {median['loop']:,.0f} rows/s | 1.00x | - | - |")
    print(f"| psycopg executemany (pipelined), commit every {BATCH} (info) | "
          f"{median['many']:,.0f} rows/s | {median['many'] / median['loop']:.2f}x | - | - |")
    print(f"runs: {orjson.dumps(results).decode()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
