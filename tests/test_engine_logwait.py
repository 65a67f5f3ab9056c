"""Logs awaited off the engine's thread (Engine.park_logs): whatever order containers' logs
come in, every event is processed exactly once, each object's events in their order, the
counters as if each had been processed where it came, and nothing stays set aside."""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import Future
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.actions.log import LogAction
from eventd.attachments import Attacher
from eventd.engine import Engine
from eventd.events import Received
from eventd.ops.metrics import Metrics
from eventd.ruleset.loader import load_rules
from eventd.stores.memory import MemoryStore
from tests.daemon_helpers import write_rules

RULES = """
    rules:
      - name: died
        match: {type: container, action: die}
        enrich: {logs: {lines: 5}}
        actions: [{log: {message: "{{ event.uuid }} {{ logs | join(',') }}", level: warning}}]
      - name: any
        match: {type: container}
        actions: [{log: {message: "{{ event.uuid }}", level: warning}}]
"""
CONTAINERS = ["c0", "c1", "c2"]


class HeldLogs:
    """A log reader whose answers for a container wait until the test releases it."""

    def __init__(self) -> None:
        self.released = {cid: threading.Event() for cid in CONTAINERS}

    def logs(self, event: dict[str, Any], lines: int, max_bytes: int,
             budget: float) -> list[str]:
        self.released[event["id"]].wait(10)
        return [f"{event['id']} last"]


def _received(events: list[tuple[str, str]]) -> list[Received]:
    return [Received({"type": "container", "action": action, "id": cid,
                      "resource_uri": f"/docker/container/{cid}/",
                      "uuid": f"u{n}"}, 0.0) for n, (cid, action) in enumerate(events)]


def _in_batches(engine: Engine, received: list[Received], cuts: list[int], order: list[str],
                answer: Any, between: Any = None) -> list[int]:
    """The events processed in batches cut at `cuts`, one container's answer (`answer(cid)`,
    in `order`) between two batches, `between()` after each; then every answer. The bounds."""
    bounds = sorted({0, len(received), *(min(c, len(received)) for c in cuts)})
    answers = iter(order)
    for start, end in zip(bounds, bounds[1:], strict=False):
        engine.process_batch(received[start:end])
        if between is not None:
            between()
        cid = next(answers, None)
        if cid is not None:
            answer(cid)
    for cid in CONTAINERS:
        answer(cid)
    return bounds


def _once_in_order(jobs: list[Any], events: list[tuple[str, str]]) -> None:
    """Exactly once: one job per (event, rule) that matched; in order per container."""
    expected = [(f"u{n}", rule) for n, (_, action) in enumerate(events)
                for rule in (["died", "any"] if action == "die" else ["any"])]
    assert sorted((job.event["uuid"], job.rule) for job in jobs) == sorted(expected)
    per_object: dict[str, list[int]] = defaultdict(list)
    for job in jobs:
        per_object[job.event["id"]].append(int(job.event["uuid"][1:]))
    assert all(numbers == sorted(numbers) for numbers in per_object.values()), per_object


EVENTS = st.lists(st.tuples(st.sampled_from(CONTAINERS), st.sampled_from(["start", "die"])),
                  min_size=1, max_size=20)


def any_order(test: Any) -> Any:
    """Hypothesis over the events, where their batches are cut, and the order in which the
    containers' answers come."""
    return settings(max_examples=60, deadline=None)(given(
        events=EVENTS, cuts=st.lists(st.integers(0, 20), max_size=4),
        order=st.permutations(CONTAINERS))(test))


@any_order
def test_each_object_s_events_are_processed_once_in_order_whatever_the_logs_order(
        tmp_path_factory, events, cuts, order):
    rules = load_rules([write_rules(tmp_path_factory.mktemp("rules"), RULES)], {})
    metrics = Metrics()
    jobs: list = []
    reader = HeldLogs()
    store = MemoryStore()
    engine = Engine(rules, jobs.append, {"log": LogAction()}, None, metrics,
                    attacher=Attacher(reader, None, metrics))
    woken = threading.Event()
    engine.park_logs(store, woken.set)
    # one container's logs come between two batches
    bounds = _in_batches(engine, _received(events), cuts, order,
                         lambda cid: reader.released[cid].set())
    assert engine.settle_parked(10) == 0
    assert store.parked_list() == []
    _once_in_order(jobs, events)
    # A die whose container's logs were not released before its batch waited for them.
    held = [cid for k, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False))
            for cid, action in events[start:end] if action == "die" and cid not in order[:k]]
    assert engine.parked_total >= len(held)
    assert all(job.options["message"].endswith(f"{job.event['id']} last")
               for job in jobs if job.rule == "died")
    dies = sum(action == "die" for _, action in events)
    assert metrics.registry.get_sample_value(
        "eventd_rule_matches_total", {"rule": "died"}) == (dies or None)
    assert metrics.registry.get_sample_value(
        "eventd_rule_matches_total", {"rule": "any"}) == len(events)
    assert metrics.registry.get_sample_value("eventd_enrich_logs_waiting") == 0
    assert engine.processed == len(events)


class TogetherLogs:
    """A log reader whose reads answer only once `count` of them are under way at once."""

    def __init__(self, count: int) -> None:
        self.barrier = threading.Barrier(count, timeout=5)

    def logs(self, event: dict[str, Any], lines: int, max_bytes: int,
             budget: float) -> list[str]:
        self.barrier.wait()  # broken (no logs) if the others are not asked meanwhile
        return [f"{event['id']} last"]


def _recovered(rules: Any, together: int) -> tuple[list[Any], MemoryStore]:
    """A die of each container left in the store by a crash, processed at the next start
    (`recover_parked`) by `rules`, their logs read `together` at a time: the jobs, the store."""
    metrics = Metrics()
    store = MemoryStore()
    store.parked_add([(f"k{n}", {"event": {"type": "container", "action": "die", "id": cid,
                                           "resource_uri": f"/docker/container/{cid}/",
                                           "uuid": f"u{n}"}, "received_at": 1.0})
                      for n, cid in enumerate(CONTAINERS)])
    jobs: list[Any] = []
    attacher = Attacher(TogetherLogs(together), None, metrics)
    engine = Engine(rules, jobs.append, {"log": LogAction()}, None, metrics, attacher=attacher)
    engine.park_logs(store, lambda: None)
    try:
        assert engine.recover_parked() == len(CONTAINERS)
    finally:
        attacher.close()
    assert engine.waiting == 0
    return jobs, store


def test_events_left_waiting_by_a_crash_have_their_logs_asked_together(tmp_path):
    """At start, the dies a crash left waiting for logs have their logs asked all at once,
    then are processed in order, each with its own logs. (Before, one at a time: each read
    waited for the one before, here for ever: none had its logs.)"""
    rules = load_rules([write_rules(tmp_path, RULES)], {})
    jobs, store = _recovered(rules, len(CONTAINERS))
    assert [(job.event["uuid"], job.rule, job.options["message"]) for job in jobs] == [
        (f"u{n}", rule, f"u{n} {cid} last" if rule == "died" else f"u{n}")
        for n, cid in enumerate(CONTAINERS) for rule in ("died", "any")]
    assert store.parked_list() == []


NOW = """
    rules:
      - name: died-now
        match: {type: container, action: die, id: c0}
        enrich: {logs: {lines: 5}}
        actions: [{log: {message: "now {{ event.uuid }} {{ logs | join(',') }}",
                         level: warning}}]
"""


def test_events_left_waiting_are_processed_by_the_rules_in_force_at_the_next_start(tmp_path):
    """The rules changed between the crash and the next start: each kept event is matched
    anew, by the rules in force now (its logs read now); one that no rule matches now is
    forgotten without an action; the table is empty after."""
    rules = load_rules([write_rules(tmp_path, NOW)], {})
    jobs, store = _recovered(rules, 1)
    assert [(job.event["uuid"], job.rule, job.options["message"]) for job in jobs] == [
        ("u0", "died-now", "now u0 c0 last")]
    assert store.parked_list() == []


INSPECTING = """
    rules:
      - name: died
        match: {type: container, action: die}
        enrich: resource
        actions: [{log: {message: "{{ event.uuid }} {{ resource.Name }}", level: warning}}]
      - name: any
        match: {type: container}
        actions: [{log: {message: "{{ event.uuid }}", level: warning}}]
"""


class HeldInspects:
    """An enricher whose inspects are under way (started early) until the test answers
    them: one future per container, answered by `answer(cid)`."""

    def __init__(self) -> None:
        self.futures: dict[str, Future[Any]] = {cid: Future() for cid in CONTAINERS}
        self.waited = 0  # asked while the inspect was under way: the engine thread waited

    def answer(self, cid: str) -> None:
        if not self.futures[cid].done():
            self.futures[cid].set_result({"Name": f"/{cid}"})

    def resource_started(self, event: dict[str, Any]) -> Future[Any] | None:
        return self.futures[event["id"]]

    def resource(self, event: dict[str, Any]) -> Any:
        """The answer, as DockerEnricher's cache has it once the inspect is done."""
        future = self.futures[event["id"]]
        if not future.done():
            self.waited += 1
            return None
        return future.result()


@any_order
def test_inspects_under_way_keep_each_object_s_events_once_and_in_order(
        tmp_path_factory, events, cuts, order):
    """`enrich: resource` with inspects under way: whatever order they are answered in, each
    event is processed once, each object's in order, each die with its own resource, and
    the engine thread never waits for an inspect under way."""
    enricher = HeldInspects()
    rules = load_rules([write_rules(tmp_path_factory.mktemp("rules"), INSPECTING)], {})
    jobs: list = []
    metrics, store = Metrics(), MemoryStore()
    engine = Engine(rules, jobs.append, {"log": LogAction()}, None, metrics,
                    enricher=enricher, attacher=Attacher(None, None, metrics))
    engine.park_logs(store, lambda: None)
    def kept() -> None:  # every event set aside is kept in the store, as it waits
        assert len(store.parked_list()) == engine.waiting

    _in_batches(engine, _received(events), cuts, order, enricher.answer, kept)
    assert engine.settle_parked(10) == 0
    assert store.parked_list() == []
    _once_in_order(jobs, events)
    assert all(job.options["message"] == f"{job.event['uuid']} /{job.event['id']}"
               for job in jobs if job.rule == "died")
    assert enricher.waited == 0
    assert engine.processed == len(events)
