"""eventd as a process writing to PostgreSQL while the database goes away: down at start,
restarted mid-burst, eventd itself killed mid-burst; bad configuration in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from eventd.actions.pgtables import events_ddl
from eventd.stores.sqlite import SqliteStore
from tests.daemon_helpers import emulator_env, eventd_process, free_port, write_rules
from tests.postgres_server import PostgresServer, query
from tests.waiting import wait_until

BURST = 10_000


def rules_for(tmp_path, dsn, table):
    return write_rules(tmp_path / "rules", f"""
        rules:
          - name: to-postgres
            match: {{type: service}}
            actions:
              - postgres: {{dsn: "{dsn}", table: {table}}}
        """)


def readiness(port):
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except requests.ConnectionError:
        return 0, {}
    return answer.status_code, answer.json()


def metric(port, name, labels=""):
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def emit(emulator, count):
    return [emulator.emit_event(type="service", state="Running",
                                resource_uri="/api/app/v1/user/service/s1/", parents=[])["uuid"]
            for _ in range(count)]


def uuids(dsn, table, order="ctid"):
    return [row[0] for row in query(dsn, f"SELECT event->>'uuid' FROM {table} ORDER BY {order}")]


def count(dsn, table):
    return int(query(dsn, f"SELECT count(*) FROM {table}")[0][0])


def start(emulator, tmp_path, rules, port, state="state"):
    """eventd with its log in a file (a burst's lines would fill a pipe nobody reads yet)."""
    log = open(tmp_path / f"eventd-{port}-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1",
           **emulator_env(emulator)}
    proc = subprocess.Popen([sys.executable, "-m", "eventd", "run", "--rules", str(rules),
                             "--state-dir", str(tmp_path / state), "--metrics-addr",
                             f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=log, text=True)
    proc.log = log
    return proc


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    proc.log.seek(0)
    err = proc.log.read()
    proc.log.close()
    return out, err


def test_database_down_at_start_spools_says_so_and_delivers_in_order_when_back(emulator,
                                                                               tmp_path):
    with PostgresServer() as server:
        query(server.dsn, events_ddl("eventd_events"))
        server.stop()
        rules = rules_for(tmp_path, server.dsn, "eventd_events")
        port = free_port()
        eventd = start(emulator, tmp_path, rules, port)
        try:
            wait_until(lambda: emulator.connection_count >= 1, 30, 0.1, "eventd connected")
            sent = emit(emulator, 300)
            target = f"postgres:127.0.0.1:{server.port}/test/eventd_events"
            status, body = wait_until(lambda: (lambda r: r if "targets" in r[1].get(
                "checks", {}) else None)(readiness(port)), 30, 0.2, "/readyz names the target")
            assert body["checks"]["targets"] == f"down: {target}"
            assert status == 200  # ready: the rows wait in the spool
            wait_until(lambda: metric(port, "eventd_spool_pending") == 300, 30, 0.2,
                       "300 accepted into the spool")
            server.start()
            wait_until(lambda: count(server.dsn, "eventd_events") == 300, 90, 0.2,
                       "every spooled row written")
            wait_until(lambda: "targets" not in readiness(port)[1]["checks"], 30, 0.2,
                       "/readyz no longer names it")
            assert uuids(server.dsn, "eventd_events") == sent  # in order, each once by id
        finally:
            out, err = stop(eventd)
        assert eventd.returncode == 0, err
        assert "Traceback" not in err
        assert f"{server.port}/test: connection failed" in err  # the start check said so
        assert "starting anyway" in err


def test_database_restarted_mid_burst_loses_nothing_and_writes_each_job_once(emulator,
                                                                             tmp_path):
    with PostgresServer() as server:
        query(server.dsn, events_ddl("eventd_events"))
        rules = rules_for(tmp_path, server.dsn, "eventd_events")
        port = free_port()
        eventd = start(emulator, tmp_path, rules, port)
        try:
            wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready")
            sent = emit(emulator, BURST // 2)
            wait_until(lambda: count(server.dsn, "eventd_events") >= 1000, 60, 0.05,
                       "the burst is being written")
            server.restart("immediate")  # a crash: uncommitted batches are rolled back
            restarted_at = count(server.dsn, "eventd_events")
            sent += emit(emulator, BURST // 2)
            wait_until(lambda: count(server.dsn, "eventd_events") == BURST, 180, 0.2,
                       "all 10,000 rows")
        finally:
            out, err = stop(eventd)
        assert restarted_at < BURST  # the restart happened in the middle
        rows = query(server.dsn, "SELECT count(*), count(DISTINCT id), "
                                 "count(DISTINCT event->>'uuid') FROM eventd_events")
        assert rows == [(BURST, BURST, BURST)]
        assert set(uuids(server.dsn, "eventd_events")) == set(sent)
        assert eventd.returncode == 0, err


def spooled_uuids(state_dir):
    store = SqliteStore(state_dir)
    try:
        return {job.event["uuid"] for job in store.spool_iter()}
    finally:
        store.close()


def test_sigkill_of_eventd_mid_burst_loses_nothing_accepted_and_writes_each_once(
        emulator, tmp_path, pg_table):
    dsn, table = pg_table
    query(dsn, events_ddl(table))
    rules = rules_for(tmp_path, dsn, table)
    port = free_port()
    eventd = start(emulator, tmp_path, rules, port)
    try:
        wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready")
        sent = emit(emulator, BURST)
        # Every event accepted (a row, or in the spool), and rows still being written.
        wait_until(lambda: count(dsn, table) + metric(port, "eventd_spool_pending") >= BURST,
                   120, 0.05, "the whole burst accepted")
        at_kill = count(dsn, table)
    finally:
        stop(eventd, signal.SIGKILL)
    assert at_kill < BURST, "the burst was written before the kill: nothing was tested"
    accepted = set(uuids(dsn, table)) | spooled_uuids(tmp_path / "state")
    assert accepted == set(sent)  # nothing accepted was lost by the kill
    eventd = start(emulator, tmp_path, rules, port)
    try:
        wait_until(lambda: count(dsn, table) == BURST, 120, 0.2, "the spool delivered")
    finally:
        out, err = stop(eventd)
    rows = query(dsn, f"SELECT count(*), count(DISTINCT event->>'uuid') FROM {table}")
    assert rows == [(BURST, BURST)]
    assert eventd.returncode == 0, err


def test_bad_configuration_is_one_line(emulator, tmp_path, pg_table):
    dsn, table = pg_table
    # At `check` time, without a server: a DSN that does not parse, a name that needs quoting.
    rules = write_rules(tmp_path / "bad", """
        rules:
          - name: to-postgres
            match: {type: service}
            actions:
              - postgres: {dsn: "postgresql://db.example:5432/events?host=evil.example"}
              - postgres: {dsn: "postgresql://db.example/events", row: {"Bad Column": "x"}}
        """)
    check = eventd_process("check", str(rules), env={})
    out, err = check.communicate(timeout=60)
    problems = [line for line in (out + err).splitlines() if "rules.yaml:" in line]
    assert check.returncode == 1
    assert len(problems) == 2, out + err
    assert "the DSN parameter 'host' is not accepted" in problems[0]
    assert "column 'Bad Column' must be lower-case letters" in problems[1]
    # A column the table does not have needs the server: one line at start, exit 2.
    query(dsn, f"CREATE TABLE {table} (id text PRIMARY KEY, container text)")
    rules = write_rules(tmp_path / "cols", f"""
        rules:
          - name: to-postgres
            match: {{type: service}}
            actions:
              - postgres: {{dsn: "{dsn}", table: {table}, row: {{container: x, colour: y}}}}
        """)
    run = eventd_process("run", "--rules", str(rules), "--state-dir", str(tmp_path / "s"),
                         env=emulator_env(emulator))
    out, err = run.communicate(timeout=60)
    assert run.returncode == 2
    lines = [line for line in err.strip().splitlines() if "no EVENTD_JOB_KEY" not in line]
    assert lines == [f"eventd: postgres 127.0.0.1:5432/test: table {table} has no column colour "
                     "(it has id, container)"]
