"""The audit trail's hash chain, as an auditor meets it: `eventd audit verify` on files and
tables that were edited, cut, extended; a chain that survives rotation, restarts and a SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.actions.audit import AuditAction
from eventd.actions.chain import GENESIS, Heads, canonical, digest, trail_files, walk_lines
from eventd.actions.pgtables import audit_ddl
from eventd.cli import main
from eventd.delivery.dispatcher import Dispatcher
from eventd.stores.sqlite import SqliteStore
from tests.actions import EVENT, attempt, make_context, make_job, sample
from tests.daemon_helpers import emulator_env, eventd_process, free_port, write_rules
from tests.postgres_server import query
from tests.waiting import wait_until


def write_records(metrics, tmp_path, count, path=None, **options):
    """`count` audit records through a fresh AuditAction whose state is tmp_path/state."""
    path = path or tmp_path / "audit.jsonl"
    (tmp_path / "state").mkdir(exist_ok=True)
    action = AuditAction(make_context(metrics, state_dir=tmp_path / "state"))
    try:
        for n in range(count):
            job = make_job(action, {"path": str(path), **options},
                           event=dict(EVENT, uuid=f"u-{n:04d}"))
            attempt(action, job)
    finally:
        action.close()
    return path


def verify(capsys, *args):
    code = main(["audit", "verify", *map(str, args)])
    out = capsys.readouterr().out
    return code, out


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


def test_a_clean_trail_prints_its_length_and_last_hash(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 30)
    code, out = verify(capsys, path)
    last = digest(lines_of(path)[-1].rstrip(b"\n"))
    assert code == 0
    assert out.strip() == f"{path} (1 file): whole: 30 records, last seq 30, last hash {last}"
    first = json.loads(lines_of(path)[0])
    assert first["seq"] == 1 and first["prev"] == GENESIS
    assert lines_of(path)[0].rstrip(b"\n") == canonical(first)  # the bytes are what is hashed


def test_an_edited_record_is_named(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 30)
    lines = lines_of(path)
    record = json.loads(lines[11])
    record["event"]["state"] = "Running"  # what an editor would hide
    lines[11] = canonical(record) + b"\n"
    path.write_bytes(b"".join(lines))
    code, out = verify(capsys, path)
    assert code == 1
    assert out.splitlines()[0] == (f"{path}:12: changed: record 12 is not the one record 13 "
                                   "was chained to")


def test_an_edit_that_breaks_the_canonical_form_is_named(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 5)
    lines = lines_of(path)
    lines[2] = json.dumps(json.loads(lines[2]), indent=1).replace("\n", " ").encode() + b"\n"
    path.write_bytes(b"".join(lines))
    code, out = verify(capsys, path)
    assert code == 1 and out.startswith(f"{path}:3: changed: the record is not in its canonical")


def test_a_removed_record_is_named(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 30)
    lines = lines_of(path)
    del lines[19:22]
    path.write_bytes(b"".join(lines))
    code, out = verify(capsys, path)
    assert code == 1
    assert out.splitlines()[0] == f"{path}:20: removed: 3 record(s) before this one (seq 20-22)"


def test_an_inserted_record_is_named(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 30)
    lines = lines_of(path)
    forged = json.loads(lines[9])
    forged.update(seq=11, prev=digest(lines[9].rstrip(b"\n")), event={"type": "forged"})
    lines.insert(10, canonical(forged) + b"\n")  # chained to record 10, as a forger would
    path.write_bytes(b"".join(lines))
    code, out = verify(capsys, path)
    assert code == 1
    assert out.splitlines()[0] == (f"{path}:11: inserted: the next record points past it, at "
                                   "the one before it")


def test_a_line_that_is_not_a_record_is_named(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 10)
    lines = lines_of(path)
    lines.insert(4, b"not json at all\n")
    path.write_bytes(b"".join(lines))
    code, out = verify(capsys, path)
    assert code == 1 and out.startswith(f"{path}:5: changed: not a record")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 18), st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_any_byte_edit_of_a_record_followed_by_another_is_found(index, offset, data):
    """Hypothesis: change any bytes of any record but the last (which only the saved head
    covers: --state-dir) and the walk fails."""
    lines = []
    prev = GENESIS
    for n in range(20):
        line = canonical({"seq": n + 1, "prev": prev, "event": {"n": n, "pad": "x" * 50}})
        lines.append(line)
        prev = digest(line)
    target = bytearray(lines[index])
    at = offset % len(target)
    edited = bytes(target[:at]) + data + bytes(target[at + len(data):])
    if edited == lines[index]:
        return
    lines[index] = edited.replace(b"\n", b" ")
    walk = walk_lines((f"f:{i + 1}", line) for i, line in enumerate(lines))
    assert walk.finding is not None


def test_the_chain_survives_rotation_and_a_rotated_file_removed_is_named(metrics, tmp_path,
                                                                         capsys):
    path = write_records(metrics, tmp_path, 120, rotate_bytes=8 * 1024, keep=10)
    files = trail_files(path)
    assert len(files) >= 4
    code, out = verify(capsys, path)
    assert code == 0 and "whole: 120 records, last seq 120" in out
    # Each rotated file starts with the last hash of the one before.
    first_of_newest = json.loads(lines_of(files[-1])[0])
    assert first_of_newest["prev"] == digest(lines_of(files[-2])[-1].rstrip(b"\n"))
    files[1].unlink()  # a whole rotated file taken away
    code, out = verify(capsys, path)
    assert code == 1 and "removed:" in out.splitlines()[0]


def test_a_restart_continues_the_chain(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 10)
    write_records(metrics, tmp_path, 10, path=path)  # a new AuditAction: a restart
    code, out = verify(capsys, path, "--state-dir", tmp_path / "state")
    assert code == 0 and "whole: 20 records, last seq 20" in out
    assert Heads(tmp_path / "state").head(str(path)).seq == 20


def test_a_torn_last_line_is_marked_and_the_chain_stays_whole(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 10)
    with open(path, "ab") as handle:  # what a kill in the middle of a write leaves
        handle.write(b'{"actions":[],"event":{"type":"cont')
    code, out = verify(capsys, path)
    assert code == 0 and out.startswith(f"note: {path}:11: a torn last line (35 bytes")
    write_records(metrics, tmp_path, 5, path=path)
    code, out = verify(capsys, path)
    assert code == 0 and "whole: 16 records, last seq 16" in out and "1 torn line(s)" in out
    marker = json.loads(lines_of(path)[11])
    assert marker["torn"] == {"bytes": 35, "sha256": digest(b'{"actions":[],"event":{"type":"cont')}
    assert sample(metrics, "eventd_audit_chain_repairs_total", reason="torn") == 1


def test_records_cut_while_eventd_was_stopped_stay_visible(metrics, tmp_path, capsys):
    path = write_records(metrics, tmp_path, 20)
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:17]))  # the last 3 records removed while stopped
    code, out = verify(capsys, path, "--state-dir", tmp_path / "state")
    assert code == 1 and "removed: the trail ends at seq 17, but eventd had written seq 20" in out
    write_records(metrics, tmp_path, 2, path=path)  # eventd continues from its saved head
    code, out = verify(capsys, path)
    assert code == 1
    assert out.splitlines()[0] == f"{path}:18: removed: 3 record(s) before this one (seq 18-20)"
    assert sample(metrics, "eventd_audit_chain_repairs_total", reason="cut") == 1


def test_sigkill_during_a_burst_leaves_a_whole_chain(emulator, tmp_path, capsys):
    """eventd as a process, killed while it writes; restarted; the chain is whole."""
    path = tmp_path / "audit" / "trail.jsonl"
    rules = write_rules(tmp_path / "rules", f"""
        rules:
          - name: audit-all
            match: {{}}
            actions:
              - audit: {{path: "{path}", fsync: 50}}
        """)
    state = tmp_path / "state"
    port = free_port()
    args = ("run", "--rules", str(rules), "--state-dir", str(state),
            "--metrics-addr", f"127.0.0.1:{port}")

    def burst(count):
        for _ in range(count):
            emulator.emit_event(type="service", state="Running")

    def records():
        return len(path.read_bytes().splitlines()) if path.exists() else 0

    for _ in range(2):
        proc = eventd_process(*args, env=emulator_env(emulator))
        try:
            wait_until(lambda: emulator.connection_count >= 1, 30, 0.1, "eventd connected")
            goal = records() + 500
            burst(3000)
            wait_until(lambda goal=goal: records() >= goal, 30, 0.05, "records written")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=15)
        wait_until(lambda: emulator.connection_count == 0, 10, 0.1, "connection gone")
    proc = eventd_process(*args, env=emulator_env(emulator))
    try:
        wait_until(lambda: emulator.connection_count >= 1, 30, 0.1, "eventd connected")
        burst(10)
        last = records()
        wait_until(lambda: records() > last, 30, 0.05, "the third run writes")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    code, out = verify(capsys, path, "--state-dir", state)
    assert code == 0, out
    torn = int(re.search(r"(\d+) torn line\(s\) marked", out).group(1)) \
        if "torn line(s) marked" in out else 0
    # Every line is a record of one chain (seq 1, 2, ...), but for torn fragments, each
    # followed by the record that marks it.
    assert f"whole: {records() - torn} records, last seq {records() - torn}," in out


# -- the trail in a table ------------------------------------------------------------------------
def table_records(metrics, tmp_path, dsn, table, count, offset=0):
    store = SqliteStore(tmp_path / "spool")
    context = make_context(metrics, state_dir=tmp_path)
    action = AuditAction(context)
    dispatcher = Dispatcher(context, store, {"audit": action}, initial_wait=0.02, max_wait=0.1)
    dispatcher.start()
    try:
        for n in range(offset, offset + count):
            job = make_job(action, {"postgres": dsn, "table": table},
                           event=dict(EVENT, uuid=f"u-{n:04d}"), job_id=f"audit-{n:04d}")
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(30)
    finally:
        dispatcher.close(2)
        action.close()
        store.close()


def test_a_table_trail_is_chained_once_per_job_and_tampering_is_named(metrics, tmp_path,
                                                                      pg_table, capsys):
    dsn, table = pg_table
    query(dsn, audit_ddl(table))
    table_records(metrics, tmp_path, dsn, table, 40)
    table_records(metrics, tmp_path, dsn, table, 45)  # 40 redelivered (same ids), 5 new
    rows = query(dsn, f"SELECT seq, id FROM {table} ORDER BY seq")
    assert rows == [(n + 1, f"audit-{n:04d}") for n in range(45)]
    code, out = verify(capsys, dsn, "--table", table, "--state-dir", tmp_path)
    assert code == 0, out
    assert f"postgres:127.0.0.1:5432/test/{table}: whole: 45 records, last seq 45" in out

    # An edit of the record alone: its hash column no longer matches.
    query(dsn, f"UPDATE {table} SET record = replace(record, 'u-0009', 'u-9999') WHERE seq = 10")
    code, out = verify(capsys, dsn, "--table", table)
    assert code == 1 and out.startswith(f"{table} seq 10: changed: its record does not hash")
    # The same edit with the hash recomputed: the next record no longer points at it.
    record = query(dsn, f"SELECT record FROM {table} WHERE seq = 10")[0][0]
    query(dsn, f"UPDATE {table} SET hash = %s WHERE seq = 10", [digest(record.encode())])
    code, out = verify(capsys, dsn, "--table", table)
    assert code == 1
    assert out.startswith(f"{table} seq 10: changed: record 10 is not the one record 11")
    # A row deleted.
    query(dsn, f"DELETE FROM {table} WHERE seq BETWEEN 5 AND 12")
    code, out = verify(capsys, dsn, "--table", table)
    assert code == 1
    assert out.startswith(f"{table} seq 13: removed: 8 record(s) before this one (seq 5-12)")


def test_table_rows_deleted_at_the_end_while_eventd_was_away_stay_visible(metrics, tmp_path,
                                                                          pg_table, capsys):
    dsn, table = pg_table
    query(dsn, audit_ddl(table))
    table_records(metrics, tmp_path, dsn, table, 20)
    query(dsn, f"DELETE FROM {table} WHERE seq > 16")
    table_records(metrics, tmp_path, dsn, table, 3, offset=100)
    code, out = verify(capsys, dsn, "--table", table)
    assert code == 1
    assert out.startswith(f"{table} seq 21: removed: 4 record(s) before this one (seq 17-20)")
    assert sample(metrics, "eventd_audit_chain_repairs_total", reason="cut") == 1


def test_verify_names_a_trail_it_cannot_read(capsys, tmp_path):
    code = main(["audit", "verify", str(tmp_path / "nothing.jsonl")])
    assert code == 2
    code = main(["audit", "verify", "postgresql://u:pw-zz@127.0.0.1:1/test"])
    err = capsys.readouterr().err
    assert code == 2 and "127.0.0.1:1/test" in err and "pw-zz" not in err


def test_the_state_file_is_private(metrics, tmp_path):
    write_records(metrics, tmp_path, 3)
    mode = os.stat(tmp_path / "state" / "audit-chain.json").st_mode & 0o777
    assert mode == 0o600


@pytest.mark.parametrize("options", [
    {"path": "/x", "postgres": "postgresql://h/db"},
    {"postgres": "postgresql://h/db?host=elsewhere"},
    {"postgres": "postgresql://h/db", "table": "a;b"},
    {"postgres": "postgresql://h/db", "fsync": "always"},
    {"path": "/x", "table": "t"},
])
def test_audit_options_that_cannot_be_used_are_problems_at_check_time(options):
    assert AuditAction.validate(options)
