"""Durable state: the spool, dead letters, throttle windows, loop-guard marks, de-dup snapshot.

`base` holds the role protocols every store implements; this registry maps a store's name
(the scheme of `--store`, later `redis://...`) to its class, imported lazily so that the
SQLite default never imports a network client. Imports only `eventd.errors`,
`eventd.records` (the job record), `eventd.settings` (types) and the standard library
plus each driver; never the pipeline, `commands` or `emulator`.
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import TYPE_CHECKING, cast

from eventd.errors import ConfigError

if TYPE_CHECKING:
    from eventd.settings import Settings
    from eventd.stores.base import Store, StoreFactory

STORES: dict[str, str] = {
    "sqlite": "eventd.stores.sqlite:SqliteStore",
    "memory": "eventd.stores.memory:MemoryStore",
    "redis": "eventd.stores.redis:RedisStore",
}


def store_name(spec: str) -> str:
    """The registry name in a `--store` value: `sqlite`, or a URL's scheme (`redis+sentinel`
    and `rediss` name the `redis` store)."""
    scheme = spec.partition("://")[0] if "://" in spec else spec
    scheme = scheme.strip().lower()
    base = scheme.partition("+")[0]
    return "redis" if base == "rediss" else base


#: a store name that is safe to repeat in a message (a URL's userinfo never matches it)
_PLAIN_NAME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
#: stores that live in --state-dir (sqlite) or nowhere (memory): a URL's path is not theirs
_LOCAL = ("sqlite", "memory")


def resolve_store(spec: str) -> StoreFactory:
    """The store class for a `--store` value; ConfigError with a did-you-mean if unknown."""
    name = store_name(spec)
    try:
        path = STORES[name]
    except KeyError:
        if not _PLAIN_NAME.fullmatch(name):  # `user:password@host`: quote none of it
            raise ConfigError("--store: not a store name or URL; give sqlite, memory, or "
                              "redis://host:port/db (rediss://, redis+sentinel://)") from None
        close = difflib.get_close_matches(name, STORES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown store {name!r}{hint}; known: {', '.join(sorted(STORES))}") \
            from None
    if name in _LOCAL and "://" in spec:
        where = "its files are in --state-dir (EVENTD_STATE_DIR)" if name == "sqlite" \
            else "it keeps nothing anywhere"
        raise ConfigError(f"--store: {name} takes no URL, {where}: give --store {name}"
                          + (" --state-dir DIR" if name == "sqlite" else ""))
    module_name, _, attribute = path.partition(":")
    return cast("StoreFactory", getattr(importlib.import_module(module_name), attribute))


def open_store(settings: Settings, *, exclusive: bool = False) -> Store:
    """Open the store `settings.store` names. `exclusive`: this process delivers the spool, so
    no other may (StateDirError if one does)."""
    return resolve_store(settings.store).open(settings, exclusive=exclusive)


def store_exists(settings: Settings) -> bool:
    """Whether the store `settings` name holds any eventd state yet (without creating it)."""
    return resolve_store(settings.store).exists(settings)
