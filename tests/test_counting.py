"""Counting per event without a lock: /metrics shows exact counts, quiet rules are only counted.

The engine's counters (events received by type, duplicates, matches by rule) are plain
Counters of the engine thread, folded into prometheus-client's exposition at scrape time
(eventd.ops.metrics.Tally); a rule whose every action does nothing now is only counted.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter as Tallied

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventd.actions.audit import AuditAction
from eventd.actions.base import ActionContext
from eventd.actions.log import LogAction
from eventd.engine import Engine
from eventd.events import Batch, Received
from eventd.ops.metrics import Metrics, Spread, Tally
from eventd.records import ActionJob
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until

RULES = """
    rules:
      - name: quiet-all
        match: {}
        actions: [{log: {message: "any {{ event.type }}", level: debug}}]
      - name: quiet-containers
        match: {type: container}
        actions: [{log: {message: "c {{ event.state }}", level: debug}}]
      - name: loud-stopped
        match: {type: container, state: Stopped}
        actions: [{log: {message: "stopped {{ event.uuid }}", level: warning}}]
      - name: never
        match: {type: node, state: Upgrading}
        actions: [{log: {message: "never", level: warning}}]
"""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics as a user would, parsed: {(sample name, sorted labels): value}."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_after_n_events_hold_the_exact_counts(emulator, tmp_path):
    plan = [("container", "Stopped")] * 7 + [("container", "Running")] * 11 \
        + [("service", "Running")] * 5 + [("action", "Success")] * 3 + [("stack", "Running")] * 4
    rules = write_rules(tmp_path / "rules", RULES)
    daemon = start_daemon(emulator, rules, tmp_path / "state", env=emulator_env(emulator),
                          metrics_addr=("127.0.0.1", 0))
    try:
        assert emulator.wait_for_connections(1, timeout=5)
        wait_until(lambda: daemon.consumer.connected, 5, message="connected")
        sent = []
        for kind, state in plan:
            sent.append(emulator.emit_event(type=kind, action="update", state=state,
                                            resource_uri=f"/api/app/v1/{kind}/{uuid.uuid4()}/",
                                            parents=[]))
        for event in sent[:4]:  # the same uuids again: duplicates, counted as received
            emulator.emit(event)
        port = daemon.health_port
        assert port is not None
        total = len(plan) + 4
        wait_until(lambda: sum(v for (name, labels), v in scrape(port).items()
                               if name == "eventd_events_received_total"
                               and ("type", "eventd") not in labels) == total, 10,
                   message="every event counted")
        assert daemon.wait_idle(5)
        got = scrape(port)
    finally:
        daemon.stop(timeout=5)

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert value("eventd_events_received_total", type="container") == 18 + 4
    assert value("eventd_events_received_total", type="service") == 5
    assert value("eventd_events_received_total", type="action") == 3
    assert value("eventd_events_received_total", type="stack") == 4
    assert value("eventd_events_received_total", type="node") == 0  # declared up front
    assert value("eventd_events_duplicate_total") == 4
    own = value("eventd_events_received_total", type="eventd")  # `connected`
    assert own == 1
    assert value("eventd_rule_matches_total", rule="quiet-all") == len(plan) + own
    assert value("eventd_rule_matches_total", rule="quiet-containers") == 18
    assert value("eventd_rule_matches_total", rule="loud-stopped") == 7
    assert value("eventd_rule_matches_total", rule="never") == 0
    assert value("eventd_actions_total", kind="log", outcome="success") == 7
    # as every family of eventd's: no *_created series
    assert not any(name.endswith("_created") for name, _ in got)


def test_a_tally_exports_what_a_prometheus_counter_fed_the_same_counts_exports():
    Metrics()  # as in eventd: prometheus-client's *_created series switched off
    plain, folded = CollectorRegistry(), CollectorRegistry()
    counter = Counter("demo_hits", "Hits, by rule", ["rule"], registry=plain)
    tally = Tally("demo_hits", "Hits, by rule", ("rule",), registry=folded)
    counts = [tally.counts() for _ in range(3)]

    def count(mine, names):
        for name in names:
            mine[name] += 1

    names = [f"r{i % 7}" for i in range(7_000)]
    threads = [threading.Thread(target=count, args=(mine, names)) for mine in counts]
    for thread in threads:
        thread.start()
    tally.labels(rule="r0").inc(5)
    tally.declare("unused")
    for thread in threads:
        thread.join()
    for name in names * 3:
        counter.labels(rule=name).inc()
    counter.labels(rule="r0").inc(5)
    counter.labels(rule="unused")

    def samples(registry):
        text = generate_latest(registry).decode()
        return {(s.name, tuple(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}, \
            [line for line in text.splitlines() if line.startswith("#")]

    assert samples(folded) == samples(plain)
    assert samples(folded)[0][("demo_hits_total", (("rule", "r0"),))] == 3_000 + 5


def test_threads_that_come_and_go_count_exactly_and_leave_no_source_behind():
    """Tally.mine(): a delivery lane's worker counts into its own Counter; once it ended,
    the next thread to register folds its counts into the shared ones (nothing lost, no
    source per dead thread kept)."""
    tally = Tally("demo_actions", "Actions, by kind and outcome", ("kind", "outcome"),
                  registry=CollectorRegistry())

    def work(n):
        for _ in range(n):
            tally.mine()[("audit", "success")] += 1

    for round_ in range(20):
        threads = [threading.Thread(target=work, args=(1_000,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert tally.totals()[("audit", "success")] == 3_000 * (round_ + 1)
    work(1)  # this thread registers: the 60 ended threads are folded
    assert tally.totals()[("audit", "success")] == 60_001
    assert len(tally._sources) == 2  # the shared Counter and this thread's


def test_a_spread_exports_what_a_prometheus_histogram_fed_the_same_values_exports():
    """Spread: per-thread histogram series summed at scrape, as prometheus-client's own."""
    Metrics()
    plain, folded = CollectorRegistry(), CollectorRegistry()
    bounds = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
    histogram = Histogram("demo_seconds", "Time, by kind", ["kind"], buckets=bounds,
                          registry=plain)
    spread = Spread("demo_seconds", "Time, by kind", ("kind",), buckets=bounds,
                    registry=folded)
    values = [0.0, 0.001, 0.0010001, 0.005, 0.3, 1.0, 2.5, 29.99, 30.0, 31.0, 1e9] + \
        [i / 997 for i in range(3_000)]

    def observe(kind):
        for value in values:
            spread.mine(kind).observe(value)

    threads = [threading.Thread(target=observe, args=(kind,)) for kind in ("a", "a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spread.labels(kind="a").observe(0.02)
    spread.labels(kind="unused")
    observe("c")  # this thread registers: the three ended threads are folded
    for kind in ("a", "a", "b", "c"):
        for value in values:
            histogram.labels(kind=kind).observe(value)
    histogram.labels(kind="a").observe(0.02)
    histogram.labels(kind="unused")

    def samples(registry):
        text = generate_latest(registry).decode()
        return {(s.name, tuple(s.labels.items())): round(s.value, 6)
                for family in text_string_to_metric_families(text) for s in family.samples}, \
            [line for line in text.splitlines() if line.startswith("#")]

    assert samples(folded) == samples(plain)
    assert samples(folded)[0][("demo_seconds_count", (("kind", "a"),))] == 2 * len(values) + 1


class Collected:
    def __init__(self):
        self.jobs: list[ActionJob] = []

    def __call__(self, job):
        self.jobs.append(job)


@pytest.fixture
def log_level():
    logger = logging.getLogger("eventd.actions.log")
    before = logger.level
    yield logger.setLevel
    logger.setLevel(before)


def engine_for(tmp_path, text, submit):
    rules = load_rules([write_rules(tmp_path / "r", text)], {})
    metrics = Metrics()
    context = ActionContext(settings=Settings(), metrics=metrics, state_dir=tmp_path,
                            stopping=threading.Event())
    kinds = {"log": LogAction(), "audit": AuditAction(context)}
    engine = Engine(rules, submit, kinds, None, metrics, submit_many=lambda jobs: [
        submit(job) for job in jobs])
    return engine, metrics


def event(kind="container", state="Stopped"):
    return Received({"type": kind, "action": "update", "state": state, "parents": [],
                     "resource_uri": f"/api/app/v1/{kind}/{uuid.uuid4()}/",
                     "uuid": str(uuid.uuid4()), "datetime": "2026-01-01T00:00:00Z"}, 0.0)


def test_a_log_level_changed_at_run_time_takes_effect_at_the_next_batch(tmp_path, log_level):
    jobs = Collected()
    engine, metrics = engine_for(tmp_path, """
        rules:
          - name: debug-line
            match: {type: container}
            actions: [{log: {message: "seen {{ event.state }}", level: debug}}]
    """, jobs)
    log_level(logging.WARNING)
    engine.process_batch([event(), event()])
    assert jobs.jobs == []  # below the level: counted, nothing rendered or queued
    log_level(logging.DEBUG)
    engine.process_batch([event()])
    assert [job.options["message"] for job in jobs.jobs] == ["seen Stopped"]
    assert metrics.registry.get_sample_value("eventd_rule_matches_total",
                                             {"rule": "debug-line"}) == 3


def test_an_event_matching_a_quiet_rule_and_an_audit_rule_records_both(tmp_path, log_level):
    jobs = Collected()
    engine, metrics = engine_for(tmp_path, f"""
        rules:
          - name: debug-line
            match: {{type: container}}
            actions: [{{log: {{message: "x", level: debug}}}}]
          - name: audit-all
            match: {{}}
            actions: [{{audit: {{path: "{tmp_path / 'audit.jsonl'}"}}}}]
    """, jobs)
    log_level(logging.WARNING)
    engine.process_batch([event(), event(kind="service", state="Running")])
    contexts = [job.context for job in jobs.jobs]
    assert [c["rules"] for c in contexts] == [["debug-line", "audit-all"], ["audit-all"]]
    assert contexts[0]["actions"][0] == {"rule": "debug-line", "kind": "log", "status": "skipped"}
    assert metrics.registry.get_sample_value("eventd_rule_matches_total",
                                             {"rule": "debug-line"}) == 1
    assert metrics.registry.get_sample_value("eventd_rule_matches_total",
                                             {"rule": "audit-all"}) == 2


def test_types_nobody_documented_count_as_other_and_keep_the_counts_small(tmp_path):
    jobs = Collected()
    engine, metrics = engine_for(tmp_path, """
        rules:
          - name: every
            match: {}
            actions: [{log: {message: "x", level: debug}}]
    """, jobs)
    engine.process_batch([event(kind=f"made-up-{i}") for i in range(500)] + [event()])
    engine.process_batch([event(kind="container"), event(kind="made-up-x")])
    sample = metrics.registry.get_sample_value
    assert sample("eventd_events_received_total", {"type": "other"}) == 501
    assert sample("eventd_events_received_total", {"type": "container"}) == 2
    assert sample("eventd_rule_matches_total", {"rule": "every"}) == 503
    # what the engine keeps stays the size of the documented types (an attacker's stream of
    # new types must not grow it)
    assert len(engine._received) <= len(metrics.events_received.totals()) + 1


def test_a_bad_event_in_a_batch_costs_only_itself(tmp_path, internal_errors):
    """Not a mapping, a type that is not hashable, no type: counted, reported, the rest goes on."""
    jobs = Collected()
    engine, metrics = engine_for(tmp_path, """
        rules:
          - name: every
            match: {}
            actions: [{log: {message: "x", level: debug}}]
    """, jobs)
    good = [event(), event(kind="service", state="Running")]
    odd = Received({"action": "update", "uuid": str(uuid.uuid4())}, 0.0)
    listed = Received({"type": ["container"], "uuid": str(uuid.uuid4())}, 0.0)
    engine.process_batch([good[0], Received(["not", "a", "mapping"], 0.0), odd, listed, good[1]])
    sample = metrics.registry.get_sample_value
    assert sample("eventd_events_received_total", {"type": "container"}) == 1
    assert sample("eventd_events_received_total", {"type": "service"}) == 1
    assert sample("eventd_events_received_total", {"type": "other"}) == 3
    assert sample("eventd_rule_matches_total", {"rule": "every"}) == 4  # all but the non-mapping
    assert [where for where, _ in internal_errors] == ["engine"]
    internal_errors.clear()  # caught on purpose
    engine.process_batch([event()])  # and the next batch is as usual
    assert sample("eventd_rule_matches_total", {"rule": "every"}) == 5


@pytest.mark.parametrize("internal", [False, True])
def test_a_stream_batch_counts_and_matches_as_its_received_do(tmp_path, internal):
    """A read's Batch (events as one list, counted by type when decoded) counts, de-duplicates
    and matches exactly as the same events handed over as Received."""
    text = """
        rules:
          - name: every
            match: {}
            actions: [{log: {message: "x", level: debug}}]
    """
    as_lists, lists_metrics = engine_for(tmp_path / "a", text, Collected())
    as_batch, batch_metrics = engine_for(tmp_path / "b", text, Collected())
    events = [event(kind=kind).event for kind in ("container", "service", "action", "node")]
    events.append(dict(events[0]))  # the same uuid again: a duplicate unless internal
    batch = Batch(events, 0.0, None, internal, types=Tallied(e["type"] for e in events))
    as_batch.process_batch(batch)
    as_lists.process_batch([Received(dict(e), 0.0, None, internal) for e in events])
    for name in ("eventd_events_received_total", "eventd_events_duplicate_total",
                 "eventd_rule_matches_total"):
        assert samples_named(batch_metrics, name) == samples_named(lists_metrics, name)
    assert samples_named(batch_metrics, "eventd_events_duplicate_total") == (
        {(): 0.0} if internal else {(): 1.0})
    assert as_batch.processed == as_lists.processed == 5 - (not internal)


def samples_named(metrics, name):
    return {tuple(sorted(s.labels.items())): s.value for family in metrics.registry.collect()
            for s in family.samples if s.name == name}


QUIET_RULES = """
    rules:
      - name: debug-containers
        match: {type: container}
        actions: [{log: {message: "d {{ event.state }}", level: debug}}]
      - name: info-all
        match: {}
        actions: [{log: {message: "i {{ event.type }}", level: info}}]
      - name: debug-services
        match: {type: service, state: Running}
        actions: [{log: {message: "s", level: debug}}]
      - name: warning-nodes
        match: {type: node}
        actions: [{log: {message: "n", level: warning}}]
"""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING,
                                           logging.ERROR]),
                          st.lists(st.tuples(st.sampled_from(["container", "service", "node"]),
                                             st.sampled_from(["Running", "Stopped"])),
                                   max_size=6)),
                min_size=1, max_size=6))
def test_quiet_verdicts_kept_by_answer_follow_the_level_as_each_event_alone_does(
        tmp_path_factory, log_level, batches) -> None:
    """The batch path keeps each matched answer's quiet verdict while the quiet rules stay
    the same: with the level changed between batches (quiet, loud, quiet again), its counts
    and its jobs are those of the plain path, process() of each event (no shortcut)."""
    tmp_path = tmp_path_factory.mktemp("quiet")
    batched, alone = Collected(), Collected()
    engine, metrics = engine_for(tmp_path / "a", QUIET_RULES, batched)
    plain, plain_metrics = engine_for(tmp_path / "b", QUIET_RULES, alone)
    for level, kinds in batches:
        log_level(level)
        events = [event(kind, state) for kind, state in kinds]
        engine.process_batch(events)
        for received in events:
            plain.process(received)
        assert [(j.rule, j.options["message"]) for j in batched.jobs] == \
            [(j.rule, j.options["message"]) for j in alone.jobs]
    assert metrics.rule_matches.totals() == plain_metrics.rule_matches.totals()
