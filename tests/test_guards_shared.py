"""The loop guard and the per-target REST limit on a store replicas share (Redis): two guards
on one store behave as one. Two handles of one Redis play two replicas; faults are a paused
(SIGSTOP) redis-server of the test's own.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from eventd.actions.dockercloud import DockerCloudAction
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.delivery.attempts import Attempts, Verdict
from eventd.engine import Engine
from eventd.errors import RetryableActionError
from eventd.events import Received
from eventd.guards.calls import TargetLimiter
from eventd.guards.loop import LoopGuard
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.stores import open_store
from eventd.stores.memory import MemoryStore
from eventd.stores.redis import RedisStore
from tests.actions import gate_for, make_context, make_job
from tests.redis_server import RedisServer
from tests.waiting import wait_until

SVC = "09cbcf8d-a727-40d9-b420-c8e18b7fa55b"
SERVICE = f"/api/app/v1/acme/service/{SVC}/"
CONTAINER = "/api/app/v1/acme/container/c1dd4e1e-1356-411c-8613-e15146633640/"


def opened(url: str, cluster: str) -> RedisStore:
    store = open_store(Settings(store=url, cluster=cluster))
    assert isinstance(store, RedisStore)
    return store


def observed(store: RedisStore, metrics: Metrics) -> RedisStore:
    errors = metrics.store_errors
    store.observe(lambda op: errors.labels(op=op).inc(), metrics.store_up.set)
    return store


def container_event(uuid: str = "6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01") -> dict[str, object]:
    return {"type": "container", "action": "update", "state": "Stopped", "uuid": uuid,
            "resource_uri": CONTAINER, "parents": [SERVICE]}


# -- the REST limit ------------------------------------------------------------------------------
def test_two_limiters_on_one_store_allow_three_calls_per_object_between_them(
        redis_url: str, redis_cluster: str, caplog: pytest.LogCaptureFixture) -> None:
    blue, green = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    try:
        one = TargetLimiter(max_calls=3, per=600, shared=blue)
        other = TargetLimiter(max_calls=3, per=600, shared=green)
        with caplog.at_level(logging.WARNING, logger="eventd.guards.calls"):
            assert one.acquire(SERVICE, "job-0") and other.acquire(SERVICE, "job-1")
            assert one.acquire(f"/api/app/v1/service/{SVC}", "job-2")  # the same object
            assert not other.acquire(SERVICE, "job-3")  # the fourth, on either replica
            assert not one.acquire(SERVICE, "job-4")
            assert not other.acquire(SERVICE, "job-5")
            assert other.acquire(SERVICE, "job-0")  # a retry of an admitted job, elsewhere
            assert one.acquire("/api/app/v1/acme/service/other/", "job-6")
        refusals = [r for r in caplog.records if "rate limit" in r.getMessage()]
        assert len(refusals) == 2  # once per replica and window, not once per refusal
    finally:
        blue.close()
        green.close()


def test_an_unreachable_limit_makes_no_call_and_the_job_is_retried(
        tmp_path: Path, emulator) -> None:
    metrics = Metrics()
    rest = RestClient(emulator.rest_url, Credentials(header=emulator.auth_header, source="test"))
    with RedisServer(tmp_path / "redis") as server:
        store = observed(opened(server.url, "c"), metrics)
        try:
            context = make_context(metrics, rest=rest, loop_guard=LoopGuard(),
                                   limiter=TargetLimiter(shared=store))
            action = DockerCloudAction(context)
            service = emulator.world.uri("service", "web")
            job = make_job(action, {"call": "redeploy", "target": service})
            attempts = Attempts(metrics, gate_for(action))  # as the dispatcher runs it
            server.pause()
            try:
                failed = attempts.run(action, job)
            finally:
                server.resume()
            # FAILED is the dispatcher's "retry with backoff" (not REFUSED: dead-lettered, nor
            # SKIPPED: dropped as rate limited), and no call was made.
            assert failed.verdict is Verdict.FAILED
            assert isinstance(failed.error, RetryableActionError)
            assert "could not be read from the store" in str(failed.error)
            assert emulator.rest_calls() == []
            assert metrics.registry.get_sample_value(
                "eventd_store_errors_total", {"op": "limit_acquire"}) == 1
            assert wait_until(store.healthy, 10.0, 0.1)
            assert attempts.run(action, job).verdict is Verdict.DONE
            assert [(c.method, c.path) for c in emulator.rest_calls()] == \
                [("POST", f"{service}redeploy/")]
        finally:
            store.close()
            rest.close()


# -- the loop guard ------------------------------------------------------------------------------
def test_a_mark_one_replica_records_is_seen_by_the_other_within_the_refresh(
        redis_url: str, redis_cluster: str) -> None:
    blue, green = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    one = LoopGuard(shared=blue, refresh=0.2)
    other = LoopGuard(shared=green, refresh=0.2)
    try:
        assert not other.is_self_caused(container_event())  # starts its refresher
        one.record(f"/api/app/v1/service/{SVC}/")  # namespaced or not: the same object
        assert one.is_self_caused(container_event())  # at once where it was recorded
        started = time.monotonic()
        assert wait_until(lambda: other.is_self_caused(container_event()), 5.0, 0.01)
        assert time.monotonic() - started < 1.0  # within the refresh bound (0.2 s), with room
        assert not other.is_self_caused({"type": "service", "resource_uri":
                                         "/api/app/v1/acme/service/other/"})
    finally:
        one.close()
        other.close()
        blue.close()
        green.close()


def test_asking_never_reads_the_store_per_event(tmp_path: Path) -> None:
    # The engine asks for every event (100k/s in the bench): the store is read about once per
    # `refresh`, however many events are asked about.
    with RedisServer(tmp_path / "redis") as server:
        store = opened(server.url, "c")
        guard = LoopGuard(shared=store, refresh=0.5)
        client = server.client()
        try:
            guard.record(SERVICE)
            client.config_resetstat()
            started = time.monotonic()
            asked = 0
            while asked < 20_000 or time.monotonic() - started < 1.2:
                assert guard.is_self_caused(container_event())
                asked += 1
            elapsed = time.monotonic() - started
            stats = client.info("commandstats")
            reads = sum(int(v["calls"]) for k, v in stats.items()
                        if k.startswith("cmdstat_z") or k in ("cmdstat_evalsha", "cmdstat_get"))
            assert 1 <= reads <= elapsed / 0.5 + 2, (asked, reads, elapsed)
        finally:
            client.close()
            guard.close()
            store.close()


def test_an_unreachable_store_never_stops_the_local_mark_and_is_counted(tmp_path: Path,
                                                                       caplog) -> None:
    metrics = Metrics()
    with RedisServer(tmp_path / "redis") as server:
        store = observed(opened(server.url, "c"), metrics)
        guard = LoopGuard(shared=store, refresh=0.2)
        try:
            server.pause()
            try:
                with caplog.at_level(logging.WARNING, logger="eventd.guards.loop"):
                    guard.record(SERVICE)  # no exception into the action
            finally:
                server.resume()
            assert guard.is_self_caused(container_event())  # this replica still knows
            assert metrics.registry.get_sample_value(
                "eventd_store_errors_total", {"op": "mark"}) == 1
            assert "could not share the loop guard's mark on service/" in caplog.text
            assert wait_until(store.healthy, 10.0, 0.1)
            guard.record(SERVICE)
            assert store.marked([f"service/{SVC}"], time.time())
        finally:
            guard.close()
            store.close()


def test_the_engine_marks_the_object_when_it_accepts_an_action_on_it(tmp_path: Path) -> None:
    # Known at once by the replica that accepted, before any replica delivers the call:
    # nothing is delivered here, and the object's next event is already eventd's own.
    (tmp_path / "rules.yml").write_text(
        "rules:\n"
        "  - name: restart\n"
        "    match: {type: container, state: Stopped}\n"
        "    actions:\n"
        "      - dockercloud: {call: redeploy, target: \"{{ event.parents[0] }}\"}\n")
    ruleset = load_rules([tmp_path / "rules.yml"], {})
    store = MemoryStore()
    guard = LoopGuard(shared=store)
    accepted: list[ActionJob] = []
    kinds = {"dockercloud": DockerCloudAction(make_context(loop_guard=guard))}
    engine = Engine(ruleset, accepted.append, kinds, store, Metrics(), loop_guard=guard)
    try:
        first = engine.process(Received(container_event("e1"), time.time()))
        assert first is not None and [d.status for d in first.decisions] == ["accepted"]
        assert len(accepted) == 1
        second = engine.process(Received(container_event("e2"), time.time()))
        assert second is not None and second.event.get("caused_by_eventd") is True
        assert [d.status for d in second.decisions] == ["skipped"]
        assert len(accepted) == 1
        assert store.marked([f"service/{SVC}"], time.time())  # shared with other replicas
    finally:
        guard.close()


def test_a_closed_guard_stops_refreshing(redis_url: str, redis_cluster: str) -> None:
    store = opened(redis_url, redis_cluster)
    stopping = threading.Event()
    guard = LoopGuard(shared=store, refresh=0.05, stopping=stopping)
    try:
        guard.is_self_caused(container_event())
        assert wait_until(lambda: guard.refreshed >= 3, 5.0, 0.01)
        stopping.set()  # the dispatcher's close sets the pipeline's
        guard.close()
        count = guard.refreshed
        assert guard._refresher is not None and not guard._refresher.is_alive()
        assert guard.refreshed == count
    finally:
        store.close()
