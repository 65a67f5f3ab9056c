"""The `postgres` action: one row per job in a table, `ON CONFLICT (id) DO NOTHING`.

The row is the event and the rule's decision (`eventd_events`: id, rule, event_type, event,
matched_at), or the columns a rule's `row:` renders into a table of the user's. `id` is always
the job's id, so a table holds one row per job however often it is delivered (a retry after
a commit whose answer was lost, a restart that delivers the spool again).

Durable like a webhook. Rows are written in batches: the dispatcher hands a queue's waiting
jobs over together (`batch_size`, `send_batch`), and they are inserted in one transaction.
Each job keeps its own outcome: a row PostgreSQL refuses (a value its column cannot take) is
found by writing that batch's rows one transaction each, and only it becomes a dead letter.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from eventd.actions.base import ActionContext, json_message
from eventd.actions.pglinks import Links, dsn_problems, preflight, table_problems
from eventd.actions.pgtables import EVENT_COLUMNS, EVENTS_TABLE
from eventd.clients.postgres import check_identifier
from eventd.errors import ActionError, PermanentActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

BATCH = 256  # most rows in one transaction (a durable queue keeps 256 jobs in memory)
COPY_FROM = 16  # rows of a batch from which COPY is cheaper than executemany
_NO_TEMP = ""  # marks a connection whose role may not make temporary tables
_UTC = _dt.timezone.utc


def sql_value(value: Any) -> str | None:
    """A rendered value as text PostgreSQL casts to the column's type (jsonb, int, ...)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json_message(value, "postgres").decode()


class PostgresAction:
    """Insert a row per job into a PostgreSQL table."""

    name: ClassVar[str] = "postgres"
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = False
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["dsn"],
        "additionalProperties": False,
        "properties": {
            "dsn": {"type": "string", "minLength": 1,
                    "description": "postgresql://user[:password]@host:port/database[?sslmode=...]"},
            "password_file": {"type": "string",
                              "description": "read the DSN's password from this file "
                                             "(empty: none)"},
            "table": {"type": "string", "default": EVENTS_TABLE},
            "row": {"type": "object", "minProperties": 1,
                    "description": "column -> value (templates); default: the event and the "
                                   "rule's decision"},
        },
    }

    def __init__(self, context: ActionContext) -> None:
        self.context = context
        self.links = Links()
        self._sql: dict[tuple[str, tuple[str, ...]], bytes] = {}
        #: the temporary tables each connection has (they live as long as it)
        self._staged: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """The DSN parses (one host, known parameters), table and column names are plain
        names. Whether the table has the columns needs the server: checked at start."""
        problems = dsn_problems(options)
        problems += table_problems(options.get("table", EVENTS_TABLE))
        row = options.get("row")
        if isinstance(row, dict):
            for column in row:
                problem = check_identifier(column, "column")
                if problem:
                    problems.append(f"row: {problem}")
                elif column == "id":
                    problems.append("row: id is the job's id, set by eventd (leave it out)")
        return problems

    def target(self, options: dict[str, Any]) -> str:
        """One queue per database and table."""
        try:
            where = self.links.dsn(options).where()
        except PermanentActionError:
            where = "invalid"
        return f"postgres:{where}/{options.get('table', EVENTS_TABLE)}"

    def describe(self, job: ActionJob) -> str:
        """host:port/database/table, never the password."""
        return self.target(job.options).partition(":")[2]

    def inactive(self, options: dict[str, Any]) -> bool:
        """A row is always written."""
        return False

    def flush(self) -> None:
        """Nothing buffered: every batch is committed before its jobs are done."""

    def batch_size(self, options: dict[str, Any]) -> int:
        """How many of a queue's jobs one transaction takes."""
        return BATCH

    def columns(self, options: dict[str, Any]) -> tuple[str, ...]:
        """The columns a job of these options writes."""
        row = options.get("row")
        return ("id", *row) if isinstance(row, dict) else EVENT_COLUMNS

    def preflight(self, options_list: list[dict[str, Any]]) -> None:
        """At start: every table the rules write to exists with their columns (ConfigError)."""
        preflight(self.links, ((options, str(options.get("table", EVENTS_TABLE)),
                                self.columns(options)) for options in options_list))

    def prepare(self, job: ActionJob) -> Outbound:
        """The insert: the database's address and table, the row's columns and values."""
        options = job.options
        dsn = self.links.dsn(options)
        table = str(options.get("table", EVENTS_TABLE))
        problems = table_problems(table)
        row = options.get("row")
        if isinstance(row, dict):
            columns = self.columns(options)
            values = [job.id, *(sql_value(row[c]) for c in columns[1:])]
        else:
            columns = EVENT_COLUMNS
            event = job.event
            values = [job.id, job.rule, sql_value(event.get("type")),
                      json_message(event, self.name).decode(),
                      _dt.datetime.fromtimestamp(job.created_at, _UTC).isoformat()]
        if problems:
            raise PermanentActionError(f"postgres: {'; '.join(problems)}")
        body = json_message([columns, values], self.name)  # also refuses a lone surrogate
        return self.links.outbound(self.name, dsn, table, "insert", body)

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """One row (the dispatcher batches through send_batch)."""
        result = self.send_batch([(job, outbound)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def send_batch(self, items: list[tuple[ActionJob, Outbound]]) -> list[str | ActionError]:
        """Insert every item's row in one transaction; each item's outcome in order.

        A failure of the connection or the server fails them all (RetryableActionError is
        raised); a row the server refuses makes the rows go one transaction each, so only
        the refused ones fail.
        """
        job, first = items[0]
        call = first.calls[0]
        dsn = self.links.dsn(job.options)
        target = job.target
        table = call.address.path.split("/", 2)[2]
        import psycopg

        rows = [orjson.loads(outbound.calls[0].body or b"[[], []]") for _, outbound in items]
        try:
            conn = self.links.connection(target, dsn, call.address)
            inserted = self._insert(conn, table, rows)
        except psycopg.Error as exc:
            error = self.links.failed(target, dsn, exc)
            if not isinstance(error, PermanentActionError) or len(items) == 1:
                raise error from None
        except ActionError:
            raise
        else:
            return [f"row in {dsn.where()}/{table} (batch of {len(rows)}, {inserted} new)"] \
                * len(items)
        return self._one_by_one(target, dsn, call, table, rows)

    def _one_by_one(self, target: str, dsn: Any, call: Any, table: str,
                    rows: list[Any]) -> list[str | ActionError]:
        """A batch PostgreSQL refused: each row in its own transaction."""
        import psycopg

        results: list[str | ActionError] = []
        for row in rows:
            try:
                conn = self.links.connection(target, dsn, call.address)
                inserted = self._insert(conn, table, [row])
            except psycopg.Error as exc:
                error = self.links.failed(target, dsn, exc)
                if not isinstance(error, PermanentActionError):
                    raise error from None
                results.append(error)
            else:
                results.append(f"row in {dsn.where()}/{table} ({'new' if inserted else 'there already'})")
        return results

    def _insert(self, conn: psycopg.Connection[Any], table: str, rows: list[Any]) -> int:
        """Insert the rows (grouped by their columns) and commit; how many were new. Many
        rows go through COPY into a temporary table and one INSERT ... SELECT ... ON CONFLICT
        (id) DO NOTHING (a fifth of executemany's CPU per row in this process, measured);
        a few, or one at a time, through executemany."""
        inserted = 0
        by_columns: dict[tuple[str, ...], list[list[Any]]] = {}
        for columns, values in rows:
            by_columns.setdefault(tuple(columns), []).append(values)
        staged = {columns: self._stage(conn, table, columns) for columns, values
                  in by_columns.items() if len(values) >= COPY_FROM}
        with conn.cursor() as cursor:
            for columns, values in by_columns.items():
                stage = staged.get(columns)  # None: executemany (few rows, or no TEMP right)
                if stage is None:
                    cursor.executemany(self._statement(table, columns), values)
                else:
                    with cursor.copy(stage[0]) as copy:
                        for row in values:
                            copy.write_row(row)
                    cursor.execute(stage[1])
                inserted += max(0, cursor.rowcount)
        conn.commit()  # the stage's rows go with it (ON COMMIT DELETE ROWS), or a rollback
        return inserted

    def _stage(self, conn: psycopg.Connection[Any], table: str,
               columns: tuple[str, ...]) -> tuple[bytes, bytes] | None:
        """The COPY into this connection's temporary table for these columns (made once per
        connection, committed apart, so that a failed batch does not take it away) and the
        INSERT ... SELECT from it; None when the role may not make temporary tables."""
        import psycopg

        statement = self._statement(table, columns)  # checks the names
        names = ", ".join(columns)
        stage = "eventd_stage_" + hashlib.sha256(
            f"{table} {names}".encode()).hexdigest()[:16]
        made = self._staged.setdefault(conn, set())
        if _NO_TEMP in made:
            return None
        if stage not in made:
            try:
                conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE "
                             f"ROWS AS SELECT {names} FROM {table} WITH NO DATA".encode())
            except psycopg.errors.InsufficientPrivilege:
                conn.rollback()
                made.add(_NO_TEMP)
                logger.info("postgres: no right to make temporary tables (TEMP) here: rows "
                            "go by executemany")
                return None
            conn.commit()
            made.add(stage)
        insert = statement.split(b" VALUES ")[0]
        return (f"COPY {stage} ({names}) FROM STDIN".encode(),
                insert + f" SELECT {names} FROM {stage} ON CONFLICT (id) DO NOTHING".encode())

    def _statement(self, table: str, columns: tuple[str, ...]) -> bytes:
        """INSERT ... ON CONFLICT (id) DO NOTHING; names checked to be plain identifiers."""
        key = (table, columns)
        sql = self._sql.get(key)
        if sql is None:
            for name in columns:
                if check_identifier(name, "column"):
                    raise PermanentActionError(f"postgres: column {name[:80]!r} is not a plain name")
            if check_identifier(table, "table"):
                raise PermanentActionError(f"postgres: table {table[:80]!r} is not a plain name")
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                   f"({', '.join(['%s'] * len(columns))}) ON CONFLICT (id) DO NOTHING").encode()
            if len(self._sql) < 256:
                self._sql[key] = sql
        return sql

    def close(self) -> None:
        """Close the connections."""
        self.links.close()


__all__ = ["BATCH", "PostgresAction", "sql_value"]
