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
        sentinel = Sentinel(list(location.hosts), sentinel_kwargs=watch,
                            **{k: v for k, v in common.items() if k != "retry"})
        client: redis.Redis = sentinel.master_for(
            location.service or "", db=location.db, retry=common["retry"])
        return client
    [(host, port)] = location.hosts
    tls: dict[str, Any] = {"ssl": True, **location.tls} if location.scheme == "rediss" else {}
    return redis.Redis(host=host, port=port, db=location.db, **common, **tls)


def follow_primary(client: redis.Redis) -> object:
    """Behind Sentinel: ask which server is the primary now, and drop the idle connections to
    one that no longer is. A restarted or cut-off primary goes on answering as a primary until
    Sentinel demotes it (~10 s): leases renewed there while another replica takes them on the
    promoted one would be two holders. Nothing for a plain Redis; a Sentinel that does not
    answer changes nothing (the connections in use are kept). The primary's address as
    Sentinel gives it (None: a plain Redis, or Sentinel did not answer)."""
    import redis as redis_module

    get_master_address = getattr(client.connection_pool, "get_master_address", None)
    if get_master_address is None:
        return None
    try:
        return get_master_address()
    except redis_module.RedisError:
        return None
