"""Every store of the registry, fresh, with a way to reopen it: the fixture of the store
contract suite (test_store.py) and of every other suite that runs on all stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventd.settings import Settings
from eventd.stores import STORES, open_store
from eventd.stores.base import Store

Reopen = Callable[[Store], Store]


def settings_for(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings that open a fresh, empty store of this kind (a networked store gets a URL
    with a database or key prefix of its own here)."""
    if name == "redis":
        return Settings(store=request.getfixturevalue("redis_url"),
                        cluster=request.getfixturevalue("redis_cluster"),
                        state_dir=tmp_path / "state")
    return Settings(store=name, state_dir=tmp_path / "state")


@pytest.fixture(params=sorted(STORES))
def store_and_reopen(request, tmp_path: Path) -> Iterator[tuple[Store, Reopen]]:
    settings = settings_for(request.param, tmp_path, request)
    opened: list[Store] = [open_store(settings)]

    def reopen(store: Store) -> Store:
        if store.name == "memory":
            return store
        store.close()
        opened.append(open_store(settings))
        return opened[-1]

    try:
        yield opened[0], reopen
    finally:
        for store in opened:
            store.close()
