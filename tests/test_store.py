"""SqliteStore: the spool, dead letters, throttles and the dedupe window survive a reopen."""

from __future__ import annotations

import sqlite3
import time

from eventd.actions.base import ActionJob
from eventd.stores.sqlite import SqliteStore


def job(n: int, target: str = "webhook:http://127.0.0.1:9", **kw) -> ActionJob:
    return ActionJob(id=f"id-{n}", rule="r", kind="webhook", options={"url": "http://x/"},
                     event={"type": "container", "uuid": f"e{n}"}, target=target,
                     created_at=1000.0 + n, **kw)


def test_spool_keeps_jobs_in_order_across_reopen(tmp_path):
    store = SqliteStore(tmp_path)
    for n in range(5):
        assert store.spool_add(job(n, target="a" if n % 2 else "b"))
    assert store.spool_add(job(0)) is False  # already accepted
    store.spool_update_attempts("id-3", 4)
    store.spool_done("id-0")
    store.close()

    store = SqliteStore(tmp_path)
    try:
        assert [j.id for j in store.spool_pending()] == ["id-1", "id-2", "id-3", "id-4"]
        assert [j.id for j in store.spool_pending(target="a")] == ["id-1", "id-3"]
        assert [j.id for j in store.spool_pending(limit=2)] == ["id-1", "id-2"]
        assert store.spool_count() == 4
        again = {j.id: j for j in store.spool_pending()}
        assert again["id-3"].attempts == 4
        assert again["id-1"].event == {"type": "container", "uuid": "e1"}
        assert again["id-1"].created_at == 1001.0
    finally:
        store.close()


def test_database_is_in_wal_mode(tmp_path):
    SqliteStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "eventd.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_deadletter_moves_out_of_spool_and_back(tmp_path):
    store = SqliteStore(tmp_path)
    try:
        for n in range(3):
            store.spool_add(job(n))
        failing = store.spool_pending()[1]
        failing.attempts = 3
        store.deadletter_add(failing, "HTTP 400")
        assert [j.id for j in store.spool_pending()] == ["id-0", "id-2"]
        [letter] = store.deadletter_list()
        assert (letter.job.id, letter.reason, letter.job.attempts) == ("id-1", "HTTP 400", 3)
        assert abs(letter.at - time.time()) < 5

        before = time.time()
        [moved] = store.deadletter_take(["id-1"])
        assert moved.attempts == 0 and moved.created_at >= before  # a fresh deadline
        assert store.deadletter_list() == []
        assert [j.id for j in store.spool_pending()] == ["id-0", "id-2", "id-1"]
        assert store.deadletter_take(None) == []
    finally:
        store.close()


def test_deadletter_purge(tmp_path):
    store = SqliteStore(tmp_path)
    try:
        for n in range(3):
            store.deadletter_add(job(n), "gave up")
        assert store.deadletter_purge(["id-1", "nope"]) == 1
        assert [d.job.id for d in store.deadletter_list()] == ["id-0", "id-2"]
        assert store.deadletter_purge(None) == 2
        assert store.deadletter_list() == []
    finally:
        store.close()


def test_throttle_acquire_persists_across_reopen(tmp_path):
    store = SqliteStore(tmp_path)
    assert store.throttle_acquire("rule-a|svc", 60.0, now=100.0)
    assert not store.throttle_acquire("rule-a|svc", 60.0, now=130.0)
    assert store.throttle_acquire("rule-b|svc", 60.0, now=130.0)
    store.close()

    store = SqliteStore(tmp_path)
    try:
        assert not store.throttle_acquire("rule-a|svc", 60.0, now=159.0)  # no re-alert on restart
        assert store.throttle_acquire("rule-a|svc", 60.0, now=160.0)
        assert not store.throttle_acquire("rule-a|svc", 60.0, now=161.0)
    finally:
        store.close()


def test_dedupe_window_persists_across_reopen_and_is_bounded(tmp_path):
    store = SqliteStore(tmp_path, dedupe_window=4)
    for uuid in ("a", "b", "c", "d", "e"):
        store.dedupe_add(uuid)
    # generations of two: "a", "b" were forgotten together when "c", "d" filled the next
    assert [store.dedupe_seen(u) for u in "abcde"] == [False, False, True, True, True]
    store.close()

    store = SqliteStore(tmp_path, dedupe_window=4)
    try:
        assert [store.dedupe_seen(u) for u in "abcde"] == [False, False, True, True, True]
        store.dedupe_add("f")
        assert not store.dedupe_seen("c")
    finally:
        store.close()


def test_a_full_default_dedupe_window_reloads_quickly(tmp_path):
    store = SqliteStore(tmp_path)
    for n in range(100_000):
        store.dedupe_add(f"uuid-{n}")
    started = time.perf_counter()
    store.close()
    store = SqliteStore(tmp_path)
    elapsed = time.perf_counter() - started
    try:
        # the default window (50k) remembers at least the last 25k uuids
        assert store.dedupe_seen("uuid-75000") and store.dedupe_seen("uuid-99999")
        assert not store.dedupe_seen("uuid-0")
        assert elapsed < 2.0
    finally:
        store.close()
