"""The reader-to-engine queue is bounded in events, blocks when full, and never drops."""

from __future__ import annotations

import threading

from eventd.handoff import EventQueue
from tests.waiting import wait_until


def test_bound_is_in_events_not_batches() -> None:
    queue = EventQueue(max_events=10)
    assert queue.put("a", 6, timeout=0.01)
    assert queue.put("b", 4, timeout=0.01)
    assert not queue.put("c", 1, timeout=0.01)  # full: 10 events wait
    assert queue.events == 10
    assert queue.get() == "a"
    assert queue.put("c", 1, timeout=0.01)


def test_an_oversized_batch_passes_an_empty_queue() -> None:
    queue = EventQueue(max_events=10)
    assert queue.put("huge", 500, timeout=0.01)
    assert not queue.put("next", 1, timeout=0.01)
    assert queue.get() == "huge"


def test_a_blocked_reader_resumes_when_the_engine_takes_a_batch() -> None:
    queue = EventQueue(max_events=2)
    queue.put(1, 2)
    done = threading.Event()
    threading.Thread(target=lambda: (queue.put(2, 2), done.set()), daemon=True).start()
    assert not done.wait(0.05)  # backpressure: the reader waits
    assert queue.get() == 1
    wait_until(done.is_set, 2)
    assert queue.get() == 2


def test_join_waits_for_task_done() -> None:
    queue = EventQueue(max_events=5)
    queue.put("x", 1)
    assert not queue.join(timeout=0.01)
    queue.get()
    queue.task_done()
    assert queue.join(timeout=0.01)
