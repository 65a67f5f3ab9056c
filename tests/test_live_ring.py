"""The console's Live ring hears the engine once per batch (`on_processed_batch`) and keeps and
shows exactly what hearing each event one by one (`on_processed`) kept: the same events, in
order, numbered without gaps, the same rules by name, the same decisions, each rule's last match."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.actions.log import LogAction
from eventd.console.live import LiveRing
from eventd.engine import Engine
from eventd.events import Batch
from eventd.hooks import Hooks, Observer, hooks
from eventd.ops.metrics import Metrics
from eventd.ruleset.loader import load_rules
from tests.daemon_helpers import write_rules

#: quiet rules (a log below the level: counted only), one that is not (a log at error: an
#: Outcome with decisions), a rule on a field the sender controls
RULES = """
    rules:
      - name: every
        match: {}
        actions: [{log: {message: "x", level: debug}}]
      - name: containers
        match: {type: container}
        actions: [{log: {message: "c", level: debug}}]
      - name: loud
        match: {type: service, state: Stopped}
        actions: [{log: {message: "s", level: error}}]
      - name: named
        match: {resource_uri: {glob: "web*"}}
        actions: [{log: {message: "n", level: debug}}]
"""

TEXT = st.one_of(st.sampled_from(["container", "service", "action", "Stopped", "web-1"]),
                 st.text(max_size=8))
VALUES = st.one_of(TEXT, st.none(), st.integers(), st.lists(TEXT, max_size=3))
EVENTS = st.fixed_dictionaries(
    {"uuid": st.uuids().map(lambda u: u.hex)},
    optional={"type": VALUES, "state": VALUES, "action": VALUES, "resource_uri": VALUES})
BATCHES = st.lists(st.lists(EVENTS, max_size=10), max_size=6)


class OneByOne(Observer):
    """The old contract: one call per event, rules by name."""

    def __init__(self) -> None:
        self.heard: list[tuple[dict[str, Any], list[str], list[Any]]] = []

    def on_processed(self, event, rules, decisions) -> None:
        self.heard.append((event, list(rules), list(decisions)))


class CountingRing(LiveRing):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.calls = 0

    def on_processed_batch(self, entries) -> None:
        self.calls += 1
        super().on_processed_batch(entries)


def engine_for(tmp_path) -> Engine:
    rules = load_rules([write_rules(tmp_path, RULES)], {})
    jobs: list = []
    return Engine(rules, jobs.append, {"log": LogAction()}, None, Metrics())


@settings(max_examples=200, deadline=None)
@given(batches=BATCHES, size=st.integers(1, 30))
def test_the_ring_fed_per_batch_keeps_what_each_event_one_by_one_would(
        tmp_path_factory, batches, size):
    engine = engine_for(tmp_path_factory.mktemp("live"))
    ring, each = CountingRing(size), OneByOne()
    unsubscribe_ring, unsubscribe_each = hooks.subscribe(ring), hooks.subscribe(each)
    try:
        for events in batches:
            calls = ring.calls
            engine.process_batch(Batch(events, 0.0, None, types=Counter(
                e["type"] if type(e.get("type")) is str else "other" for e in events)))
            assert ring.calls - calls == (1 if events else 0)  # one call a batch, none per event
    finally:
        unsubscribe_ring()
        unsubscribe_each()
    heard = each.heard
    assert len(heard) == sum(map(len, batches)) == engine.processed
    entries = ring.entries()
    kept = heard[-size:]
    assert [seq for seq, *_ in entries] == list(range(len(heard) - len(kept) + 1, len(heard) + 1))
    assert ring.last == len(heard)
    for (_, _, event, rules, decisions), (event2, rules2, decisions2) in zip(
            entries, kept, strict=True):
        assert event is event2
        assert list(rules) == rules2 and all(type(r) is str for r in rules)
        assert list(decisions) == decisions2
    assert set(ring.last_match) == {rule for _, rules, _ in heard for rule in rules}
    after = len(heard) - 2
    assert [e[0] for e in ring.entries(after)] == [s for s in range(after + 1, len(heard) + 1)
                                                   if s > len(heard) - len(kept)]


def test_a_rule_matched_in_a_later_batch_has_a_later_last_match(tmp_path):
    engine = engine_for(tmp_path)
    ring = LiveRing(10)
    unsubscribe = hooks.subscribe(ring)
    try:
        engine.process_batch(Batch([{"uuid": "a", "type": "container"}], 0.0, None,
                                   types=Counter(container=1)))
        first = dict(ring.last_match)
        engine.process_batch(Batch([{"uuid": "b", "type": "service", "state": "Stopped"}], 0.0,
                                   None, types=Counter(service=1)))
    finally:
        unsubscribe()
    assert set(first) == {"every", "containers"}
    assert ring.last_match["containers"] == first["containers"]
    assert ring.last_match["every"] >= first["every"] and "loud" in ring.last_match
    shown = ring.entries()
    assert [e[3] for e in shown] == [("every", "containers"), ("every", "loud")]
    assert [(d.rule, d.kind) for d in shown[1][4]] == [("every", "log"), ("loud", "log")]


def test_an_observer_of_the_batch_that_raises_is_reported_and_the_others_still_hear(
        internal_errors):
    class Broken(Observer):
        def on_processed_batch(self, entries) -> None:
            raise RuntimeError("listener bug")

    local, each = Hooks(), OneByOne()
    unsubscribe_broken, unsubscribe = local.subscribe(Broken()), local.subscribe(each)
    try:
        local.on_processed_batch([({"type": "x"}, (), ())])
        local.on_processed({"type": "y"}, ["r"], ())
    finally:
        unsubscribe_broken()
        unsubscribe()
    assert [(e["type"], r) for e, r, _ in each.heard] == [("x", []), ("y", ["r"])]
    assert [where for where, _ in internal_errors] == ["hook on_processed"] * 2
    internal_errors.clear()
    assert not local.processing
