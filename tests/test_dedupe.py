"""The de-dup window: bounded, forgets by generations, saved to the store while running."""

from __future__ import annotations

import logging

from eventd.dedupe import DedupeSaver, DedupeWindow
from eventd.stores.memory import MemoryStore
from eventd.stores.sqlite import SqliteStore
from tests.waiting import wait_until


def test_window_remembers_at_least_half_and_at_most_its_size() -> None:
    window = DedupeWindow(4)
    assert [window.check_and_add(u) for u in "ab"] == [False, False]  # generation 1 full
    assert [window.check_and_add(u) for u in "cd"] == [False, False]  # generation 2 full
    assert all(u in window for u in "abcd") is False  # "ab" were dropped as a whole
    assert "c" in window and "d" in window
    assert window.check_and_add("d") is True
    assert window.check_and_add("a") is False
    assert len(window) <= 4


def test_window_stays_bounded_over_many_uuids() -> None:
    window = DedupeWindow(1000)
    for i in range(10_000):
        assert window.check_and_add(f"u{i}") is False
        assert len(window) <= 1000
    assert all(window.check_and_add(f"u{i}") for i in range(9_500, 10_000))


def test_window_survives_a_store_restart(tmp_path) -> None:
    store = SqliteStore(tmp_path)
    saver = DedupeSaver.load(store, size=4)
    for uuid in ("u1", "u2", "u3", "u4", "u5"):
        assert saver.window.check_and_add(uuid) is False
    saver.close()
    store.close()
    reopened = SqliteStore(tmp_path)
    try:
        window = DedupeSaver.load(reopened, size=4).window
        assert window.check_and_add("u5") is True
        assert window.check_and_add("u4") is True
        assert window.check_and_add("u1") is False  # forgotten with its generation
    finally:
        reopened.close()


def test_window_is_saved_while_running_not_only_at_close(tmp_path) -> None:
    store = SqliteStore(tmp_path)
    saver = DedupeSaver.load(store, interval=0.05)
    saver.start()
    try:
        saver.window.check_and_add("before-the-kill")
        # Another handle sees it committed on disk, with no close() of the saver or the store.
        other = SqliteStore(tmp_path)
        try:
            wait_until(lambda: "before-the-kill" in other.dedupe_load(), 5,
                       message="the window saved in the background")
        finally:
            other.close()
    finally:
        saver.close()
        store.close()


def test_an_unchanged_window_is_not_written_again() -> None:
    store = MemoryStore()
    saver = DedupeSaver.load(store)
    assert saver.save() and saver.saves == 0
    saver.window.check_and_add("a")
    assert saver.save() and saver.saves == 1
    saver.window.check_and_add("a")  # a duplicate changes nothing
    assert saver.save() and saver.saves == 1


def test_a_failing_store_is_logged_once_and_the_saver_keeps_going(caplog) -> None:
    store = MemoryStore()
    saver = DedupeSaver.load(store)
    store.close()
    saver.window.check_and_add("a")
    with caplog.at_level(logging.WARNING, logger="eventd.dedupe"):
        assert saver.save() is False
        saver.window.check_and_add("b")
        assert saver.save() is False
    assert [r.getMessage()[:33] for r in caplog.records] == ["could not save the de-dup window "]
