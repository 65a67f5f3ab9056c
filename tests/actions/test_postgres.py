"""The `postgres` kind against the machine's PostgreSQL: rows, batches, one row per job id,
the gate's host policy, refused rows, the start check, DSNs that must not parse."""

from __future__ import annotations

import logging
import re
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.actions.pgtables import events_ddl
from eventd.actions.postgres import PostgresAction
from eventd.clients.postgres import parse_dsn
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.gate import GateRefused
from eventd.errors import ConfigError, PermanentActionError
from eventd.settings import Settings
from eventd.stores.sqlite import SqliteStore
from tests.actions import attempt, make_context, make_job, sample
from tests.postgres_server import query
from tests.waiting import wait_until


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "state")
    yield s
    s.close()


def context_with(metrics, settings):
    from eventd.actions.base import ActionContext

    return ActionContext(settings=settings, metrics=metrics)


def build(metrics, store, **kwargs):
    context = context_with(metrics, kwargs.pop("settings", Settings()))
    kind = PostgresAction(context)
    kwargs.setdefault("initial_wait", 0.02)
    kwargs.setdefault("max_wait", 0.1)
    dispatcher = Dispatcher(context, store, {"postgres": kind}, **kwargs)
    dispatcher.start()
    closing = dispatcher.close

    def close(timeout: float = 2) -> int:
        try:
            return closing(timeout)
        finally:
            kind.close()

    dispatcher.close = close  # type: ignore[method-assign]
    return dispatcher, kind


def event(n: int) -> dict:
    return {"type": "container", "action": "update", "state": "Stopped", "uuid": f"u-{n:05d}",
            "resource_uri": f"/api/app/v1/user/container/c{n}/", "n": n}


def test_rows_arrive_once_per_job_in_batches(metrics, store, pg_table):
    dsn, table = pg_table
    query(dsn, events_ddl(table))
    dispatcher, kind = build(metrics, store)
    options = {"dsn": dsn, "table": table}
    jobs = [make_job(kind, options, event=event(n), job_id=f"id-{n:05d}") for n in range(600)]
    try:
        for job in jobs:
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(30)
        # Delivered again (a restart that delivers the spool twice): no second row.
        again = [make_job(kind, options, event=event(n), job_id=f"id-{n:05d}") for n in range(50)]
        for job in again:
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(30)
    finally:
        dispatcher.close(2)
    rows = query(dsn, f"SELECT id, rule, event_type, event->>'uuid' FROM {table} ORDER BY id")
    assert rows == [(f"id-{n:05d}", "rule-a", "container", f"u-{n:05d}") for n in range(600)]
    assert sample(metrics, "eventd_actions_total", kind="postgres", outcome="success") == 650
    assert store.spool_count() == 0


def test_delivered_jobs_leave_the_spool_beside_the_lane_and_before_close_returns(
        metrics, store, pg_table):
    """A lane hands a batch's finished jobs to the spool's deleting thread and goes on: every
    job is delivered once (none paged in again while its row is still there), the idle wait
    returns only once their rows are gone, and a close right after the last delivery deletes
    what was still waiting."""
    dsn, table = pg_table
    query(dsn, events_ddl(table))
    dispatcher, kind = build(metrics, store, queue_size=64)
    options = {"dsn": dsn, "table": table}
    jobs = [make_job(kind, options, event=event(n), job_id=f"id-{n:05d}") for n in range(1500)]
    try:
        dispatcher.submit_many(jobs[:1000])
        assert dispatcher.wait_idle(60)
        assert store.spool_count() == 0
        dispatcher.submit_many(jobs[1000:])
        wait_until(lambda: sample(metrics, "eventd_actions_total", kind="postgres",
                                  outcome="success", default=0) >= 1500, 60)
    finally:
        assert dispatcher.close(10) == 0
    assert store.spool_count() == 0
    assert sample(metrics, "eventd_actions_total", kind="postgres", outcome="success") == 1500
    rows = query(dsn, f"SELECT count(*), count(DISTINCT id) FROM {table}")
    assert rows == [(1500, 1500)]


def test_a_templated_row_goes_to_the_users_columns(metrics, store, pg_table):
    dsn, table = pg_table
    query(dsn, f"CREATE TABLE {table} (id text PRIMARY KEY, container text, n integer, "
               "data jsonb, seen timestamptz DEFAULT now())")
    dispatcher, kind = build(metrics, store)
    options = {"dsn": dsn, "table": table,
               "row": {"container": "c-7", "n": "7", "data": {"state": "Stopped", "k": [1, 2]}}}
    try:
        assert dispatcher.submit(make_job(kind, options, job_id="one"))
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close(2)
    assert query(dsn, f"SELECT id, container, n, data FROM {table}") == [
        ("one", "c-7", 7, {"state": "Stopped", "k": [1, 2]})]


def test_a_row_the_column_refuses_is_the_only_dead_letter(metrics, store, pg_table):
    dsn, table = pg_table
    query(dsn, f"CREATE TABLE {table} (id text PRIMARY KEY, n integer)")
    dispatcher, kind = build(metrics, store)
    jobs = [make_job(kind, {"dsn": dsn, "table": table,
                            "row": {"n": "not a number" if n == 5 else str(n)}},
                     job_id=f"j{n:02d}") for n in range(10)]
    try:
        for job in jobs:
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(15)
    finally:
        dispatcher.close(2)
    assert [r[0] for r in query(dsn, f"SELECT n FROM {table} ORDER BY n")] == \
        [0, 1, 2, 3, 4, 6, 7, 8, 9]
    (dead,) = store.deadletter_list()
    assert dead.job.id == "j05"
    assert "invalid input syntax for type integer" in dead.reason
    assert "SQLSTATE 22P02" in dead.reason


def test_event_data_a_row_cannot_carry_is_a_dead_letter_not_a_retry_loop(metrics, store,
                                                                          pg_table):
    """A lone surrogate in a templated value or an integer past 64 bits in the event: each
    its own dead letter at once (before: an internal error, retried for ever), the rest
    written."""
    dsn, table = pg_table
    query(dsn, events_ddl(table))
    dispatcher, kind = build(metrics, store)
    options = {"dsn": dsn, "table": table}
    jobs = [make_job(kind, options, event={**event(1), "name": "\ud800"}, job_id="surrogate"),
            make_job(kind, options, event={**event(2), "n": 2 ** 64}, job_id="bigint"),
            make_job(kind, options, event=event(3), job_id="good")]
    try:
        for job in jobs:
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(15)
    finally:
        dispatcher.close(2)
    assert query(dsn, f"SELECT id FROM {table}") == [("good",)]
    reasons = {d.job.id: d.reason for d in store.deadletter_list()}
    assert reasons.keys() == {"surrogate", "bigint"}
    assert all("cannot be sent as JSON" in r for r in reasons.values())


def test_a_large_batch_goes_through_copy_with_the_same_outcomes(metrics, pg_table):
    """A batch of COPY_FROM rows or more is staged by COPY: typed columns (int, jsonb, a
    default), an id already in the table and one twice in the batch are one row each, and a
    refused value makes only its own row fail (the batch again, row by row)."""
    from eventd.actions.postgres import COPY_FROM

    dsn, table = pg_table
    query(dsn, f"CREATE TABLE {table} (id text PRIMARY KEY, n integer, data jsonb, "
               "seen timestamptz NOT NULL DEFAULT now())")
    query(dsn, f"INSERT INTO {table} (id, n) VALUES ('j00', -1)")
    kind = PostgresAction(make_context(metrics))
    count = COPY_FROM + 24

    def batch(bad: int | None) -> list:
        jobs = [make_job(kind, {"dsn": dsn, "table": table,
                                "row": {"n": "x" if n == bad else str(n), "data": {"n": [n]}}},
                         job_id=f"j{n:02d}") for n in range(count)]
        jobs.append(make_job(kind, jobs[3].options, job_id="j03"))  # twice in one batch
        return [(job, kind.prepare(job)) for job in jobs]

    try:
        clean = kind.send_batch(batch(None))
        assert all(isinstance(r, str) for r in clean)
        assert f"batch of {count + 1}, {count - 1} new" in clean[0]
        again = kind.send_batch(batch(None))  # delivered again: no row twice
        assert f"{0} new" in str(again[0])
        query(dsn, f"DELETE FROM {table} WHERE id <> 'j00'")
        mixed = kind.send_batch(batch(7))
    finally:
        kind.close()
    assert isinstance(mixed[7], PermanentActionError) and "SQLSTATE 22P02" in str(mixed[7])
    assert all(isinstance(r, str) for i, r in enumerate(mixed) if i != 7)
    rows = query(dsn, f"SELECT id, n, data FROM {table} ORDER BY id")
    assert rows == [("j00", -1, None)] + [(f"j{n:02d}", n, {"n": [n]})
                                         for n in range(1, count) if n != 7]


def test_a_role_without_the_temp_right_writes_large_batches_by_executemany(metrics):
    """COPY needs a temporary table: a role that may not make one still gets every row
    written (executemany), once, and not a batch refused or retried."""
    from eventd.actions.postgres import COPY_FROM
    from tests.postgres_server import shared_dsn

    admin = shared_dsn()
    name = f"notemp_{secrets.token_hex(4)}"
    query(admin, f"CREATE DATABASE {name}")
    try:
        query(admin, f"CREATE ROLE {name} LOGIN")
        query(admin, f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC")
        owner = admin.rsplit("/", 1)[0] + f"/{name}"
        query(owner, "CREATE TABLE t (id text PRIMARY KEY, n integer)")
        query(owner, f"GRANT INSERT, SELECT ON t TO {name}")
        dsn = re.sub(r"://[^@/]*@", f"://{name}@", owner)
        kind = PostgresAction(make_context(metrics))
        jobs = [make_job(kind, {"dsn": dsn, "table": "t", "row": {"n": str(n)}},
                         job_id=f"j{n:03d}") for n in range(COPY_FROM * 2)]
        try:
            results = kind.send_batch([(job, kind.prepare(job)) for job in jobs])
            again = kind.send_batch([(job, kind.prepare(job)) for job in jobs])
        finally:
            kind.close()
        assert all(isinstance(r, str) for r in results + again), results
        assert f"{COPY_FROM * 2} new" in results[0] and "0 new" in again[0]
        assert query(owner, "SELECT count(*) FROM t") == [(COPY_FROM * 2,)]
    finally:
        query(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        query(admin, f"DROP ROLE IF EXISTS {name}")


def test_a_missing_table_is_a_dead_letter_naming_it(metrics, store, pg_table):
    dsn, table = pg_table
    dispatcher, kind = build(metrics, store)
    try:
        assert dispatcher.submit(make_job(kind, {"dsn": dsn, "table": table}, job_id="x"))
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close(2)
    (dead,) = store.deadletter_list()
    assert f'relation "{table}" does not exist' in dead.reason


def test_the_gate_holds_the_host_and_the_password(metrics, pg_table):
    dsn, table = pg_table
    kind = PostgresAction(context_with(metrics, Settings(allow_hosts=("db.example",))))
    job = make_job(kind, {"dsn": dsn, "table": table})
    with pytest.raises(GateRefused, match="host '127.0.0.1' is not allowed by --allow-host"):
        attempt(kind, job)
    # A password in clear to another machine: refused before any connection is tried.
    remote = PostgresAction(make_context(metrics))
    job = make_job(remote, {"dsn": "postgresql://eventd:s3cret-pw@db.example:5432/events"})
    with pytest.raises(GateRefused) as refused:
        attempt(remote, job)
    assert "in clear to db.example:5432" in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)
    assert sample(metrics, "eventd_gate_refused_total", kind="postgres", reason="plaintext") == 1


@pytest.mark.parametrize(("dsn", "problem"), [
    ("postgresql://h/db?host=evil.example", "the DSN parameter 'host' is not accepted"),
    ("postgresql://h/db?hostaddr=10.0.0.1", "the DSN parameter 'hostaddr' is not accepted"),
    ("postgresql://h/db?passfile=/etc/shadow", "the DSN parameter 'passfile' is not accepted"),
    ("postgresql://a,b/db", "does not parse"),
    ("postgresql://h\\@evil/db", "does not parse"),
    ("postgresql://h:99999/db", "does not parse"),
    ("postgresql://h/", "must name one database"),
    ("host=h dbname=db", "must be a postgresql://"),
    ("mysql://h/db", "does not parse"),
    ("postgresql://h/db?sslmode=sometimes", "sslmode must be one of"),
    ("postgresql://{{ event.host }}/db", "must not hold a template"),
])
def test_dsns_that_cannot_be_used_are_one_problem_at_check_time(dsn, problem):
    problems = PostgresAction.validate({"dsn": dsn})
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize("options", [
    {"table": "events; DROP TABLE x"}, {"table": "Events"}, {"table": "{{ event.type }}"},
    {"row": {"a b": "x"}}, {"row": {"id": "x"}}, {"row": {"x\"); drop": "1"}},
])
def test_names_that_would_need_quoting_are_refused(options):
    assert PostgresAction.validate({"dsn": "postgresql://h/db", **options})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_dsn_text_is_a_dsn_or_a_config_error_that_never_echoes_it(text):
    """Hostile DSN strings: parsed, or one ConfigError that does not repeat a password."""
    secret = "pw-" + "x" * 12
    candidate = f"postgresql://u:{secret}@{text}"
    try:
        dsn = parse_dsn(candidate)
    except ConfigError as exc:
        assert secret not in str(exc)
    else:
        assert secret not in str(dsn) and secret not in dsn.where()
        assert "host" not in dict(dsn.params) and "hostaddr" not in dict(dsn.params)


def test_the_start_check_names_a_missing_table_or_column(metrics, pg_table):
    dsn, table = pg_table
    kind = PostgresAction(make_context(metrics))
    with pytest.raises(ConfigError, match=f"table {table} does not exist .create it: eventd db "
                                          "migrate DSN."):
        kind.preflight([{"dsn": dsn, "table": table}])
    query(dsn, f"CREATE TABLE {table} (id text PRIMARY KEY, container text)")
    with pytest.raises(ConfigError) as missing:
        kind.preflight([{"dsn": dsn, "table": table, "row": {"container": "x", "colour": "y"}}])
    assert str(missing.value) == (f"postgres 127.0.0.1:5432/test: table {table} has no column "
                                  "colour (it has id, container)")
    kind.preflight([{"dsn": dsn, "table": table, "row": {"container": "x"}}])  # fine


def test_the_start_check_lets_eventd_start_when_the_server_is_down(metrics, caplog):
    kind = PostgresAction(make_context(metrics))
    with caplog.at_level(logging.WARNING):
        kind.preflight([{"dsn": "postgresql://u:hidden-pw@127.0.0.1:1/test"}])
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("eventd")]
    assert "127.0.0.1:1/test" in line and "starting anyway" in line
    assert "hidden-pw" not in line
