"""The Redis client the cluster coordinates through, from `--store` and the password settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventd.errors import ConfigError

if TYPE_CHECKING:
    import redis

    from eventd.settings import Settings


def is_cluster_store(store: str) -> bool:
    """Whether `--store` names a store shared by replicas (Redis), so leases are needed."""
    scheme = store.partition("://")[0].lower() if "://" in store else ""
    return scheme in ("redis", "rediss", "redis+sentinel")


def connect(settings: Settings) -> redis.Redis:
    """A client whose calls give up well within a lease period (so a hung Redis cannot keep a
    replica consuming past its lease); the password from the URL or EVENTD_STORE_PASSWORD(_FILE),
    never logged."""
    import redis

    store, password = settings.store, settings.store_password
    timeout = max(0.2, min(1.0, settings.lease_ttl / 4))
    if store.lower().startswith("redis+sentinel://"):
        return _sentinel(store, password, timeout)
    extra = {"password": password} if password else {}
    try:
        return redis.Redis.from_url(store, socket_timeout=timeout, socket_connect_timeout=timeout,
                                    **extra)
    except ValueError:
        raise ConfigError("--store: not a usable redis:// URL (redis://[:password@]host:port/db)") \
            from None


def _sentinel(store: str, password: str | None, timeout: float) -> redis.Redis:
    """`redis+sentinel://host:26379,host2:26379/mymaster/db`: the primary Sentinel names."""
    from redis.sentinel import Sentinel

    rest = store.split("://", 1)[1]
    hosts, _, path = rest.partition("/")
    service, _, db = path.strip("/").partition("/")
    if not hosts or not service:
        raise ConfigError("--store: redis+sentinel://host:port[,host:port]/service[/db]")
    nodes = []
    for item in hosts.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        nodes.append((host or item, int(port) if port.isdigit() else 26379))
    sentinel = Sentinel(nodes, socket_timeout=timeout,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=timeout)
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service, socket_timeout=timeout, password=password, db=int(db or 0))
    return client
