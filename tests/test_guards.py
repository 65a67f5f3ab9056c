"""Loop guard, per-target call limit, target health (breaker) and probe waits, on an injected clock."""

from __future__ import annotations

import logging

from eventd.delivery.breaker import CircuitBreaker
from eventd.delivery.retry import RetryPolicy
from eventd.guards.calls import TargetLimiter
from eventd.guards.loop import LoopGuard

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


def test_target_limiter_forgets_targets_whose_window_passed():
    clock = Clock()
    limiter = TargetLimiter(max_calls=1, per=60, clock=clock)
    for n in range(5000):
        limiter.acquire(f"/api/app/v1/service/{n:08d}-0000-4000-8000-000000000000/", f"j{n}")
        clock.now += 1
    assert limiter.tracked() <= 1100  # bounded by the window, not by every target ever seen


def test_probe_waits_grow_with_failures_and_with_how_long_the_target_is_down():
    policy = RetryPolicy(initial_wait=1.0, max_wait=60.0)

    def waits(rng: float, failures: int, apart: float) -> list[float]:
        """The waits a breaker gives after `failures` failures, `apart` seconds apart."""
        clock = Clock()
        breaker = CircuitBreaker(policy, clock=clock, rng=lambda: rng)
        found = []
        for _ in range(failures):
            found.append(breaker.failure("t"))
            clock.now += apart
        return found

    assert waits(1.0, 8, 10_000) == [1, 2, 4, 8, 16, 32, 60, 60]
    assert waits(1.0, 6, 1.0)[-1] == 5.0  # down for 5 s: a 5 s blip is never waited out longer
    assert waits(0.0, 9, 10_000)[-1] == 0.5  # full jitter, from ~1 s
    assert policy.told_wait(3600) == 60.0 and policy.told_wait(1) == 1.0


def test_circuit_opens_only_after_30_s_of_failures_and_a_success_closes_it(caplog):
    clock = Clock()
    breaker = CircuitBreaker(RetryPolicy(), open_after=30, clock=clock, rng=lambda: 1.0)
    with caplog.at_level(logging.INFO):
        for _ in range(20):  # 20 failures within 20 s: retried, but not "open"
            breaker.failure("t")
            clock.now += 1
        assert breaker.failing("t") and not breaker.is_open("t")
        clock.now += 10
        breaker.failure("t")
        assert breaker.is_open("t") and not breaker.is_open("other")
        breaker.failure("t")  # said once
        breaker.success("t")
        assert not breaker.failing("t") and not breaker.is_open("t")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if "circuit" in r.getMessage()]
    assert [level for level, _ in messages] == ["WARNING", "INFO"]
    assert messages[0][1].startswith("circuit open for t: failing for 30 s (21 attempts)")
    assert messages[1][1] == "circuit closed for t: it answered again after 30 s"


def test_told_to_come_back_is_not_a_failure():
    clock = Clock()
    breaker = CircuitBreaker(RetryPolicy(), open_after=30, clock=clock)
    for _ in range(100):
        assert breaker.told("t", 7.0) == 7.0
        clock.now += 7
    assert not breaker.failing("t") and not breaker.is_open("t")
    assert breaker.told("t", 3600) == 60.0  # capped
    assert 0.5 <= breaker.told("t", None) <= 1.0  # a 429 without Retry-After: the first step
