"""The state directory as users meet it: one daemon per directory, a de-dup window that
survives SIGKILL, private files whatever the umask, one clear line for a bad --state-dir."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
from pathlib import Path

import pytest

from eventd.dedupe import DedupeWindow
from eventd.records import ActionJob
from eventd.stores.sqlite import DB_NAME, SqliteStore
from tests.daemon_helpers import emulator_env, eventd_process, free_port, is_ready, write_rules
from tests.waiting import wait_until


def hook_rules(url: str) -> str:
    return f"""
rules:
  - name: hook
    match: {{type: service}}
    actions:
      - webhook: {{url: "{url}/k", json: {{uuid: "{{{{ event.uuid }}}}"}}}}
"""


def service_event(emulator, **fields):
    return emulator.emit_event(type="service", state="Running",
                               resource_uri="/api/app/v1/user/service/s1/", parents=[], **fields)


def start(emulator, rules: Path, state: Path, *extra: str, **kwargs):
    port = free_port()
    proc = eventd_process("run", "--rules", str(rules), "--state-dir", str(state),
                          "--metrics-addr", f"127.0.0.1:{port}", *extra,
                          env=emulator_env(emulator), **kwargs)
    try:
        wait_until(lambda: is_ready(port) or proc.poll() is not None, 20, interval=0.05,
                   message="eventd ready")
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, proc.communicate(timeout=5)
    return proc, port


def stop(proc, sig=signal.SIGTERM) -> tuple[str, str]:
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=15)
    finally:
        proc.kill()


def test_a_second_daemon_on_a_state_dir_in_use_exits_2_naming_the_first(emulator,
                                                                        webhook_receiver,
                                                                        tmp_path):
    rules = write_rules(tmp_path / "rules", hook_rules(webhook_receiver.url))
    state = tmp_path / "state"
    first, _ = start(emulator, rules, state)
    try:
        second = eventd_process("run", "--rules", str(rules), "--state-dir", str(state),
                                env=emulator_env(emulator))
        out, err = second.communicate(timeout=30)
        assert second.returncode == 2, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            f"eventd: state directory {state} is in use by eventd (process {first.pid}); stop it "
            f"first, or give this one another --state-dir")
        # The running daemon did not notice: it still delivers.
        uuid = service_event(emulator)["uuid"]
        wait_until(lambda: [r.json()["uuid"] for r in webhook_receiver.requests] == [uuid], 10)
    finally:
        stop(first, signal.SIGKILL)
    # The kernel released the lock with the process: no stale lock to clean up by hand.
    third, _ = start(emulator, rules, state)
    _, err = stop(third)
    assert third.returncode == 0, err


def test_deadletter_retry_now_refuses_a_state_dir_a_daemon_delivers(emulator, webhook_receiver,
                                                                    tmp_path):
    rules = write_rules(tmp_path / "rules", hook_rules(webhook_receiver.url))
    state = tmp_path / "state"
    store = SqliteStore(state)
    store.deadletter_add(ActionJob(id="dead-1", rule="hook", kind="webhook",
                                   options={"url": f"{webhook_receiver.url}/k", "json": {}},
                                   event={"uuid": "u"}, target="webhook:x", created_at=1.0),
                         "HTTP 400")
    store.close()
    daemon, _ = start(emulator, rules, state)
    try:
        env = emulator_env(emulator)
        now = eventd_process("deadletter", "retry", "--now", "--state-dir", str(state), env=env)
        out, err = now.communicate(timeout=30)
        assert now.returncode == 2, out + err
        assert f"is in use by eventd (process {daemon.pid})" in err
        # Nothing was moved, and looking works beside the daemon.
        listed = eventd_process("deadletter", "list", "--state-dir", str(state), env=env)
        out, err = listed.communicate(timeout=30)
        assert listed.returncode == 0, err
        assert out.startswith("dead-1  rule=hook  kind=webhook")
    finally:
        stop(daemon)
    assert webhook_receiver.requests == []


def test_the_dedupe_window_survives_sigkill(emulator, webhook_receiver, tmp_path):
    rules = write_rules(tmp_path / "rules", hook_rules(webhook_receiver.url))
    state = tmp_path / "state"
    first, _ = start(emulator, rules, state)
    try:
        event = service_event(emulator)
        wait_until(lambda: len(webhook_receiver.requests) == 1, 10, message="first delivery")

        def saved() -> bool:
            db = sqlite3.connect(f"file:{state / DB_NAME}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT data FROM snapshot WHERE name = 'dedupe'").fetchone()
            finally:
                db.close()
            return row is not None and event["uuid"] in DedupeWindow.restore(row[0])

        # Saved within seconds, while the daemon runs: no clean stop is needed.
        wait_until(saved, 10, interval=0.1, message="the de-dup window saved")
    finally:
        stop(first, signal.SIGKILL)
    second, _ = start(emulator, rules, state)
    try:
        emulator.emit(emulator.complete_event(event))  # the same uuid, sent again
        marker = service_event(emulator)["uuid"]
        wait_until(lambda: marker in [r.json()["uuid"] for r in webhook_receiver.requests], 10,
                   message="the event after the repeat delivered")
    finally:
        stop(second)
    assert [r.json()["uuid"] for r in webhook_receiver.requests] == [event["uuid"], marker]


def test_every_file_eventd_writes_is_private_whatever_the_umask(emulator, webhook_receiver,
                                                                tmp_path):
    rules = write_rules(tmp_path / "rules", hook_rules(webhook_receiver.url) + """
  - name: audit
    match: {type: service}
    actions:
      - audit: {path: "${EVENTD_AUDIT_PATH:-state/audit.jsonl}"}
""")
    state = tmp_path / "var" / "eventd"
    record = tmp_path / "events.jsonl"
    old = os.umask(0o022)
    try:
        proc, port = start(emulator, rules, state, "--record", str(record), cwd=str(tmp_path))
    finally:
        os.umask(old)
    try:
        webhook_receiver.respond_with(400)  # one dead letter
        service_event(emulator)
        wait_until(lambda: (state / "audit.jsonl").exists() and record.exists(), 10)
        store = SqliteStore(state)
        try:
            wait_until(lambda: len(store.deadletter_list()) == 1, 10, message="a dead letter")
        finally:
            store.close()
        # The audit file's default is in the state directory, not ./state where eventd started.
        assert not (tmp_path / "state").exists()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        modes[record.name] = stat.S_IMODE(record.stat().st_mode)
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert modes == {"eventd.sqlite3": 0o600, "eventd.sqlite3-wal": 0o600,
                     "eventd.sqlite3-shm": 0o600, "eventd.lock": 0o600, "audit.jsonl": 0o600,
                     "events.jsonl": 0o600, "job.key": 0o600}


@pytest.mark.parametrize("command", [["run", "--rules", "RULES"], ["deadletter", "list"],
                                     ["deadletter", "retry", "--now"]])
def test_a_state_dir_naming_a_file_is_one_line_and_exit_2(emulator, tmp_path, command):
    rules = write_rules(tmp_path / "rules", hook_rules("http://127.0.0.1:9"))
    path = tmp_path / "state"
    path.write_text("a file")
    args = [str(rules) if a == "RULES" else a for a in command]
    proc = eventd_process(*args, "--state-dir", str(path), env=emulator_env(emulator))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"eventd: state directory {path} is not a directory"


def test_readiness_asks_the_store(emulator, tmp_path):
    from tests.daemon_helpers import start_daemon

    rules = write_rules(tmp_path / "rules", hook_rules("http://127.0.0.1:9"))
    daemon = start_daemon(emulator, rules, tmp_path / "state")
    try:
        wait_until(lambda: daemon.ready()[0], 10, message="ready")
        daemon.store.close()  # what a store that cannot be written looks like from outside
        ready, checks = daemon.ready()
        assert not ready and checks["spool"] == "not writable"
    finally:
        daemon.stop(5)


def test_a_failed_start_frees_the_state_dir(emulator, tmp_path):
    import socket

    from eventd.errors import ConfigError
    from tests.daemon_helpers import start_daemon

    rules = write_rules(tmp_path / "rules", hook_rules("http://127.0.0.1:9"))
    state = tmp_path / "state"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises((OSError, ConfigError)):  # the metrics port is taken
            start_daemon(emulator, rules, state, metrics_addr=busy.getsockname())
    daemon = start_daemon(emulator, rules, state)  # not "in use": the failed start let go of it
    try:
        wait_until(lambda: daemon.ready()[0], 10, message="ready")
    finally:
        daemon.stop(5)
