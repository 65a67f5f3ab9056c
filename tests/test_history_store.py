"""`enrich: history`'s store role on every store: bounded per object, pruned by age."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventd.stores import STORES, open_store
from eventd.stores.base import EventHistory
from tests.store_fixtures import settings_for


@pytest.fixture(params=sorted(STORES))
def store(request, tmp_path: Path):
    store = open_store(settings_for(request.param, tmp_path, request))
    yield store
    store.close()


def test_newest_kept_oldest_first_and_old_ones_pruned(store) -> None:
    assert isinstance(store, EventHistory)
    for i in range(30):
        store.history_add("/docker/container/a/", {"at": 1000.0 + i, "n": i}, keep=20,
                          ttl=3600, now=1000.0 + i)
    kept = store.history_get("/docker/container/a/", since=0)
    assert [r["n"] for r in kept] == list(range(10, 30))
    assert [r["n"] for r in store.history_get("/docker/container/a/", since=1025)] == \
        [25, 26, 27, 28, 29]
    assert store.history_get("/docker/container/b/", since=0) == []
    store.history_add("/docker/container/b/", {"at": 9000.0, "n": 0}, keep=20, ttl=3600,
                      now=9000.0)
    if store.name == "sqlite":  # Redis expires a key as a whole, by its own clock; memory
        # prunes other objects only past 10,000 of them
        assert store.history_get("/docker/container/a/", since=0) == []
    assert [r["n"] for r in store.history_get("/docker/container/b/", since=0)] == [0]
