"""The tables eventd writes in PostgreSQL: their DDL (`eventd db migrate`) and the start check.

`eventd_events` holds what the `postgres` kind inserts by default (one row per job, `id` its
primary key, so a redelivered job is no second row); a rule's own `row:` names the columns of a
table of the user's, which must exist with them and a unique `id`. `eventd_audit` holds the
audit trail: one row per record, its canonical JSON in `record` exactly as hashed, `hash` its
SHA-256, `seq` its place in the chain, `id` the job's (unique: a redelivered record is written
once). `check` says in one sentence what is missing; eventd exits 2 on it at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

EVENTS_TABLE = "eventd_events"
AUDIT_TABLE = "eventd_audit"
#: the default row of the `postgres` kind: the event and the rule's decision
EVENT_COLUMNS = ("id", "rule", "event_type", "event", "matched_at")
AUDIT_COLUMNS = ("seq", "id", "record", "hash")


def events_ddl(table: str) -> str:
    """CREATE TABLE of the `postgres` kind's default table."""
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n"
            "    id text PRIMARY KEY,\n"
            "    rule text NOT NULL,\n"
            "    event_type text,\n"
            "    event jsonb NOT NULL,\n"
            "    matched_at timestamptz NOT NULL,\n"
            "    inserted_at timestamptz NOT NULL DEFAULT now()\n"
            ")")


def audit_ddl(table: str) -> str:
    """CREATE TABLE of the audit trail."""
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n"
            "    seq bigint PRIMARY KEY,\n"
            "    id text NOT NULL UNIQUE,\n"
            "    record text NOT NULL,\n"
            "    hash text NOT NULL,\n"
            "    written_at timestamptz NOT NULL DEFAULT now()\n"
            ")")


def migrate(conn: psycopg.Connection[Any], events: str | None, audit: str | None) -> list[str]:
    """Create the tables (those not None) if missing, in one transaction; what was done."""
    from eventd.clients.postgres import table_columns

    done = []
    with conn.transaction():
        for table, ddl in ((events, events_ddl), (audit, audit_ddl)):
            if table is None:
                continue
            existed = table_columns(conn, table) is not None
            conn.execute(ddl(table).encode())
            problem = check(conn, table, EVENT_COLUMNS if ddl is events_ddl else AUDIT_COLUMNS)
            if problem is not None:
                raise ValueError(problem)
            done.append(f"{table}: {'already there' if existed else 'created'}")
    conn.commit()
    return done


def check(conn: psycopg.Connection[Any], table: str, columns: Iterable[str]) -> str | None:
    """One sentence if `table` cannot take rows of these columns with `ON CONFLICT (id)`."""
    from eventd.clients.postgres import table_columns, unique_on

    found = table_columns(conn, table)
    if found is None:
        return f"table {table} does not exist (create it: eventd db migrate DSN)"
    missing = [column for column in columns if column not in found]
    if missing:
        return (f"table {table} has no column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (it has {', '.join(found)})")
    if not unique_on(conn, table, "id"):
        return f"table {table} has no primary key or unique index on id alone (ON CONFLICT needs one)"
    return None
