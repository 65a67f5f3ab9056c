"""`eventd db migrate DSN`: create the PostgreSQL tables eventd writes, if they are missing.

`eventd_events` (the `postgres` kind's default row) and `eventd_audit` (the audit trail), in
one transaction; existing tables are checked, never changed. The DSN's password may be in the
URL or in `--password-file`; it is never printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO

from eventd.errors import ActionError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`db migrate DSN [--table T] [--audit-table T] [--password-file F]`."""
    parser.add_argument("db_command", choices=("migrate",), metavar="migrate",
                        help="create eventd's tables in a PostgreSQL database if missing")
    parser.add_argument("dsn", metavar="DSN",
                         help="postgresql://user[:password]@host:port/database[?sslmode=...]")
    parser.add_argument("--table", default="eventd_events", metavar="NAME",
                         help="the postgres kind's default table (default eventd_events)")
    parser.add_argument("--audit-table", default="eventd_audit", metavar="NAME",
                         help="the audit trail's table (default eventd_audit)")
    parser.add_argument("--only", choices=("events", "audit"), default=None,
                         help="create only one of the two")
    parser.add_argument("--password-file", metavar="FILE", default=None,
                         help="read the password from this file (Docker secrets, Kubernetes)")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """0 when the tables are there, 1 if the server refused or cannot be reached, 2 for a
    DSN or name that cannot be used."""
    from eventd.actions.pglinks import table_problems
    from eventd.actions.pgtables import migrate
    from eventd.clients.postgres import classify, connect, parse_dsn, read_password_file

    out = out or sys.stdout
    try:
        dsn = parse_dsn(args.dsn)
        if args.password_file:
            dsn = dsn.with_password(read_password_file(args.password_file))
        for name in (args.table, args.audit_table):
            problems = table_problems(name)
            if problems:
                raise ConfigError(problems[0])
    except ConfigError as exc:
        print(f"eventd db migrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        conn = connect(dsn)
    except ActionError as exc:
        print(f"eventd db migrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        done = migrate(conn, None if args.only == "audit" else args.table,
                       None if args.only == "events" else args.audit_table)
    except ValueError as exc:
        print(f"eventd db migrate: {dsn.where()}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - psycopg's errors, named without the DSN
        print(f"eventd db migrate: {classify(exc, dsn)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        conn.close()
    for line in done:
        print(f"{dsn.where()}: {line}", file=out)
    return EXIT_OK
