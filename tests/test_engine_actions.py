"""A stream's `action` events, noted once per batch (Engine._settle_actions, the waiter's
observe_states), decide and remember exactly what asking each event where it comes does."""

from __future__ import annotations

import threading
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.actions.log import LogAction
from eventd.engine import Engine
from eventd.events import Batch
from eventd.ops.metrics import Metrics
from eventd.ruleset.loader import load_rules
from eventd.sources.dockercloud.action_waiter import ActionWaiter
from tests.daemon_helpers import write_rules

RULES = """
    rules:
      - name: every
        match: {}
        actions: [{log: {message: "x", level: debug}}]
"""
UUIDS = [f"0000000{i}-0000-4000-8000-000000000000" for i in range(5)]
#: the same action as the stream names it and as a backfill may (namespaced or not), a URI
#: naming nothing, one too long to read, one that is not a string
URIS = [f"/api/audit/v1/action/{u}/" for u in UUIDS] + [
    f"/api/audit/v1/bench/action/{u}/" for u in UUIDS[:2]] + [
    "/not/a/resource/", "/api/audit/v1/action/" + "a" * 2000 + "/", None, 7]
STATES = st.one_of(st.sampled_from(["Pending", "In progress", "Success", "Failed", "Canceled"]),
                   st.sampled_from([None, 3, ["Success"]]))


@st.composite
def action_events(draw):
    event = {"type": "action", "resource_uri": draw(st.sampled_from(URIS)),
             "uuid": draw(st.uuids()).hex}
    state = draw(STATES)
    if state is not None or draw(st.booleans()):
        event["state"] = state
    backfilled = draw(st.sampled_from([None, None, None, True, False]))
    if backfilled is not None:
        event["backfilled"] = backfilled
    return event


EVENTS = st.one_of(action_events(), st.builds(
    lambda u: {"type": "container", "resource_uri": "/api/app/v1/container/x/", "uuid": u.hex},
    st.uuids()))
BATCHES = st.lists(st.tuples(st.booleans(), st.lists(EVENTS, max_size=12)), max_size=8)


def engine_for(tmp_path, waiter, *, window):
    rules = load_rules([write_rules(tmp_path, RULES)], {})
    metrics = Metrics()
    jobs: list = []
    engine = Engine(rules, jobs.append, {"log": LogAction()}, None, metrics,
                    action_waiter=waiter, action_window=window)
    return engine, metrics


class EachEvent:
    """An ActionObserver without observe_states: the engine asks each action where it comes."""

    def __init__(self, waiter: ActionWaiter) -> None:
        self.waiter = waiter

    def observe(self, event):
        self.waiter.observe(event)


@settings(max_examples=300, deadline=None)
@given(batches=BATCHES, window=st.integers(1, 6), limit=st.integers(1, 4))
def test_actions_noted_per_batch_decide_and_remember_what_one_by_one_does(
        tmp_path_factory, batches, window, limit):
    tmp = tmp_path_factory.mktemp("actions")
    fast_waiter, slow_waiter = ActionWaiter(max_entries=limit), ActionWaiter(max_entries=limit)
    fast, fast_metrics = engine_for(tmp / "fast", fast_waiter, window=window)
    slow, slow_metrics = engine_for(tmp / "slow", EachEvent(slow_waiter), window=window)
    assert not slow._defer_actions
    for internal, events in batches:
        for engine in (fast, slow):
            copies = [dict(e) for e in events]
            engine.process_batch(Batch(copies, 0.0, None, internal,
                                       types=Counter(e["type"] for e in copies)))
        assert list(fast._action_states.items()) == list(slow._action_states.items())
        assert fast._backfilled == sum(fast._action_states.values())
        assert {u: s for u, (s, _) in fast_waiter._states.items()} == {
            u: s for u, (s, _) in slow_waiter._states.items()}
        assert list(fast_waiter._states) == list(slow_waiter._states)
    assert fast.processed == slow.processed
    for name in ("eventd_events_duplicate_total", "eventd_rule_matches_total"):
        assert samples_named(fast_metrics, name) == samples_named(slow_metrics, name)


def test_a_waiting_caller_is_woken_by_a_batch_that_ends_its_action(tmp_path):
    waiter = ActionWaiter()
    engine, _ = engine_for(tmp_path, waiter, window=100)
    uri = f"/api/audit/v1/action/{UUIDS[0]}/"
    found: list = []
    caller = threading.Thread(target=lambda: found.append(waiter.wait(uri, 10.0)))
    caller.start()
    events = [{"type": "action", "resource_uri": uri, "state": "In progress", "uuid": "a"},
              {"type": "action", "resource_uri": uri, "state": "Success", "uuid": "b"}]
    engine.process_batch(Batch(events, 0.0, None, types=Counter(action=2)))
    caller.join(10.0)
    assert found == ["Success"]
    assert waiter.state(uri) == "Success"


def test_a_hostile_uri_in_a_batch_is_noted_as_nothing_and_keeps_nothing(tmp_path):
    engine, _ = engine_for(tmp_path, ActionWaiter(), window=100)
    huge = "/api/audit/v1/action/" + "a" * 1_000_000 + "/"
    events = [{"type": "action", "resource_uri": uri, "state": "Success", "uuid": str(i)}
              for i, uri in enumerate([huge, ["a", "list"], {"a": 1}, "x" * 5000])]
    engine.process_batch(Batch(events, 0.0, None, types=Counter(action=len(events))))
    assert engine.processed == len(events)
    assert not engine._action_states
    from eventd.events import _REF_CACHE
    assert huge not in _REF_CACHE


def samples_named(metrics, name):
    return {tuple(sorted(s.labels.items())): s.value for family in metrics.registry.collect()
            for s in family.samples if s.name == name}
