"""The Redis client the cluster coordinates through: the store's URL (`--store`), password and
TLS options, but timeouts short enough for leases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from eventd.settings import Settings


def is_cluster_store(store: str) -> bool:
    """Whether `--store` names a store shared by replicas (Redis), so leases are needed."""
    scheme = store.partition("://")[0].lower() if "://" in store else ""
    return scheme in ("redis", "rediss", "redis+sentinel")


def connect(settings: Settings) -> redis.Redis:
    """A client whose calls give up well within a lease period, without retries of their own
    (so a hung Redis cannot keep a replica consuming past its lease); ConfigError for a bad URL."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    from eventd.stores.redis.connect import parse

    location = parse(settings.store, settings.store_password)
    timeout = max(0.2, min(1.0, settings.lease_ttl / 4))
    common: dict[str, Any] = {
        "username": location.username, "password": location.password,
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "client_name": f"{settings.cluster}-cluster", "retry": Retry(NoBackoff(), 0),
    }
    if location.scheme == "redis+sentinel":
        watch = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        sentinel = Sentinel(list(location.hosts), sentinel_kwargs=watch,  # type: ignore[no-untyped-call]
                            **{k: v for k, v in common.items() if k != "retry"})
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            location.service or "", db=location.db, retry=common["retry"])
        return client
    [(host, port)] = location.hosts
    tls: dict[str, Any] = {"ssl": True, **location.tls} if location.scheme == "rediss" else {}
    return redis.Redis(host=host, port=port, db=location.db, **common, **tls)
