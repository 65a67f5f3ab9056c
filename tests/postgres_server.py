"""PostgreSQL for tests: the machine's server (127.0.0.1:5432, db `test`) and servers a test starts.

- `shared_dsn()`: PG_DSN or postgresql://postgres@127.0.0.1:5432/test. When nothing answers
  there the test is skipped naming the package, or fails under CI=true.
- `pg_table` fixture: (dsn, a table name no other test uses); its tables are dropped after.
- `PostgresServer`: a private cluster (initdb, pg_ctl) on a free port in a temporary
  directory, trust authentication, that a test can stop, start and restart (`-m immediate`:
  a crash). As root, it runs as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import psycopg
import pytest

from tests.external import free_port
from tests.waiting import wait_until

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
INSTALL = "postgresql"


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: CI must run these tests, not skip them)", pytrace=False)
    pytest.skip(message)


def shared_dsn() -> str:
    """PG_DSN or the machine's server; skip (fail under CI=true) if it does not answer."""
    dsn = os.environ.get("PG_DSN") or DEFAULT_DSN
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error as exc:
        _unavailable(f"no PostgreSQL answers at {dsn.rpartition('@')[2]} ({type(exc).__name__}); "
                     f"start one (apt-get install {INSTALL}, database `test`, trust "
                     "authentication on 127.0.0.1) or set PG_DSN")
    return dsn


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh connection (autocommit); its rows, if any."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(sql.encode(), params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def pg_table() -> Iterator[tuple[str, str]]:
    """(dsn, table): a table name of this test's own; every table with its prefix is dropped
    afterwards."""
    dsn = shared_dsn()
    table = f"t_{secrets.token_hex(5)}"
    try:
        yield dsn, table
    finally:
        drop_prefixed(dsn, table)


def drop_prefixed(dsn: str, prefix: str) -> None:
    """Drop every table whose name starts with `prefix`."""
    names = [row[0] for row in query(
        dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE %s",
        [prefix + "%"])]
    for name in names:
        query(dsn, f"DROP TABLE IF EXISTS {name}")


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        _unavailable(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin; install "
                     f"with: apt-get install {INSTALL}")
    assert found is not None
    return found


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1:<free port>, database `test`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="eventd-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check)

    def init(self) -> Self:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                       "shared_buffers = 16MB\nmax_connections = 20\n")
        return self

    def start(self, timeout: float = 30.0) -> Self:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t",
                  str(int(timeout)), "start")
        if not self._has_test_db():
            self._run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                      "postgres", "test")
        return self

    def _has_test_db(self) -> bool:
        rows = query(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                     "SELECT 1 FROM pg_database WHERE datname = 'test'")
        return bool(rows)

    def stop(self, mode: str = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "immediate") -> None:
        """Stop (`immediate`: as a crash, no clean shutdown) and start again."""
        self.stop(mode)
        self.start()

    def ready(self) -> bool:
        try:
            psycopg.connect(self.dsn, connect_timeout=1).close()
            return True
        except psycopg.Error:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.init().start()
        wait_until(self.ready, 30, 0.1, "the private PostgreSQL answers")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
