"""The ingest path in one thread, for counting it: frame reader -> the stream's `_deliver` -> engine.

`python bench/ingest.py --events N [--rules R]` feeds N events of the blaster's stream
(bench/streamgen.py) through eventd's FrameReader as the stream consumer makes it (over a
stand-in socket handing out 64 KiB per read), StreamConsumer._deliver and
Engine.process_batch of a pipeline built as the daemon builds it (the memory store,
rulegen.scaled(R): log actions below the level), all on this thread; `--wall`: the wall-clock
bench's rules instead (rulegen.rules(R)) and the console's Live ring listening. Under `valgrind
--tool=callgrind` at two sizes, the difference over the events' difference is what the
ingest path costs per event without the second thread, the hand-off and the daemon's
start-up: `--callgrind N1 N2 [--out DIR]` runs both (the streams built outside the count)
and prints it. `INGEST_STUB=count,dedupe,action,match,engine` leaves those stages out, to
measure one by difference (that run is no longer eventd).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rulegen  # noqa: E402
import streamgen  # noqa: E402

CHUNK = 64 * 1024


class _Feed:
    """A socket's recv_into over bytes, at most CHUNK per call (the blaster's sends)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def recv_into(self, view: memoryview) -> int:
        n = min(len(view), CHUNK, len(self._data) - self._pos)
        view[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def run(events: int, rules: int, work: Path, wall: bool = False) -> int:
    from eventd.clients.dockercloud.auth import Credentials
    from eventd.ops.metrics import Metrics
    from eventd.pipeline import build_pipeline
    from eventd.ruleset.loader import load_rules
    from eventd.settings import Settings
    from eventd.sources.dockercloud.framing import ConnectionEnded, FrameReader
    from eventd.sources.dockercloud.stream import StreamConsumer

    logging.getLogger("eventd").setLevel(logging.INFO)  # log actions at debug: inactive
    chosen = rulegen.rules(rules) if wall else rulegen.scaled(rules)
    ruleset = load_rules([rulegen.write(work, "rules", chosen)], {})
    if wall:  # the metrics port's console: its Live ring hears every event
        from eventd.console.live import LiveRing
        from eventd.hooks import hooks
        hooks.subscribe(LiveRing())
    settings = Settings(state_dir=work / "state", store="memory")
    metrics = Metrics()
    stopping = threading.Event()
    pipeline = build_pipeline(settings, metrics=metrics, credentials=None, environ={},
                              ruleset=ruleset, stopping=stopping)
    engine = pipeline.engine
    assert engine is not None
    stub = os.environ.get("INGEST_STUB", "")  # measuring a stage by leaving it out (not eventd)
    if "count" in stub:
        engine._count_received = lambda events: None  # type: ignore[method-assign]
    if "dedupe" in stub:
        engine.dedupe.repeated = lambda *a: None  # type: ignore[method-assign]
    if "action" in stub:
        engine._action_duplicate = lambda event: False  # type: ignore[method-assign]
        engine._action_waiter = None
    if "match" in stub:
        engine.rules.match = lambda event: []  # type: ignore[method-assign]
        engine.rules.matched = lambda event: ()  # type: ignore[method-assign]
        engine.rules.matched_each = (  # type: ignore[method-assign]  # the engine's
            lambda events: [()] * len(events))
    if "engine" in stub:
        engine.process_batch = lambda batch: None  # type: ignore[method-assign]
    cached = work.parent / f"ingest-stream-{events}.bin"  # built outside the count
    data = cached.read_bytes() if cached.exists() else bytes(streamgen.build_stream(events).data)
    consumer = StreamConsumer("ws://127.0.0.1:1/", Credentials("u", "k", "test"),
                              engine.process_batch, metrics, stopping)
    reader = FrameReader(_Feed(data), views=True)  # type: ignore[arg-type]
    deliver = consumer._deliver
    read = reader.read
    while True:
        try:
            messages = read()
        except ConnectionEnded:
            break
        if messages:
            deliver(messages)
    pipeline.dispatcher.close(5.0)
    return engine.processed


def _total(out: Path) -> int:
    found = re.search(r"^(?:totals|summary):\s+(\d+)", out.read_text(), re.MULTILINE)
    assert found is not None
    return int(found.group(1))


def count(n1: int, n2: int, rules: int, out_dir: Path, wall: bool = False) -> float:
    totals = []
    for n in (n1, n2):
        (out_dir / f"ingest-stream-{n}.bin").write_bytes(bytes(streamgen.build_stream(n).data))
        out = out_dir / f"ingest.{rules}{'w' if wall else ''}.{n}.out"
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run([shutil.which("valgrind") or "valgrind", "--tool=callgrind", "-q",
                        f"--callgrind-out-file={out}", sys.executable, __file__,
                        "--events", str(n), "--rules", str(rules), "--work", str(out_dir),
                        *(["--wall"] if wall else [])],
                       check=True, env=env)
        totals.append(_total(out))
    return (totals[1] - totals[0]) / (n2 - n1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rules", type=int, default=1)
    parser.add_argument("--callgrind", type=int, nargs=2, metavar=("N1", "N2"))
    parser.add_argument("--work", type=Path, default=None, help="where a prebuilt stream is")
    parser.add_argument("--out", type=Path, default=None, help="keep callgrind files here")
    parser.add_argument("--wall", action="store_true",
                        help="the wall-clock bench's configuration: rulegen.rules(R) (2.5 "
                             "matches an event at 100) and the console's Live ring listening")
    args = parser.parse_args()
    if args.callgrind:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.out or Path(tmp)
            out.mkdir(parents=True, exist_ok=True)
            per_event = count(*args.callgrind, args.rules, out, args.wall)
        print(f"{args.rules} rules: {per_event:,.0f} instructions per event")
        return 0
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        processed = run(args.events, args.rules, Path(tmp), args.wall)
    print(f"processed {processed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
