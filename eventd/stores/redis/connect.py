"""From a `--store` URL to redis-py clients, and a form of the URL safe to print.

    redis://[[user]:password@]host[:port][/db]        plain TCP
    rediss://...                                       TLS (system CAs; `?ssl_ca_certs=FILE`)
    redis+sentinel://[[user]:password@]host:26379,host2:26379/service[/db]

The password may also come from the settings (EVENTD_STORE_PASSWORD or _FILE); one in the URL
wins. It never appears in `Location.safe` nor in any message built here: a message about the
URL names what is wrong, never a part of the URL that could hold the password (a password with
`/`, `?` or `#` in it, not percent-encoded, ends the host part early).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from eventd.errors import ConfigError, StoreUnreachable

#: a call waits at most this long for an answer (a stopped Redis answers nothing)
SOCKET_TIMEOUT = 2.0
#: transport errors are retried this often within one call (a Sentinel failover, a restart):
#: by redis-py for a plain Redis; behind Sentinel by the store itself (`RedisClient`), since
#: redis-py's retry reconnects to the failed connection's address, which may be a primary
#: Sentinel no longer names (a restarted old one is a second primary for ~10 s)
RETRIES = 2
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


@dataclass(frozen=True)
class Location:
    """Where the store is: parsed from the URL, with the password kept out of `safe`."""

    scheme: str  # redis | rediss | redis+sentinel
    hosts: tuple[tuple[str, int], ...]
    db: int
    service: str | None = None  # the Sentinel master's name
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: dict[str, str] = field(default_factory=dict)

    @property
    def safe(self) -> str:
        """The URL without credentials, for logs, errors and `deadletter` output."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.hosts)
        service = f"/{self.service}" if self.service else ""
        return f"{self.scheme}://{hosts}{service}/{self.db}"


def parse(url: str, password: str | None = None) -> Location:
    """Parse a store URL; ConfigError naming what is wrong (never the password)."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        netloc = parts.netloc.rpartition("@")[2]
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    except ValueError:
        raise ConfigError("--store: not a URL (redis://host:port/db)") from None
    if scheme not in ("redis", "rediss", "redis+sentinel"):
        raise ConfigError(f"--store: unknown scheme {scheme!r} (redis, rediss, redis+sentinel)")
    if "@" in parts.path + parts.query + parts.fragment:
        raise ConfigError(f"--store: the {scheme}:// URL has an '@' after its host part: a "
                          "password holding '/', '?' or '#' must be percent-encoded (%2F, %3F, "
                          "%23), or given in EVENTD_STORE_PASSWORD(_FILE)")
    user, _, secret = userinfo.partition(":")
    default_port = 26379 if scheme == "redis+sentinel" else 6379
    hosts = tuple(_host_port(item, default_port) for item in netloc.split(",") if item)
    if not hosts:
        raise ConfigError(f"--store: no host in the {scheme}:// URL")
    path = [p for p in parts.path.split("/") if p]
    service = None
    if scheme == "redis+sentinel":
        if not path:
            raise ConfigError("--store: redis+sentinel:// needs the master's name: "
                              "redis+sentinel://host:26379/mymaster/0")
        service, path = unquote(path[0]), path[1:]
    elif len(hosts) > 1:
        raise ConfigError(f"--store: {scheme}:// takes one host (several: redis+sentinel://)")
    if len(path) > 1 or (path and not path[0].isdigit()):
        raise ConfigError(f"--store: the database must be a number ({scheme}://host:port/0)")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(_TLS_OPTIONS))
    if unknown:
        raise ConfigError(f"--store: unknown URL option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(_TLS_OPTIONS)}")
    return Location(scheme=scheme, hosts=hosts, db=int(path[0]) if path else 0, service=service,
                    username=unquote(user) or None,
                    password=unquote(secret) if secret else password, tls=query)


def _host_port(item: str, default: int) -> tuple[str, int]:
    host, sep, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not sep:
        host, port = item, str(default)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        # not quoted: a password holding a '/', '?' or '#' puts its start here
        raise ConfigError("--store: the host part of the URL is not HOST:PORT (a password "
                          "holding '/', '?' or '#' must be percent-encoded)")
    return host, int(port)


def unreachable(location: Location, exc: BaseException, op: str = "") -> StoreUnreachable | None:
    """The error to raise for a redis-py error that means Redis did not answer, else None.

    `Error 111 connecting to h:6379. Connection refused.` -> `connection refused`: the address
    is said once, by StoreUnreachable, and the password never.
    """
    if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) \
            or isinstance(exc, redis.AuthenticationError):
        return None
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    reason = text.rsplit(". ", 1)[-1]
    if location.password:
        reason = reason.replace(location.password, "***")
    return StoreUnreachable(location.safe, reason[:1].lower() + reason[1:], op=op)


def clients(location: Location, client_name: str,
            ) -> tuple[redis.Redis, redis.Redis, Sentinel | None]:
    """The client for the store's calls (a plain Redis: redis-py retries transport errors a
    little; behind Sentinel it retries nothing, `RedisClient` does on a connection that asks
    Sentinel), one for the health check (no retry, so /readyz answers within one timeout), and
    the Sentinel."""
    common: dict[str, Any] = {
        "db": location.db, "username": location.username, "password": location.password,
        "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT,
        "client_name": client_name, "decode_responses": True,
        # A value that is not UTF-8 (written by hand into Redis) must not fail the whole
        # reply it is part of: it reads as text with U+FFFD, and is then undecodable data.
        "encoding_errors": "replace",
    }
    retry: dict[str, Any] = {"retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES)}
    once: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}
    if location.scheme == "redis+sentinel":
        watch = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
        master = {k: v for k, v in common.items() if k != "db"}
        sentinel = Sentinel(list(location.hosts), sentinel_kwargs=watch,
                            **master)
        service = location.service or ""
        main = sentinel.master_for(service, db=location.db, **once)
        probe = sentinel.master_for(service, db=location.db, **once)
        return main, probe, sentinel
    [(host, port)] = location.hosts
    tls: dict[str, Any] = {}
    if location.scheme == "rediss":
        tls = {"ssl": True, **location.tls}
    return (redis.Redis(host=host, port=port, **common, **tls, **retry),
            redis.Redis(host=host, port=port, **common, **tls, **once), None)
