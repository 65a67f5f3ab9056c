"""The store contract: every store in the registry passes these (memory, SQLite, Redis).

A store keeps what it is given across handles: "reopen" closes a durable store and opens it
again (a restart), and hands back the same object for the memory store (its handles end
with the process). Store-specific behaviour (files, locks) is tested in test_store_sqlite.py and
test_store_redis*.py. The Redis kind runs against the shared Redis (tests/redis_server.py: skipped
with what to install when none answers, failing under CI=true), each test in a cluster of its own.
"""

from __future__ import annotations

import time

import pytest

from eventd.dedupe import DedupeWindow
from eventd.errors import ConfigError, StoreError
from eventd.records import ActionJob
from eventd.stores import STORES, resolve_store, store_name
from eventd.stores.base import Store


def job(n: int, target: str = "webhook:http://127.0.0.1:9", **kw) -> ActionJob:
    return ActionJob(id=f"id-{n}", rule="r", kind="webhook", options={"url": "http://x/"},
                     event={"type": "container", "uuid": f"e{n}"}, target=target,
                     created_at=1000.0 + n, **kw)


@pytest.fixture
def store(store_and_reopen) -> Store:
    return store_and_reopen[0]


def test_registry_names_every_store_and_suggests_on_a_typo() -> None:
    assert {"sqlite", "memory", "redis"} <= set(STORES)
    assert resolve_store("sqlite").name == "sqlite"
    assert store_name("redis://:secret@127.0.0.1:6379/0") == "redis"
    assert store_name("rediss://h:1/0") == store_name("redis+sentinel://h:26379/m/0") == "redis"
    with pytest.raises(ConfigError, match="unknown store 'sqlit' .did you mean 'sqlite'"):
        resolve_store("sqlit")
    with pytest.raises(ConfigError) as info:
        resolve_store("mongodb://user:hunter2@db/")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(("spec", "says"), [
    ("sqlite:///some/dir/x.db", "sqlite takes no URL, its files are in --state-dir"),
    ("sqlite://x.db", "sqlite takes no URL"),
    ("memory://anything", "memory takes no URL"),
])
def test_a_path_given_to_a_local_store_is_refused_not_ignored(spec: str, says: str) -> None:
    """Issue 21.5: `--store sqlite:///some/dir/x.db` was accepted and the path ignored."""
    with pytest.raises(ConfigError, match=says):
        resolve_store(spec)


def test_spool_keeps_jobs_in_order_across_reopen(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    for n in range(5):
        assert store.spool_add(job(n, target="a" if n % 2 else "b"))
    assert store.spool_add(job(0)) is False  # already accepted
    store.spool_update_attempts("id-3", 4)
    store.spool_done("id-0")
    store = reopen(store)
    assert [j.id for j in store.spool_pending()] == ["id-1", "id-2", "id-3", "id-4"]
    assert [j.id for j in store.spool_pending(target="a")] == ["id-1", "id-3"]
    assert [j.id for j in store.spool_pending(limit=2)] == ["id-1", "id-2"]
    assert [j.id for j in store.spool_pending(target="b", limit=1)] == ["id-2"]
    assert store.spool_count() == 4
    again = {j.id: j for j in store.spool_pending()}
    assert again["id-3"].attempts == 4
    assert again["id-1"].event == {"type": "container", "uuid": "e1"}
    assert again["id-1"].created_at == 1001.0


@pytest.mark.parametrize("page", [1, 2, 3, 500])
def test_spool_iter_pages_through_every_job_in_order(store, page) -> None:
    for n in range(7):
        store.spool_add(job(n, target="a" if n in (1, 2, 5) else "b"))
    store.spool_done("id-3")
    assert [j.id for j in store.spool_iter(page=page)] == ["id-0", "id-1", "id-2", "id-4",
                                                           "id-5", "id-6"]
    assert [j.id for j in store.spool_iter(target="a", page=page)] == ["id-1", "id-2", "id-5"]
    assert list(store.spool_iter(target="nobody", page=page)) == []


def test_spool_targets_counts_per_target_oldest_first(store) -> None:
    assert store.spool_targets() == {}
    for n, target in enumerate(["b", "a", "b", "c", "a", "b"]):
        store.spool_add(job(n, target=target))
    store.spool_done("id-0")
    targets = store.spool_targets()
    assert targets == {"a": 2, "b": 2, "c": 1}
    assert list(targets) == ["a", "b", "c"]  # "a" now holds the oldest job


def test_spool_update_keeps_a_jobs_context_across_reopen(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    first = job(1)
    store.spool_add(first)
    first.attempts = 2
    first.context["action_uri"] = "/api/audit/v1/action/abc/"
    store.spool_update(first)
    store.spool_update(job(99))  # not spooled: nothing happens
    store = reopen(store)
    [back] = store.spool_pending()
    assert back.attempts == 2 and back.context == {"action_uri": "/api/audit/v1/action/abc/"}
    assert store.spool_count() == 1


def test_jobs_handed_out_are_copies(store) -> None:
    original = job(1)
    store.spool_add(original)
    original.options["url"] = "http://changed/"
    [read] = store.spool_pending()
    read.event["uuid"] = "mutated"
    read.attempts = 7
    [again] = store.spool_pending()
    assert again.options == {"url": "http://x/"} and again.event["uuid"] == "e1"
    assert again.attempts == 0


def test_deadletter_moves_out_of_spool_and_back(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    for n in range(3):
        store.spool_add(job(n))
    failing = store.spool_pending()[1]
    failing.attempts = 3
    store.deadletter_add(failing, "HTTP 400")
    assert [j.id for j in store.spool_pending()] == ["id-0", "id-2"]
    store = reopen(store)
    [letter] = store.deadletter_list()
    assert (letter.job.id, letter.reason, letter.job.attempts) == ("id-1", "HTTP 400", 3)
    assert abs(letter.at - time.time()) < 5
    assert store.deadletter_count() == 1

    before = time.time()
    [moved] = store.deadletter_take(["id-1"])
    assert moved.attempts == 0 and moved.created_at >= before  # a fresh deadline
    assert store.deadletter_list() == [] and store.deadletter_count() == 0
    assert [j.id for j in store.spool_pending()] == ["id-0", "id-2", "id-1"]
    assert store.spool_pending()[2].created_at >= before
    assert store.deadletter_take(None) == []


def test_deadletter_add_keeps_the_given_time_and_replaces_an_earlier_letter(store) -> None:
    store.deadletter_add(job(1), "first", at=1234.5)
    store.deadletter_add(job(1), "second", at=2000.0)
    [letter] = store.deadletter_list()
    assert (letter.reason, letter.at) == ("second", 2000.0)


def test_deadletter_purge(store) -> None:
    for n in range(3):
        store.deadletter_add(job(n), "gave up")
    assert store.deadletter_purge(["id-1", "nope"]) == 1
    assert [d.job.id for d in store.deadletter_list()] == ["id-0", "id-2"]
    assert store.deadletter_purge(None) == 2
    assert store.deadletter_list() == []


def test_throttle_acquire_persists_across_reopen(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    assert store.throttle_acquire("rule-a|svc", 60.0, now=100.0)
    assert not store.throttle_acquire("rule-a|svc", 60.0, now=130.0)
    assert store.throttle_acquire("rule-b|svc", 60.0, now=130.0)
    store = reopen(store)
    assert not store.throttle_acquire("rule-a|svc", 60.0, now=159.0)  # no re-alert on restart
    assert store.throttle_acquire("rule-a|svc", 60.0, now=160.0)
    assert not store.throttle_acquire("rule-a|svc", 60.0, now=161.0)


def test_expired_throttle_keys_are_pruned(store) -> None:
    # One key per distinct value (a container name...): they must not pile up for ever.
    for n in range(3000):
        assert store.throttle_acquire(f"rule\0key-{n}", 10.0, now=1000.0 + n)
    assert store.throttle_count() < 1100
    assert not store.throttle_acquire("rule\0key-2999", 10.0, now=4000.0)  # still in its window


def test_marks_expire_and_survive_reopen(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    now = time.time()
    assert not store.marked(["service/a"], now)
    store.mark("service/a", now + 300)
    store.mark("service/old", now - 1)
    assert store.marked(["container/x", "service/a"], now)
    assert not store.marked(["service/old"], now)
    assert not store.marked(["service/a"], now + 301)
    store = reopen(store)
    assert store.marked(["service/a"], now)


def test_marks_active_lists_the_live_marks_in_one_read(store_and_reopen) -> None:
    # What a replica's loop guard refreshes its view from, about once a second.
    store, reopen = store_and_reopen
    now = time.time()
    assert store.marks_active(now) == {}
    store.mark("service/a", now + 300)
    store.mark("container/b", now + 60.5)
    store.mark("service/old", now - 1)
    store.mark("service/edge", now)  # ends at `now`: not marked, as marked() says
    assert store.marks_active(now) == {"service/a": now + 300, "container/b": now + 60.5}
    assert store.marks_active(now + 100) == {"service/a": now + 300}
    store = reopen(store)
    assert store.marks_active(now) == {"service/a": now + 300, "container/b": now + 60.5}


def test_dedupe_snapshot_roundtrip_keeps_the_bytes(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    assert store.dedupe_load() == b""
    store.dedupe_save(b"first")
    store.dedupe_save(bytes(range(256)) + b"[\n\0")  # any bytes: the format is eventd.dedupe's
    store = reopen(store)
    assert store.dedupe_load() == bytes(range(256)) + b"[\n\0"


def test_a_full_default_dedupe_window_roundtrips(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    window = DedupeWindow()
    uuids = [f"0f7c2c1e-8d2a-4c7b-9a55-{n:012d}" for n in range(50_000)]
    for uuid in uuids:
        window.check_and_add(uuid)
    store.dedupe_save(window.snapshot())
    store = reopen(store)
    restored = DedupeWindow.restore(store.dedupe_load())
    assert len(restored) == len(window) == 25_000  # the newest generation; the older was dropped
    assert all(u in restored for u in uuids[-25_000:])


def _silence(ident: str, ends_at: float, comment: str = "deploy") -> dict:
    return {"id": ident, "matchers": [{"name": "rule", "op": "=", "value": "crash"}],
            "starts_at": 1000.0, "ends_at": ends_at, "created_by": "ops", "comment": comment,
            "created_at": 1000.0, "updated_at": 1000.0}


def test_silences_are_kept_by_id_across_reopen_and_replaced(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    assert store.silence_list() == []
    store.silence_put(_silence("a", 5000.0))
    store.silence_put(_silence("b", 6000.0, comment="<script>x</script> \u2603"))
    store.silence_put(_silence("a", 3000.0, comment="expired early"))  # same id: replaced
    store = reopen(store)
    kept = {record["id"]: record for record in store.silence_list()}
    assert kept == {"a": _silence("a", 3000.0, comment="expired early"),
                    "b": _silence("b", 6000.0, comment="<script>x</script> \u2603")}


def test_silences_ended_before_a_time_are_pruned(store) -> None:
    for n, ends in enumerate((100.0, 200.0, 300.0)):
        store.silence_put(_silence(f"s{n}", ends))
    assert store.silence_prune(250.0) == 2
    assert [record["id"] for record in store.silence_list()] == ["s2"]
    assert store.silence_prune(250.0) == 0


def test_health_and_close(store) -> None:
    assert store.healthy()
    store.spool_add(job(1))
    store.close()
    store.close()  # idempotent
    assert not store.healthy()
    # Whatever the driver says about a closed store, callers see a StoreError naming the call.
    with pytest.raises(StoreError) as info:
        store.spool_add(job(2))
    assert info.value.op == "spool_add"
    with pytest.raises(StoreError):
        store.deadletter_list()


def test_events_waiting_for_logs_are_kept_in_order_across_reopen(store_and_reopen) -> None:
    """The engine keeps an event whose logs it awaits off its thread until its actions are
    spooled: a restart finds what is left, oldest first (Redis keeps none: the engine waits
    for logs on its own thread there)."""
    from eventd.stores.base import ParkedEvents

    store, reopen = store_and_reopen
    if not isinstance(store, ParkedEvents):  # the daemon then waits on the engine's thread
        assert store.name == "redis", f"the {store.name} store keeps no events waiting for logs"
        return
    events = [{"type": "container", "id": f"c{n}", "timeNano": 10**18 + n} for n in range(4)]
    store.parked_add([(f"k{n}", {"event": event, "received_at": 1.5})
                      for n, event in enumerate(events)])
    store.parked_add([("k1", {"event": {"replaced": True}})])  # kept already: left as is
    store.parked_done(["k0", "k2", "no-such-key"])
    store = reopen(store)
    assert store.parked_list() == [("k1", {"event": events[1], "received_at": 1.5}),
                                   ("k3", {"event": events[3], "received_at": 1.5})]
    store.parked_done(["k1", "k3"])
    assert store.parked_list() == []
