"""The de-dup window: bounded, forgets by generations, kept across a restart of the store."""

from __future__ import annotations

from eventd.dedupe import DedupeWindow
from eventd.stores.sqlite import SqliteStore


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
    store = SqliteStore(tmp_path, dedupe_window=4)
    for uuid in ("u1", "u2", "u3", "u4", "u5"):
        assert store.dedupe_check_and_add(uuid) is False
    store.close()
    reopened = SqliteStore(tmp_path, dedupe_window=4)
    try:
        assert reopened.dedupe_check_and_add("u5") is True
        assert reopened.dedupe_check_and_add("u4") is True
        assert reopened.dedupe_check_and_add("u1") is False  # forgotten with its generation
    finally:
        reopened.close()
