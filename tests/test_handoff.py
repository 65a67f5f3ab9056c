"""The reader-to-engine queue is bounded in events, blocks when full, and never drops."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

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


def test_claim_only_when_nothing_is_queued_or_in_process() -> None:
    queue = EventQueue(max_events=10)
    assert queue.claim()  # idle: the caller processes its item itself
    assert not queue.claim()  # ... and nobody else skips the line meanwhile
    assert not queue.join(timeout=0.01)  # a claimed item counts as unfinished
    queue.task_done()
    assert queue.join(timeout=0.01)
    queue.put("a", 1)
    assert not queue.claim()  # queued: a claim would overtake it
    assert queue.get() == "a"
    assert not queue.claim()  # taken but not done: still in process
    queue.task_done()
    assert queue.claim()
    queue.task_done()


def test_a_claim_can_wait_for_the_engine_to_be_idle() -> None:
    queue = EventQueue(max_events=10)
    queue.put("a", 1)
    assert not queue.claim(timeout=0.01)
    claimed = threading.Event()
    threading.Thread(target=lambda: queue.claim(timeout=5) and claimed.set(),
                     daemon=True).start()
    assert queue.get() == "a"
    assert not claimed.wait(0.05)  # taken, not yet done
    queue.task_done()
    wait_until(claimed.is_set, 2)
    assert not queue.join(timeout=0.01)  # the claimed turn is unfinished until done
    queue.task_done()
    assert queue.join(timeout=0.01)


# -- the daemon: a backlog is processed on the reader's thread when the engine is idle --------

def _batch(states: list[str]) -> Any:
    import time
    import uuid

    from eventd.events import Batch
    return Batch([{"type": "container", "action": "update", "parents": [],
                   "resource_uri": f"/api/app/v1/container/{uuid.uuid4()}/", "state": state,
                   "uuid": str(uuid.uuid4()), "datetime": "2026-12-06T03:00:00Z"}
                  for state in states], time.time())


def test_a_big_batch_is_processed_inline_when_the_engine_is_idle_and_in_order_when_not(
        emulator: Any, tmp_path: Path) -> None:
    import json

    from eventd.daemon import INLINE_BATCH
    from tests.daemon_helpers import start_daemon, write_rules

    audit = tmp_path / "audit.jsonl"
    rules = write_rules(tmp_path / "rules", f"""
        rules:
          - name: audit-containers
            match: {{type: container}}
            actions:
              - audit: {{path: "{audit}", fsync: always}}
    """)
    daemon = start_daemon(emulator, rules, tmp_path / "state")
    try:
        wait_until(lambda: daemon.consumer.connected, 5, message="daemon connected")
        assert daemon.wait_idle(5)  # the gap event of the connection processed
        engine = daemon.engine
        before = engine.processed
        big = _batch([f"inline-{i}" for i in range(INLINE_BATCH)])
        daemon._sink(big)  # the engine is idle: processed before _sink returns, on this thread
        assert engine.processed == before + INLINE_BATCH

        # The engine busy with a queued batch: a big one waits its turn behind it.
        with daemon._engine_lock:
            daemon._sink(_batch(["small"]))
            wait_until(lambda: daemon._queue.events == 0, 5, message="the engine took it")
            sent = threading.Thread(target=daemon._sink,
                                    args=(_batch([f"after-{i}" for i in range(INLINE_BATCH)]),))
            sent.start()
            sent.join(0.2)
            assert sent.is_alive()  # waiting for the engine to be idle, not overtaking
            assert engine.processed == before + INLINE_BATCH
        sent.join(5)
        assert not sent.is_alive()
        assert engine.processed == before + 2 * INLINE_BATCH + 1
        assert daemon.wait_idle(5)  # the audit lines written
        states = [json.loads(line)["event"]["state"] for line in audit.read_text().splitlines()]
        assert states == ([f"inline-{i}" for i in range(INLINE_BATCH)] + ["small"]
                          + [f"after-{i}" for i in range(INLINE_BATCH)])
    finally:
        daemon.stop(timeout=5)
