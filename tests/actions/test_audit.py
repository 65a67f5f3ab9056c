"""The audit action: one JSON line per event, size rotation, fast, flushed when idle."""

from __future__ import annotations

import json
import time

from eventd.actions.audit import AuditAction
from eventd.actions.chain import GENESIS, file_lines, trail_files, walk_lines
from eventd.delivery.dispatcher import Dispatcher
from eventd.stores.sqlite import SqliteStore
from tests.actions import EVENT, attempt, make_context, make_job, sample


def audit_job(action, options, n):
    event = dict(EVENT, uuid=f"uuid-{n:06d}")
    return make_job(action, options, event=event, job_id=f"audit-{n}", context={
        "received_at": 1700000000.25, "rules": ["rule-a", "rule-b"],
        "actions": [{"rule": "rule-a", "kind": "webhook", "status": "accepted"}]})


def read_lines(paths):
    lines = []
    for path in paths:
        lines.extend(json.loads(line) for line in path.read_text().splitlines())
    return lines


def test_100k_events_rotate_and_keep_every_line_in_order(metrics, tmp_path):
    path = tmp_path / "audit" / "events.jsonl"
    context = make_context(metrics)
    action = AuditAction(context)
    store = SqliteStore(tmp_path / "state")
    dispatcher = Dispatcher(context, store, {"audit": action})
    dispatcher.start()
    options = {"path": str(path), "rotate_bytes": 12 * 1024 * 1024, "keep": 5}
    jobs = [audit_job(action, options, n) for n in range(100_000)]
    started = time.perf_counter()
    try:
        for job in jobs:
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(30)
        elapsed = time.perf_counter() - started
        files = [path.with_name(f"events.jsonl.{i}") for i in range(5, 0, -1)] + [path]
        existing = [f for f in files if f.exists()]
        lines = read_lines(existing)  # readable before close: flushed when the queue ran dry
    finally:
        dispatcher.close(5)
        action.close()
        store.close()
    print(f"audit: {len(jobs) / elapsed:,.0f} lines/s through the dispatcher")  # speed: bench
    assert len(existing) >= 3  # rotated at least twice
    assert all(f.stat().st_size <= 12 * 1024 * 1024 for f in existing)
    assert len(lines) == 100_000
    assert [line["event"]["uuid"] for line in lines] == [f"uuid-{n:06d}" for n in range(100_000)]
    assert lines[0] == {"received_at": "2023-11-14T22:13:20.250Z", "event": jobs[0].event,
                        "rules": ["rule-a", "rule-b"],
                        "actions": [{"rule": "rule-a", "kind": "webhook", "status": "accepted"}],
                        "seq": 1, "prev": GENESIS}
    # One chain across the rotations: each file starts with the last hash of the one before.
    walk = walk_lines(file_lines(trail_files(path)))
    assert walk.finding is None and walk.records == 100_000 and walk.first_prev == GENESIS
    assert [line["seq"] for line in lines] == list(range(1, 100_001))
    assert sample(metrics, "eventd_actions_total", kind="audit", outcome="success") == 100_000
    assert store_is_empty(tmp_path / "state")


def store_is_empty(state_dir):
    store = SqliteStore(state_dir)
    try:
        return store.spool_count() == 0  # audit is not spooled: the file is the record
    finally:
        store.close()


def test_rotation_keeps_at_most_keep_files(metrics, tmp_path):
    path = tmp_path / "a.jsonl"
    action = AuditAction(make_context(metrics))
    options = {"path": str(path), "rotate_bytes": 2000, "keep": 2, "fsync": "always"}
    try:
        for n in range(40):
            attempt(action, audit_job(action, options, n))
    finally:
        action.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    newest = read_lines([path.with_name("a.jsonl.2"), path.with_name("a.jsonl.1"), path])
    uuids = [line["event"]["uuid"] for line in newest]
    assert uuids == [f"uuid-{n:06d}" for n in range(40 - len(uuids), 40)]


def test_appends_to_an_existing_file_and_fsync_always_writes_through(metrics, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"old": true}\n')
    action = AuditAction(make_context(metrics))
    try:
        attempt(action, audit_job(action, {"path": str(path), "fsync": "always"}, 1))
        lines = path.read_text().splitlines()  # on disk before any flush or close
    finally:
        action.close()
    assert lines[0] == '{"old": true}' and json.loads(lines[1])["event"]["uuid"] == "uuid-000001"


def test_validate():
    v = AuditAction.validate
    assert v({"path": "/var/log/eventd/audit.jsonl"}) == []
    assert v({"path": "x", "fsync": "always", "rotate_bytes": 10, "keep": 0}) == []
    assert v({}) == ["path is required"]
    assert v({"path": "x", "fsync": "sometimes"}) != []
    assert v({"path": "x", "rotate_bytes": 0}) != []


def test_a_rendered_path_cannot_climb_out_of_its_directory(metrics, tmp_path):
    import pytest

    from eventd.errors import PermanentActionError

    action = AuditAction(make_context(metrics))
    base = tmp_path / "audit"
    try:
        with pytest.raises(PermanentActionError, match="must not hold '..'"):
            attempt(action, audit_job(action, {"path": f"{base}/../../etc/evil.jsonl"}, 1))
    finally:
        action.close()
    assert list(tmp_path.iterdir()) == []  # nothing created anywhere
    assert AuditAction.validate({"path": "/var/log/../x"}) != []


def test_open_audit_files_and_lanes_stay_bounded_with_many_distinct_paths(metrics, tmp_path):
    import threading

    from tests.waiting import wait_until

    context = make_context(metrics)
    action = AuditAction(context, max_open=2)
    store = SqliteStore(tmp_path / "state")
    dispatcher = Dispatcher(context, store, {"audit": action}, max_lanes=3)
    dispatcher.start()
    paths = [tmp_path / "audit" / f"tenant-{n}.jsonl" for n in range(10)]
    try:
        for round_ in range(2):
            for n, path in enumerate(paths):
                assert dispatcher.submit(audit_job(action, {"path": str(path)}, round_ * 10 + n))
                assert dispatcher.wait_idle(5)
                assert action.open_files() <= 2
        assert dispatcher.lane_count() <= 3
        wait_until(lambda: len([t for t in threading.enumerate()
                                if t.name.startswith("dispatch-audit:")]) <= 3, 5,
                   message="the workers of closed lanes exited")
    finally:
        dispatcher.close(5)
        action.close()
        store.close()
    for n, path in enumerate(paths):  # nothing lost by closing and reopening
        assert [line["event"]["uuid"] for line in read_lines([path])] == \
            [f"uuid-{n:06d}", f"uuid-{10 + n:06d}"]


def test_iso_ms_writes_what_datetime_writes() -> None:
    """The per-second cache of iso_ms against datetime itself: rounding to the microsecond
    (half to even), the carry into the next second, the cut to milliseconds."""
    import datetime as dt
    import random

    from eventd.actions.audit import iso_ms

    def reference(ts: float) -> str:
        text = dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")
        return text[:-6] + "Z"

    rng = random.Random(26)
    stamps = [0.0, 0.0005, 0.9995, 0.9999995, 0.9999994999, 1.0000005, 59.9999996,
              86399.9999996, 951782399.9999999, 1464776102.0, 1464776102.0004999,
              1464776102.9999995, 1.5e9 + 0.1234565, 253402300799.999, 1e-7, 4102444800.5]
    stamps += [rng.uniform(0, 4.2e9) for _ in range(10_000)]
    stamps += [1.7e9 + rng.randrange(10**6) / 10**6 + rng.choice((0.0, 5e-7, -5e-7))
               for _ in range(10_000)]
    for ts in stamps + sorted(stamps[:500]):  # in order too: the cached second is reused
        assert iso_ms(ts) == reference(ts), ts


def test_audit_never_writes_through_a_symlink_or_to_a_non_regular_file(metrics, tmp_path):
    """Issue 20 finding 10: a link in a writable directory made a root eventd append to and
    chmod another file."""
    import os

    import pytest

    from eventd.errors import PermanentActionError

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    base = tmp_path / "shared"
    base.mkdir()
    (base / "link.jsonl").symlink_to(victim)
    os.mkfifo(base / "fifo.jsonl")
    action = AuditAction(make_context(metrics))
    try:
        for n, name in enumerate(("link.jsonl", "fifo.jsonl")):
            with pytest.raises(PermanentActionError, match="symbolic link|not a regular file"):
                attempt(action, audit_job(action, {"path": str(base / name)}, n))
    finally:
        action.close()
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_mode & 0o777 == 0o644


def test_audit_directories_it_creates_are_0700(metrics, tmp_path):
    import os

    old = os.umask(0o022)
    action = AuditAction(make_context(metrics))
    try:
        path = tmp_path / "new" / "deeper" / "audit.jsonl"
        attempt(action, audit_job(action, {"path": str(path)}, 1))
    finally:
        action.close()
        os.umask(old)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "deeper").stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
