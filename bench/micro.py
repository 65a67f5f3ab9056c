"""In-process micro-benchmark: rule matching and the engine, per event, for 100 and 1,000 rules.

`python bench/micro.py` (after `make test` or `make bench` built .venv). No sockets: it shows
where the time of the engine thread goes, with the same event mix and rule sets as run.py.
Figures are microseconds per event (lower is better), best of 3 passes.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import rulegen  # noqa: E402
import streamgen  # noqa: E402

from eventd.actions import ACTIONS, resolve  # noqa: E402
from eventd.actions.base import ActionContext  # noqa: E402
from eventd.delivery.dispatcher import Dispatcher  # noqa: E402
from eventd.engine import Engine  # noqa: E402
from eventd.events import Received, parse_event  # noqa: E402
from eventd.ops.metrics import Metrics  # noqa: E402
from eventd.ruleset.loader import load_rules  # noqa: E402
from eventd.settings import Settings  # noqa: E402
from eventd.stores.sqlite import SqliteStore  # noqa: E402

EVENTS = 50_000


def best_of(passes: int, run: object) -> float:
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def measure(count: int, work: Path) -> tuple[float, float]:
    rules = load_rules([rulegen.write(work / str(count), "rules", rulegen.rules(count))], {})
    templates = streamgen.templates(1)
    for event in templates:
        rules.match(event)  # build the index plans outside the timing
    match_s = best_of(3, lambda: [rules.match(e) for e in templates])
    frames = []
    for i in range(EVENTS):
        event = dict(templates[i % len(templates)])
        event["uuid"] = str(uuid.uuid4())
        frames.append(orjson.dumps(event))
    metrics = Metrics()
    context = ActionContext(settings=Settings(), metrics=metrics, state_dir=work,
                            stopping=threading.Event())
    store = SqliteStore(work / f"state{count}", synchronous="NORMAL")
    kinds = {name: resolve(name)(context) for name in ACTIONS}
    dispatcher = Dispatcher(context, store, kinds)
    dispatcher.start()
    engine = Engine(rules, dispatcher.submit, kinds, store, metrics,
                    submit_many=dispatcher.submit_many)
    now = time.time()
    batches = [[Received(parse_event(f), now, f) for f in frames[i:i + 500]]
               for i in range(0, EVENTS, 500)]
    started = time.perf_counter()
    for batch in batches:
        engine.process_batch(batch)
    engine_s = time.perf_counter() - started
    dispatcher.close(5.0)
    store.close()
    return match_s / len(templates) * 1e6, engine_s / EVENTS * 1e6


def main() -> int:
    import logging

    logging.getLogger("eventd").setLevel(logging.WARNING)  # log actions at debug: inactive
    with tempfile.TemporaryDirectory() as tmp:
        print("| rules | RuleSet.match, us/event | engine (match, throttle, render, hand-off), us/event |")
        print("|---|---|---|")
        for count in (100, 1000):
            match_us, engine_us = measure(count, Path(tmp))
            print(f"| {count:,} | {match_us:.2f} | {engine_us:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
