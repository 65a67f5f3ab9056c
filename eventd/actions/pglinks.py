"""What the `postgres` kind and the audit trail's table share: DSNs read once, one connection
per delivery queue, the start check, and the Outbound of a write.

A queue (`postgres:host:port/database/table`) has one worker thread, so its connection is
used by one thread at a time; a connection that failed is closed and made again on the next
attempt. The DSN's password (from the URL or `password_file`) is never part of a queue name,
a description, an error or a log line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from eventd.clients.postgres import (
    DEFAULT_TIMEOUT,
    Dsn,
    check_identifier,
    classify,
    connect,
    parse_dsn,
    read_password_file,
)
from eventd.errors import ActionError, ConfigError, PermanentActionError
from eventd.outbound import Address, Call, Outbound

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

MAX_DSNS = 64  # distinct DSNs remembered (rules name them literally: few)


def dsn_problems(options: dict[str, Any], key: str = "dsn") -> list[str]:
    """What is wrong with a DSN option, checked without a server (parse, parameters)."""
    value = options.get(key)
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        return [f"{key} must not hold a template (a queue and a gate check per database)"]
    try:
        dsn = parse_dsn(value) if isinstance(value, str) else None
    except ConfigError as exc:
        return [f"{key}: {exc}"]
    if dsn is None:
        return [f"{key} is required"]
    if dsn.password is not None and options.get("password_file"):
        return [f"give the password in {key} or password_file, not both"]
    return []


def table_problems(table: object) -> list[str]:
    """What is wrong with a table option."""
    if isinstance(table, str) and table in _GOOD_TABLES:
        return []
    if isinstance(table, str) and ("{{" in table or "{%" in table):
        return ["table must not hold a template"]
    problem = check_identifier(table, "table")
    if problem is None and isinstance(table, str) and len(_GOOD_TABLES) < 256:
        _GOOD_TABLES.add(table)  # names come from rules, literally: few; checked once each
    return [problem] if problem else []


_GOOD_TABLES: set[str] = set()


class Links:
    """DSNs parsed once and one connection per queue, for one kind."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._dsns: dict[tuple[str, str], Dsn] = {}
        self._conns: dict[str, tuple[Dsn, psycopg.Connection[Any]]] = {}
        self._lock = threading.Lock()

    def dsn(self, options: dict[str, Any], key: str = "dsn") -> Dsn:
        """The options' DSN with its password; PermanentActionError if it cannot be used."""
        text, password_file = str(options.get(key, "")), str(options.get("password_file") or "")
        cached = self._dsns.get((text, password_file))
        if cached is not None:
            return cached
        try:
            dsn = parse_dsn(text)
            if password_file:
                dsn = dsn.with_password(read_password_file(password_file))
        except ConfigError as exc:
            raise PermanentActionError(f"postgres: {exc}") from None
        with self._lock:
            if len(self._dsns) < MAX_DSNS:
                self._dsns[(text, password_file)] = dsn
        return dsn

    def outbound(self, kind: str, dsn: Dsn, table: str, verb: str,
                 body: bytes | None = None) -> Outbound:
        """The write under the gate's `postgres` policy: the server's host and port, the
        database and table in the path; credentials when a password goes with it."""
        address = Address("postgresql", dsn.address.host, dsn.address.port,
                          f"/{dsn.database}/{table}")
        return Outbound(kind=kind, policy="postgres", calls=(Call(
            verb, address, body=body, credentials=dsn.password is not None),),
            facts={"sslmode": dsn.sslmode})

    def connection(self, target: str, dsn: Dsn, address: Address) -> psycopg.Connection[Any]:
        """The queue's connection to exactly `address` (what the gate admitted)."""
        if (address.host, address.port, address.path.split("/")[1]) != \
                (dsn.address.host, dsn.address.port, dsn.database):
            raise PermanentActionError("postgres: the write's address is not its DSN's")
        with self._lock:
            held = self._conns.get(target)
        if held is not None:
            if held[0] == dsn and not held[1].closed:
                return held[1]
            self.drop(target)
        conn = connect(dsn, self.timeout)
        with self._lock:
            self._conns[target] = (dsn, conn)
        return conn

    def failed(self, target: str, dsn: Dsn, exc: BaseException) -> ActionError:
        """A failure of the queue's connection: classified; the connection is dropped when
        it may be broken (anything but an error in one statement's data)."""
        error = exc if isinstance(exc, ActionError) else classify(exc, dsn)
        if not isinstance(error, PermanentActionError):
            self.drop(target)
        else:
            held = self._conns.get(target)
            if held is not None and not held[1].closed:
                try:
                    held[1].rollback()
                except Exception:  # noqa: BLE001 - a broken one is made again
                    self.drop(target)
        return error

    def drop(self, target: str) -> None:
        """Close and forget the queue's connection."""
        with self._lock:
            held = self._conns.pop(target, None)
        if held is not None:
            try:
                held[1].close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            targets = list(self._conns)
        for target in targets:
            self.drop(target)


def preflight(links: Links, checks: Iterable[tuple[dict[str, Any], str, tuple[str, ...]]],
              key: str = "dsn") -> None:
    """At start: each (options, table, columns) can be written; ConfigError naming the first
    that cannot. A server that does not answer is not an error (eventd starts and spools):
    it is logged, and the table is checked by the first write."""
    from eventd.actions.pgtables import check

    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for options, table, columns in checks:
        marker = (str(options.get(key)), table, columns)
        if marker in seen:
            continue
        seen.add(marker)
        try:
            dsn = links.dsn(options, key)
        except PermanentActionError as exc:
            raise ConfigError(str(exc)) from None
        try:
            conn = connect(dsn, min(links.timeout, 5.0))
        except PermanentActionError as exc:
            raise ConfigError(str(exc)) from None
        except ActionError as exc:
            logger.warning("%s; starting anyway: its writes wait in the spool until it answers",
                           exc)
            continue
        try:
            problem = check(conn, table, columns)
        except Exception as exc:  # noqa: BLE001 - the server went away meanwhile
            logger.warning("%s; starting anyway", classify(exc, dsn))
            continue
        finally:
            conn.close()
        if problem is not None:
            raise ConfigError(f"postgres {dsn.where()}: {problem}")
