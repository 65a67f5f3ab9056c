"""Loop guard, per-target rate limit and circuit breaker, on an injected clock."""

from __future__ import annotations

import logging

from eventd.delivery.guards import CircuitBreaker, LoopGuard, TargetLimiter

SVC = "09cbcf8d-a727-40d9-b420-c8e18b7fa55b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_loop_guard_matches_object_and_parents_by_type_and_uuid():
    clock = Clock()
    guard = LoopGuard(window=300, clock=clock)
    guard.record(f"/api/app/v1/acme/service/{SVC}/")
    service_event = {"type": "service", "resource_uri": f"/api/app/v1/service/{SVC}/",
                     "parents": []}
    new_container = {"type": "container", "resource_uri": "/api/app/v1/acme/container/new-1/",
                     "parents": [f"/api/app/v1/acme/service/{SVC}/", "/api/app/v1/acme/stack/s/"]}
    unrelated = {"type": "container", "resource_uri": "/api/app/v1/acme/container/c2/",
                 "parents": ["/api/app/v1/acme/service/other/"]}
    assert guard.is_self_caused(service_event)  # un-namespaced form of the same object
    assert guard.is_self_caused(new_container)
    assert not guard.is_self_caused(unrelated)
    assert not guard.is_self_caused({"type": "error"})
    clock.now += 301
    assert not guard.is_self_caused(new_container)


def test_target_limiter_allows_three_per_window_and_counts_retries_once(caplog):
    clock = Clock()
    limiter = TargetLimiter(max_calls=3, per=600, clock=clock)
    target = f"/api/app/v1/acme/service/{SVC}/"
    with caplog.at_level(logging.WARNING):
        assert [limiter.acquire(target, f"job-{n}") for n in range(3)] == [True] * 3
        assert limiter.acquire(target, "job-0")  # a retry of an admitted job
        assert not limiter.acquire(f"/api/app/v1/service/{SVC}/", "job-3")  # same object
        assert not limiter.acquire(target, "job-4")
        assert limiter.acquire("/api/app/v1/acme/service/other/", "job-5")
    assert len([r for r in caplog.records if "rate limit" in r.getMessage()]) == 1
    clock.now += 600
    assert limiter.acquire(target, "job-6")


def test_circuit_breaker_opens_at_threshold_then_probes_after_cooldown(caplog):
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=60, clock=clock)
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            breaker.failure("t")
        assert breaker.wait_time("t") == 0 and not breaker.is_open("t")
        breaker.failure("t")
        assert breaker.is_open("t") and breaker.wait_time("t") == 60
        assert breaker.wait_time("other") == 0
        clock.now += 60
        assert breaker.wait_time("t") == 0  # the probe may go
        breaker.failure("t")  # the probe failed: paused again, quietly
        assert breaker.wait_time("t") == 60
        breaker.success("t")
        assert not breaker.is_open("t") and breaker.wait_time("t") == 0
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [m for m in messages if "circuit" in m[1]] == [
        ("WARNING", "circuit open for t after 3 consecutive failures; pausing it, next probe in 60 s"),
        ("INFO", "circuit closed for t: it answered again")]
