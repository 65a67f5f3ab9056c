"""Instructions the silences' check and the console's Live ring cost the engine per event.

    valgrind --tool=callgrind .venv/bin/python bench/silence_cost.py MODE 20000
    valgrind --tool=callgrind .venv/bin/python bench/silence_cost.py MODE 0     # start-up only

(Collected(N=20000) - Collected(N=0)) / 20000 is one event's cost through Engine.process: a
container event matched by one rule with one webhook action (rendered, job accepted; the
submit function keeps nothing). MODE: `main` (no silences' book: the engine before issue 23),
`empty` (a book with no silence: the one check per matched action), `console` (that, and the
console's Live ring listening to hooks.on_processed), `active` (one active silence that does
not match: matchers tried on every action).

The whole path varies by about 1% from run to run (memory layout), more than the check costs,
so the check and the hook are also measured alone, N times in a loop, against the bare loop:

    valgrind --tool=callgrind .venv/bin/python bench/silence_cost.py loop 1000000
    valgrind --tool=callgrind .venv/bin/python bench/silence_cost.py check 1000000
    valgrind --tool=callgrind .venv/bin/python bench/silence_cost.py hook 1000000

(check - loop) / N is the engine's test per matched action with no silence pending or active;
(hook - loop) / N is what every event pays for hooks.on_processed with no listener (the
engine tests `hooks.processing` first).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventd.engine import Engine  # noqa: E402
from eventd.events import Received  # noqa: E402
from eventd.ops.metrics import Metrics  # noqa: E402
from eventd.ruleset.loader import load_rules  # noqa: E402
from eventd.stores.memory import MemoryStore  # noqa: E402

RULES = """
rules:
  - name: container-crashed
    match: {type: container, state: Stopped}
    actions:
      - webhook:
          url: https://hooks.example/x
          json: {text: "{{ object.uuid }} stopped", service: "{{ event.parents[0] }}"}
"""
EVENT = {"type": "container", "action": "update", "state": "Stopped",
         "resource_uri": "/api/app/v1/user/container/c1dd4e1e-1356-411c-8613-e15146633640/",
         "parents": ["/api/app/v1/user/service/09cbcf8d-a727-40d9-b420-c8e18b7fa55b/"],
         "datetime": "2016-06-01T10:15:02Z"}


class _Kind:
    per_event = False
    acts_on_objects = False

    def inactive(self, options: dict[str, Any]) -> bool:
        return False

    def target(self, options: dict[str, Any]) -> str:
        return "webhook:https://hooks.example:443"


class _Holder:
    _silences: Any = None


def micro(mode: str, count: int) -> None:
    """The engine's silences test, or the hook call, alone in a loop (see the docstring)."""
    from eventd.hooks import hooks
    from eventd.silences.book import SilenceBook

    holder = _Holder()
    holder._silences = SilenceBook(MemoryStore())
    event: dict[str, Any] = dict(EVENT)
    if mode == "check":
        for _ in range(count):
            silences = holder._silences
            if silences is not None and silences.watch:
                raise AssertionError("no silence was added")
    elif mode == "hook":
        for _ in range(count):
            silences = holder._silences
            if hooks.processing:  # as the engine calls it
                hooks.on_processed(event, (), ())
    else:
        for _ in range(count):
            silences = holder._silences


def main(mode: str, count: int) -> None:
    if mode in ("loop", "check", "hook"):
        micro(mode, count)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rules.yaml"
        path.write_text(RULES)
        rules = load_rules((path,), {})
    store, metrics = MemoryStore(), Metrics()
    book = None
    if mode != "main":
        from eventd.silences.book import SilenceBook
        from eventd.silences.model import new_silence

        book = SilenceBook(store, metrics)
        if mode == "active":
            book.add(new_silence(["rule=other", "kind=~web.*"], starts_at=None,
                                 ends_at=time.time() + 3600, created_by="bench", comment="x"))
    if mode == "console":
        from eventd.console.live import LiveRing
        from eventd.hooks import hooks

        hooks.subscribe(LiveRing())
    engine = Engine(rules, lambda job: None, {"webhook": _Kind()}, store, metrics,
                    silences=book)
    now = time.time()
    batch = [Received(dict(EVENT, uuid=f"6a1f0e52-7c1e-4d8e-9a55-{n:012d}"), now)
             for n in range(count)]
    engine.process_batch(batch)
    assert metrics.registry.get_sample_value("eventd_rule_matches_total",
                                             {"rule": "container-crashed"}) == (count or None)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
