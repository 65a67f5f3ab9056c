"""The one backoff policy, and the three waits it governs: stream reconnects, delivery probes,
backfill retries, each against a real server that fails (the emulator, a stopped receiver)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from eventd.actions.webhook import WebhookAction
from eventd.backoff import Backoff
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.delivery.breaker import CircuitBreaker
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.retry import RetryPolicy
from eventd.settings import DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, Settings
from eventd.sources.base import LoopOptions
from eventd.sources.dockercloud.backfill import Backfiller, backfill_backoff
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions
from eventd.stores.memory import MemoryStore
from tests.actions import make_context, make_job
from tests.waiting import wait_until

#: an unusual policy, so that a wait no user got from it could not match by chance
POLICY = Backoff(initial=0.2, maximum=0.5)


def top() -> float:
    """A jitter source that always draws the ceiling, so waits are exact."""
    return 1.0


def test_waits_double_from_initial_to_maximum_with_a_floored_full_jitter():
    streak = Backoff(1.0, 60.0).streak(rng=top)
    assert [streak.failed() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert streak.failures == 9
    low = Backoff(1.0, 60.0).streak(rng=lambda: 0.0)
    assert [low.failed() for _ in range(3)] == [0.5, 0.5, 0.5]  # never below initial / 2
    assert [Backoff(1.0, 60.0, jitter=False).streak(rng=lambda: 0.0).failed()] == [1.0]
    capped = Backoff(1.0, 60.0).streak(rng=top)
    assert [capped.failed(cap=5.0) for _ in range(5)] == [1, 2, 4, 5, 5]


def test_a_streak_may_be_carried_on_by_another_thread():
    """A delivery lane's worker may be restarted: the streak must not be bound to a thread."""
    streak = POLICY.streak(rng=top)
    seen = [streak.failed()]
    worker = threading.Thread(target=lambda: seen.append(streak.failed()))
    worker.start()
    worker.join(5)
    assert seen == [0.2, 0.4]


def test_the_timing_defaults_are_written_once():
    default = Backoff(DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX)
    settings = Settings()
    assert (settings.backoff_initial, settings.backoff_max) == (default.initial, default.maximum)
    assert StreamOptions().loop_options.backoff == LoopOptions().backoff == default
    assert StreamOptions.from_settings(settings).loop_options.backoff == default
    assert RetryPolicy().backoff == default
    assert backfill_backoff(settings) == replace(default, jitter=False)


def test_the_stream_delivery_probes_and_backfill_wait_by_the_one_policy(emulator, metrics):
    """Given one policy, each of the three users waits exactly its steps (jitter drawn at the
    ceiling): 0.2, 0.4, then 0.5 (the maximum)."""
    expected = [0.2, 0.4, 0.5, 0.5]

    # the stream: four refused handshakes, then a connection
    emulator.faults.fail_handshake(503, count=4)
    stream_waits: list[float] = []
    stopping = threading.Event()
    consumer = StreamConsumer(
        emulator.stream_url + "api/audit/v1/events/",
        Credentials(header=emulator.auth_header, source="test"), lambda batch: None, metrics,
        stopping, options=StreamOptions(backoff_initial=POLICY.initial,
                                        backoff_max=POLICY.maximum),
        sleep=stream_waits.append, rng=top)
    reader = threading.Thread(target=consumer.run, daemon=True)
    reader.start()
    try:
        wait_until(lambda: consumer.connected)
    finally:
        stopping.set()
        reader.join(5)
    assert stream_waits == expected

    # delivery: a webhook receiver that is down, probed by one lane
    now = [1000.0]
    probe_waits: list[float] = []
    enough = threading.Event()

    def probe_sleep(seconds: float) -> None:
        probe_waits.append(seconds)
        now[0] += 100.0  # the target has been down long: its outage does not cap the wait
        if len(probe_waits) >= len(expected):
            enough.set()
            stopping_lane.wait(5)

    stopping_lane = threading.Event()
    context = make_context(metrics)
    hook = WebhookAction(context)
    breaker = CircuitBreaker(RetryPolicy(initial_wait=POLICY.initial, max_wait=POLICY.maximum),
                             clock=lambda: now[0], rng=top)
    dispatcher = Dispatcher(context, MemoryStore(), {"webhook": hook}, breaker=breaker,
                            sleep=probe_sleep)
    dispatcher.start()
    try:
        dispatcher.submit(make_job(hook, {"url": "http://127.0.0.1:9/down", "json": {}}))
        assert enough.wait(10)
    finally:
        stopping_lane.set()
        dispatcher.close(2)
    assert probe_waits[:len(expected)] == expected

    # backfill: four server errors, then the actions (no jitter: the steps themselves)
    emulator.faults.fail_rest(503, count=4)
    backfill_waits: list[float] = []
    rest = RestClient(emulator.rest_url, Credentials(header=emulator.auth_header, source="test"))
    try:
        Backfiller(rest, lambda batch: None, metrics, attempts=5,
                   backoff=replace(POLICY, jitter=False), sleep=backfill_waits.append)(0.0)
    finally:
        rest.close()
    assert backfill_waits == expected


@pytest.mark.parametrize("initial, maximum", [(0.0, 1.0), (2.0, 1.0), (1e-6, 1e6)])
def test_odd_policies_stay_bounded(initial, maximum):
    streak = Backoff(initial, maximum).streak()
    waits = [streak.failed() for _ in range(80)]
    assert all(0 <= wait <= max(maximum, 0) for wait in waits)
