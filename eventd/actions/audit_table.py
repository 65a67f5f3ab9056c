"""The audit trail in a PostgreSQL table (`audit: {postgres: DSN}`), chained like the file.

Each batch is one transaction under an advisory lock on the table, so that replicas sharing
it never chain two records to the same one: the lock taken, the table's last record is the
head, the batch's records are chained to it and inserted, then committed. A job's id is
unique in the table: a redelivered record (the spool is at-least-once) is not written twice.
The head is saved in the state after each commit; the first write of a process checks that
the table still holds it (eventd.actions.chain says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eventd.actions import chain
from eventd.actions.chain import Head, Heads
from eventd.actions.pglinks import Links
from eventd.clients.postgres import Dsn, classify, connect, parse_dsn, read_password_file
from eventd.outbound import Address

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

SAVE_INTERVAL = 0.5


def trail_name(dsn: Dsn, table: str) -> str:
    """The trail's name in the state's heads (no password)."""
    return f"postgres:{dsn.where()}/{table}"


class AuditTable:
    """Writes chained records to audit tables, one connection per queue."""

    def __init__(self, links: Links, heads: Heads, on_repair: Callable[[str], None]) -> None:
        self.links = links
        self.heads = heads
        self._on_repair = on_repair
        self._checked: set[str] = set()
        self._saved_at: dict[str, float] = {}
        self._unsaved: dict[str, Head] = {}

    def write(self, target: str, dsn: Dsn, address: Address, table: str,
              items: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Chain and insert `(job id, record)` pairs in one transaction; a result each.
        Raises psycopg's errors (the caller classifies them)."""
        conn = self.links.connection(target, dsn, address)
        trail = trail_name(dsn, table)
        ids = [job_id for job_id, _ in items]
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"eventd-audit:{table}"])
            there = {row[0] for row in cursor.execute(
                f"SELECT id FROM {table} WHERE id = ANY(%s)".encode(), [ids]).fetchall()}
            row = cursor.execute(
                f"SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1".encode()).fetchone()
            head = Head(int(row[0]), str(row[1])) if row is not None else Head()
            if trail not in self._checked:
                head = self._check(cursor, table, trail, head)
            rows, results = [], []
            for job_id, record in items:
                if job_id in there:
                    results.append(f"{table}: already there")
                    continue
                record["id"] = job_id
                line, head = chain.chained(head, record)
                rows.append((head.seq, job_id, line.decode(), head.hash))
                results.append(f"{table}: seq {head.seq}")
            if rows:
                cursor.executemany(
                    f"INSERT INTO {table} (seq, id, record, hash) VALUES (%s, %s, %s, %s)".encode(),
                    rows)
        conn.commit()
        self._checked.add(trail)
        if rows:
            self._unsaved[trail] = head
            if time.monotonic() - self._saved_at.get(trail, 0.0) >= SAVE_INTERVAL:
                self.save_heads()
        return results

    def save_heads(self) -> None:
        """Keep the heads committed since the last save in the state (the queue ran empty,
        eventd stops, or half a second passed)."""
        while self._unsaved:
            trail, head = self._unsaved.popitem()
            self._saved_at[trail] = time.monotonic()
            try:
                self.heads.save(trail, head)
            except OSError as exc:
                logger.error("audit %s: the chain head cannot be saved: %s", trail, exc)

    def _check(self, cursor: psycopg.Cursor[Any], table: str, trail: str, head: Head) -> Head:
        """The first write of this process: the saved head must still be in the table."""
        saved = self.heads.head(trail)
        if saved is None or saved.seq == 0:
            return head
        if head.seq < saved.seq:
            self._repaired("cut", f"audit {trail}: the table ends at seq {head.seq}, before the "
                                  f"record eventd last wrote (seq {saved.seq}): rows were deleted; "
                                  "the chain continues from that record, so the gap stays visible")
            return saved
        row = cursor.execute(f"SELECT hash, record FROM {table} WHERE seq = %s".encode(),
                             [saved.seq]).fetchone()
        if row is None or row[0] != saved.hash or chain.digest(str(row[1]).encode()) != saved.hash:
            self._repaired("changed", f"audit {trail}: record {saved.seq} is not the one eventd "
                                      "wrote: changed while eventd was not writing")
            if head.seq == saved.seq:
                return saved
        return head

    def _repaired(self, reason: str, message: str) -> None:
        logger.error("%s", message)
        self._on_repair(reason)


def walk_table(dsn_text: str, table: str, password_file: str | None,
               saved_for: Any) -> tuple[chain.Walk, str]:
    """Walk a table trail in seq order (ConfigError, ActionError if it cannot be read)."""
    from eventd.actions.pglinks import table_problems
    from eventd.errors import ConfigError

    dsn = parse_dsn(dsn_text)
    if password_file:
        dsn = dsn.with_password(read_password_file(password_file))
    problems = table_problems(table)
    if problems:
        raise ConfigError(problems[0])
    name = trail_name(dsn, table)
    walker = chain.Walker(saved_for(name))
    conn = connect(dsn)
    try:
        with conn.cursor(name="eventd_audit_verify") as cursor:
            cursor.itersize = 2000
            cursor.execute(f"SELECT seq, id, record, hash FROM {table} ORDER BY seq".encode())
            for seq, job_id, record, stored_hash in cursor:
                where = f"{table} seq {seq}"
                line = str(record).encode()
                parsed = chain.parse(line)
                if stored_hash != chain.digest(line):
                    walker.walk.finding = chain.Finding(
                        where, "changed: its record does not hash to its hash column")
                elif parsed is None or parsed.get("seq") != seq or parsed.get("id") != job_id:
                    walker.walk.finding = chain.Finding(
                        where, "changed: its seq or id columns are not its record's")
                if walker.done:
                    break
                walker.feed(where, line)
                if walker.done:
                    break
    except Exception as exc:  # noqa: BLE001 - psycopg's, named without the DSN
        raise classify(exc, dsn) from None
    finally:
        conn.close()
    return walker.finish(), name
