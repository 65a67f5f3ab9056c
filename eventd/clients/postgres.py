"""PostgreSQL through psycopg 3: DSNs parsed once, connections, tables checked, failures named.

A DSN is a `postgresql://user:password@host:port/database?sslmode=...` URL with one host.
It is parsed here, strictly, by the same parser the gate reads addresses with
(`eventd.outbound.parse_url`), and a connection is made from its parts as keyword arguments,
never from the string: a `?host=` or `?hostaddr=` in the query would send libpq elsewhere than
the host the gate admitted, so only the parameters in `PARAMS` are accepted. The password is
kept apart (`Dsn.password`, from the URL's user info or a `password_file`) and never appears
in `str(dsn)`, a message or a metric.

psycopg is imported only inside functions: a daemon without PostgreSQL never loads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from eventd.errors import ActionError, ConfigError, PermanentActionError, RetryableActionError
from eventd.outbound import Address, BadAddress, parse_url

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql", "postgres")
#: connection parameters a DSN may carry in its query (libpq's names); the rest are refused
PARAMS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "connect_timeout",
                    "application_name", "target_session_attrs", "sslcompression"})
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: sslmode values that never send anything in clear
ENCRYPTED = frozenset({"require", "verify-ca", "verify-full"})
DEFAULT_TIMEOUT = 10.0
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Dsn:
    """A parsed DSN: where to connect (`address`), as whom, with which parameters."""

    address: Address  # scheme postgresql, host, port, path `/<database>`
    database: str
    user: str
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = ()

    @property
    def sslmode(self) -> str:
        """libpq's sslmode (its default, `prefer`, may fall back to clear text)."""
        return dict(self.params).get("sslmode", "prefer")

    @property
    def encrypted(self) -> bool:
        """Whether libpq will refuse to talk in clear text."""
        return self.sslmode in ENCRYPTED

    def with_password(self, password: str | None) -> Dsn:
        """The same DSN with this password (a `password_file`'s)."""
        return Dsn(self.address, self.database, self.user, password, self.params)

    def where(self) -> str:
        """`host:port/database`: what logs, queue names and readiness may show."""
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"{host}:{self.address.port}/{self.database}"

    def __str__(self) -> str:
        return f"postgresql://{self.user + '@' if self.user else ''}{self.where()}"

    def connect_kwargs(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """psycopg.connect's keyword arguments: the admitted parts, nothing read from a string."""
        kwargs: dict[str, Any] = dict(self.params)
        kwargs.update(host=self.address.host, port=self.address.port, dbname=self.database,
                      user=self.user or None, password=self.password)
        kwargs.setdefault("connect_timeout", max(1, int(timeout)))
        # A server that goes silent mid-statement: the socket gives up after `timeout`.
        kwargs["tcp_user_timeout"] = int(timeout * 1000)
        kwargs["keepalives"] = 1
        kwargs["keepalives_idle"] = max(1, int(timeout))
        kwargs.setdefault("application_name", "eventd")
        return {key: value for key, value in kwargs.items() if value is not None}


def parse_dsn(text: str) -> Dsn:
    """A DSN URL as a Dsn; ConfigError naming what is wrong, never repeating the URL."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("the DSN is empty")
    if "://" not in text:
        raise ConfigError("the DSN must be a postgresql://user@host:port/database URL "
                          "(key=value strings are not accepted)")
    try:
        address, userinfo = parse_url(text, SCHEMES, fragment=False)
    except BadAddress as exc:
        raise ConfigError(f"the DSN does not parse: {exc}".replace("url", "DSN")) from None
    database = unquote(address.path.strip("/"))
    if not database or "/" in database:
        raise ConfigError("the DSN must name one database: postgresql://host:port/DATABASE")
    user, _, password = (userinfo or "").partition(":")
    params: list[tuple[str, str]] = []
    for key, value in parse_qsl(address.query, keep_blank_values=True, strict_parsing=False):
        if key not in PARAMS:
            raise ConfigError(f"the DSN parameter {key[:40]!r} is not accepted (accepted: "
                              f"{', '.join(sorted(PARAMS))})")
        if key == "sslmode" and value not in SSL_MODES:
            raise ConfigError(f"sslmode must be one of {', '.join(SSL_MODES)}")
        params.append((key, value))
    return Dsn(Address("postgresql", address.host, address.port, f"/{database}"), database,
               user, password if userinfo is not None and ":" in userinfo else None,
               tuple(params))


def read_password_file(path: str) -> str:
    """The password a `password_file` holds (whitespace around it dropped); ConfigError if it
    cannot be read, naming the path and never the content."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(64 * 1024 + 1)
    except OSError as exc:
        raise ConfigError(f"password_file: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > 64 * 1024:
        raise ConfigError(f"password_file: {path} is larger than 64 KiB")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"password_file: {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"password_file: {path} is empty")
    return value


def check_identifier(name: object, what: str) -> str | None:
    """A problem with a table or column name, or None: lower-case letters, digits and `_`
    (a table may be `schema.table`), so that it needs no quoting and reads the same in SQL."""
    if not isinstance(name, str) or not name:
        return f"{what} must be a name"
    parts = name.split(".") if what == "table" else [name]
    if len(parts) > 2 or not all(_IDENT.fullmatch(part) for part in parts):
        return (f"{what} {name[:80]!r} must be lower-case letters, digits and '_' (at most 63, "
                f"not starting with a digit){' or schema.table' if what == 'table' else ''}")
    return None


def connect(dsn: Dsn, timeout: float = DEFAULT_TIMEOUT) -> psycopg.Connection[Any]:
    """A connection (autocommit off); RetryableActionError or PermanentActionError if none."""
    import psycopg

    try:
        return psycopg.connect(**dsn.connect_kwargs(timeout))
    except psycopg.Error as exc:
        raise classify(exc, dsn) from None


#: SQLSTATE classes after which the same statement may work later: connection exceptions,
#: transaction rollbacks (serialization, deadlock), insufficient resources, operator
#: intervention (shutdown, crash recovery), system errors
_RETRYABLE_CLASSES = ("08", "40", "53", "57", "58")


def classify(exc: BaseException, dsn: Dsn | None = None) -> ActionError:
    """A psycopg error as RetryableActionError or PermanentActionError, in words that name the
    server (`host:port/database`), the SQLSTATE and PostgreSQL's own message, never the DSN."""
    import psycopg

    where = f"postgres {dsn.where()}" if dsn is not None else "postgres"
    sqlstate = getattr(exc, "sqlstate", None) or ""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    detail = _one_line(primary or str(exc) or type(exc).__name__)
    if dsn is not None and dsn.password:
        detail = detail.replace(dsn.password, "***")
    if sqlstate:
        detail = f"{detail} (SQLSTATE {sqlstate})"
    message = f"{where}: {detail}"
    if not sqlstate and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        # A refused login names no SQLSTATE: a FATAL that is not the server starting,
        # stopping or full (a wrong password, no such database or role) will not pass later.
        if "FATAL:" in detail and not any(word in detail for word in _PASSING):
            return PermanentActionError(message, detail=detail)
        return RetryableActionError(message, detail=detail)
    if sqlstate[:2] in _RETRYABLE_CLASSES:
        return RetryableActionError(message, detail=detail)
    return PermanentActionError(message, detail=detail)


#: words of a FATAL at login that pass on their own
_PASSING = ("starting up", "shutting down", "recovery", "too many", "terminating",
            "remaining connection slots", "not yet accepting")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def table_columns(conn: psycopg.Connection[Any], table: str) -> dict[str, str] | None:
    """The table's columns and their types, or None when it does not exist."""
    schema, _, name = table.rpartition(".")
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum", [f"{schema or 'public'}.{name}"]).fetchall()
    return {str(column): str(kind) for column, kind in rows} or None


def unique_on(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    """Whether a unique index (or the primary key) holds on exactly `column` (ON CONFLICT
    needs one)."""
    schema, _, name = table.rpartition(".")
    row = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s) AND i.indisunique "
        "AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = %s LIMIT 1",
        [f"{schema or 'public'}.{name}", column]).fetchone()
    return row is not None
