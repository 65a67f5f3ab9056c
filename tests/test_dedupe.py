"""The de-dup window: bounded, oldest forgotten first, kept across a restart of the store."""

from __future__ import annotations

from eventd.dedupe import DedupeWindow
from eventd.store import SqliteStore


def test_window_forgets_the_oldest_beyond_its_size() -> None:
    window = DedupeWindow(3)
    assert [window.check_and_add(u) for u in "abc"] == [False, False, False]
    assert window.check_and_add("a") is True
    assert window.check_and_add("d") is False  # evicts "a"
    assert "a" not in window and len(window) == 3
    assert window.check_and_add("a") is False
    assert window.snapshot() == ["c", "d", "a"]


def test_window_survives_a_store_restart(tmp_path) -> None:
    store = SqliteStore(tmp_path, dedupe_window=2)
    for uuid in ("u1", "u2", "u3"):
        assert store.dedupe_check_and_add(uuid) is False
    store.close()
    reopened = SqliteStore(tmp_path, dedupe_window=2)
    try:
        assert reopened.dedupe_check_and_add("u3") is True
        assert reopened.dedupe_check_and_add("u1") is False  # it had been evicted
    finally:
        reopened.close()
