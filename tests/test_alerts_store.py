"""The store roles of eventd.alerts on every store of the registry (memory, SQLite, Redis):
firing alerts and open digest groups, kept across a reopen (a restart)."""

from __future__ import annotations

from pathlib import Path

from eventd.stores import open_store


def test_firing_alerts_are_kept_replaced_and_taken(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    store.alert_put("a", {"rule": "r", "next_send": 1.5, "labels": {"x": "1"}})
    store.alert_put("b", {"rule": "r", "next_send": 2.0})
    store.alert_put("a", {"rule": "r", "next_send": 3.0, "labels": {"x": "1"}})  # replaces
    store = reopen(store)
    assert sorted(store.alert_list()) == [
        ("a", {"rule": "r", "next_send": 3.0, "labels": {"x": "1"}}),
        ("b", {"rule": "r", "next_send": 2.0})]
    assert store.alert_take("a") == {"rule": "r", "next_send": 3.0, "labels": {"x": "1"}}
    assert store.alert_take("a") is None
    assert store.alert_list() == [("b", {"rule": "r", "next_send": 2.0})]


def test_open_groups_keep_their_events_in_order(store_and_reopen) -> None:
    store, reopen = store_and_reopen
    key = "rule\0" "0\0/api/app/v1/service/s1/"  # the Grouper's keys hold NUL separators
    assert [store.group_add(key, {"opened_at": 1.0}, {"n": n}) for n in range(3)] == [1, 2, 3]
    assert store.group_add("h", {"opened_at": 2.0}, {"n": 9}) == 1
    assert store.group_add(key, {"opened_at": 99.0}, {"n": 3}) == 4  # meta of the first add
    store = reopen(store)
    assert store.group_list() == [(key, {"opened_at": 1.0}, 4), ("h", {"opened_at": 2.0}, 1)]
    events = [{"n": n} for n in range(4)]
    assert store.group_get(key) == ({"opened_at": 1.0}, events)
    assert store.group_take(key) == ({"opened_at": 1.0}, events)
    assert store.group_take(key) is None and store.group_get(key) is None
    assert store.group_list() == [("h", {"opened_at": 2.0}, 1)]
    assert store.group_add(key, {"opened_at": 5.0}, {"n": 10}) == 1  # a new group, last
    assert [k for k, _, _ in store.group_list()] == ["h", key]


def test_firing_and_grouping_wait_for_an_unreachable_redis(tmp_path: Path) -> None:
    """As spool_add does: the engine's call holds its event until Redis answers again, and
    what it accepted is then stored once; nothing counts as an internal error."""
    import threading

    from eventd.alerts.firing import AlertBook
    from eventd.alerts.groups import Grouper
    from eventd.ops.metrics import Metrics
    from eventd.records import ActionJob
    from eventd.settings import Settings
    from tests.redis_server import RedisServer
    from tests.waiting import wait_until

    with RedisServer(tmp_path / "redis") as server:
        store = open_store(Settings(store=server.url, cluster="c"))
        stopping = threading.Event()
        sent: list[ActionJob] = []
        book = AlertBook(store, sent.append, Metrics(), stopping=stopping)
        grouper = Grouper(store, sent.append, Metrics(), lambda rule, index: None,
                          lambda kind, options: kind, stopping)
        job = ActionJob(id="j", rule="r", kind="alertmanager", event={},
                        options={"url": "http://127.0.0.1:9", "labels": {"alertname": "A"}},
                        target="am", created_at=0.0)
        try:
            assert store.alert_list() == [] and store.group_list() == []  # scripts loaded
            server.pause()
            try:
                fired = threading.Thread(target=book.submit, args=(job,))
                grouped = threading.Thread(target=grouper.add, args=(
                    "r", 0, "webhook", "k", {"by": "k"}, {"uuid": "u1"}, 100.0))
                fired.start()
                grouped.start()
                fired.join(1.0)
                grouped.join(0.1)
                assert fired.is_alive() and grouped.is_alive() and sent == []  # held, not lost
            finally:
                server.resume()
            fired.join(15)
            grouped.join(15)
            assert not fired.is_alive() and not grouped.is_alive()
            assert sent == [job] and [k for k, _ in store.alert_list()] != []
            assert [size for _, _, size in store.group_list()] == [1]
            assert wait_until(store.healthy, 10.0, 0.1)
        finally:
            stopping.set()
            store.close()
