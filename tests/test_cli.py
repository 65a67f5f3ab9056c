"""`eventd` as a user runs it: a real process, real signals, exit codes, logs without secrets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.daemon_helpers import emulator_env, write_rules
from tests.waiting import wait_until

RULES = """
rules:
  - name: log-containers
    match: {type: container}
    actions:
      - log: {message: "{{ event.type }} {{ event.state }}"}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventd(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
    full_env.update(env)
    return subprocess.Popen([sys.executable, "-m", "eventd", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_run_stops_cleanly_on_sigterm(emulator, tmp_path):
    rules = write_rules(tmp_path / "rules", RULES)
    port = free_port()
    proc = eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                  "--metrics-addr", f"127.0.0.1:{port}", env=emulator_env(emulator))
    try:
        def ready():
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 15, interval=0.1, message="eventd ready")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "apikey" not in err and emulator.auth_header.split()[1] not in err
    assert emulator.connection_count == 0 or wait_until(lambda: emulator.connection_count == 0, 5)


def test_rejected_credentials_exit_3_after_one_attempt(emulator, tmp_path):
    rules = write_rules(tmp_path / "rules", RULES)
    env = emulator_env(emulator, DOCKERCLOUD_APIKEY="wrong-key-123")
    started = time.monotonic()
    proc = eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"), env=env)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    assert time.monotonic() - started < 15
    assert len(emulator.handshakes()) == 1
    assert emulator.handshakes()[0].status == 401
    assert "wrong-key-123" not in err + out
    assert "rejected" in err.lower()


def test_missing_credentials_exit_2_and_say_what_was_looked_for(tmp_path):
    rules = write_rules(tmp_path / "rules", RULES)
    proc = eventd("run", "--rules", str(rules), env={"HOME": str(tmp_path)})
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "DOCKERCLOUD_AUTH" in err and "DOCKERCLOUD_APIKEY" in err


def test_invalid_rules_exit_2_with_the_line(emulator, tmp_path):
    rules = write_rules(tmp_path / "rules", "rules:\n  - name: x\n    match: {type: container}\n"
                        "    actions:\n      - lgo: {message: hi}\n")
    proc = eventd("run", "--rules", str(rules), env=emulator_env(emulator))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "rules.yaml:5:" in err and "log" in err


def test_check_reports_problems_and_exit_codes(tmp_path):
    good = write_rules(tmp_path / "good", RULES)
    bad = write_rules(tmp_path / "bad", "rules:\n  - name: x\n    match: {type: container}\n"
                      "    actoins:\n      - log: {message: hi}\n")
    ok = subprocess.run([sys.executable, "-m", "eventd", "check", str(good)], capture_output=True,
                        text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = subprocess.run([sys.executable, "-m", "eventd", "check", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert f"{bad}:4:5: rule x: unknown key 'actoins' (did you mean 'actions'?)" in \
        [line.split(";")[0] for line in lines]
    assert lines[0].startswith(f"{bad}:2:5: rule x: missing required key 'actions'")


def test_record_then_replay_dry_run(emulator, tmp_path):
    rules = write_rules(tmp_path / "rules", RULES)
    record = tmp_path / "events.jsonl"
    port = free_port()
    proc = eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                  "--record", str(record), "--metrics-addr", f"127.0.0.1:{port}",
                  env=emulator_env(emulator))
    try:
        assert emulator.wait_for_connections(1, timeout=15)
        sent = [emulator.emit_event(type="container", action="update", state=state,
                                    resource_uri="/api/app/v1/user/container/abc/", parents=[])
                for state in ("Stopped", "Running")]
        emulator.emit("not json")
        wait_until(lambda: record.exists() and len(record.read_text().splitlines()) == 2, 10)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert [e["uuid"] for e in map(__import__("json").loads, record.read_text().splitlines())] == \
        [e["uuid"] for e in sent]
    state_dir = tmp_path / "dry-state"
    dry = subprocess.run([sys.executable, "-m", "eventd", "replay", str(record), "--rules",
                          str(rules), "--dry-run", "--state-dir", str(state_dir)],
                         capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("rule log-containers") == 2
    assert '"message": "container Stopped"' in dry.stdout
    assert "summary: 2 events, 2 matched a rule, 2 actions would run" in dry.stdout
    assert not state_dir.exists()


def metric(port: int, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
    except requests.ConnectionError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def test_sigkill_with_actions_pending_loses_nothing(emulator, webhook_receiver, tmp_path):
    rules = write_rules(tmp_path / "rules", f"""
rules:
  - name: hook
    match: {{type: service}}
    actions:
      - webhook: {{url: "{webhook_receiver.url}/k", json: {{uuid: "{{{{ event.uuid }}}}"}}}}
""")
    state = tmp_path / "state"
    webhook_receiver.stop()  # the receiver is down: every accepted action stays pending
    port = free_port()
    args = ("run", "--rules", str(rules), "--state-dir", str(state),
            "--metrics-addr", f"127.0.0.1:{port}")
    first = eventd(*args, env=emulator_env(emulator))
    try:
        assert emulator.wait_for_connections(1, timeout=15)
        sent = [emulator.emit_event(type="service", state="Running",
                                    resource_uri="/api/app/v1/user/service/s1/", parents=[])["uuid"]
                for _ in range(20)]
        wait_until(lambda: metric(port, "eventd_spool_pending") == 20, 15,
                   message="20 actions accepted")
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.communicate(timeout=10)
    webhook_receiver.start()
    second = eventd(*args, env=emulator_env(emulator))
    try:
        wait_until(lambda: len({r.json()["uuid"] for r in webhook_receiver.requests}) == 20, 30,
                   interval=0.1, message="every accepted action delivered after the restart")
        wait_until(lambda: metric(port, "eventd_spool_pending") == 0, 10)
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=10)
    finally:
        second.kill()
    delivered = list(dict.fromkeys(r.json()["uuid"] for r in webhook_receiver.requests))
    assert delivered == sent  # all of them, in the order they were accepted
    keys = {r.header("Idempotency-Key") for r in webhook_receiver.requests}
    assert len(keys) == 20


def test_sigterm_during_a_reconnect_backoff_exits_within_a_second(tmp_path):
    rules = write_rules(tmp_path / "rules", RULES)
    dead = free_port()  # nothing listens here: every connect fails, eventd backs off
    port = free_port()
    env = {"DOCKERCLOUD_STREAM_HOST": f"ws://127.0.0.1:{dead}/",
           "DOCKERCLOUD_REST_HOST": f"http://127.0.0.1:{dead}/",
           "DOCKERCLOUD_USER": "user", "DOCKERCLOUD_APIKEY": "apikey", "HOME": str(tmp_path)}
    proc = eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                  "--metrics-addr", f"127.0.0.1:{port}", "--backoff-max", "30s", env=env)
    try:
        wait_until(lambda: _reconnects(port) >= 3, 20, interval=0.2,
                   message="a few failed connects, so the backoff has grown")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert time.monotonic() - started < 1.5
    finally:
        proc.kill()
    assert proc.returncode == 0


def _reconnects(port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
    except requests.ConnectionError:
        return 0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "eventd_stream_reconnects_total")


# -- command-line mistakes: one line, exit 2 ------------------------------------------------
def wait_ready(port: int, timeout: float = 15) -> None:
    def ready():
        try:
            return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, timeout, interval=0.1, message="eventd ready")


def test_metrics_addr_in_use_is_one_line_and_exit_2(emulator, tmp_path):
    rules = write_rules(tmp_path / "rules", RULES)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                      "--metrics-addr", f"127.0.0.1:{port}", env=emulator_env(emulator))
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert f"eventd: cannot listen on 127.0.0.1:{port}: address in use" in err.splitlines()
    assert "Traceback" not in err


def test_startup_says_once_where_metrics_are_served(emulator, tmp_path):
    rules = write_rules(tmp_path / "rules", RULES)
    port = free_port()
    proc = eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                  "--metrics-addr", f"127.0.0.1:{port}", env=emulator_env(emulator))
    try:
        wait_ready(port)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert len([line for line in err.splitlines() if f"127.0.0.1:{port}" in line]) == 1, err


def test_an_empty_rules_directory_starts_with_a_warning(emulator, tmp_path):
    empty = tmp_path / "rules"
    empty.mkdir()
    port = free_port()
    proc = eventd("run", "--rules", str(empty), "--state-dir", str(tmp_path / "state"),
                  "--metrics-addr", f"127.0.0.1:{port}", env=emulator_env(emulator))
    try:
        wait_ready(port)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if " WARNING " in line and "0 rules" in line]
    assert warnings and str(empty) in warnings[0], err


def test_deadletter_options_may_follow_the_ids(tmp_path):
    from eventd.cli import build_parser

    args = build_parser().parse_args(["deadletter", "retry", "--now", "--state-dir", "D", "abc"])
    assert (args.command, args.ids, args.now, str(args.state_dir)) == ("retry", ["abc"], True, "D")
    done = subprocess.run([sys.executable, "-m", "eventd", "deadletter", "retry", "--now",
                           "--state-dir", str(tmp_path), "abc"],
                          capture_output=True, text=True, timeout=30)
    assert "unrecognized" not in done.stderr
    assert f"no eventd state in {tmp_path}" in done.stdout


def test_a_deadletter_mistake_prints_the_deadletter_usage():
    done = subprocess.run([sys.executable, "-m", "eventd", "deadletter", "retry", "--bogus"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: eventd deadletter"), done.stderr
    assert "unrecognized arguments: --bogus" in done.stderr


@pytest.mark.parametrize("name, module", [
    ("check", "eventd.commands.check"), ("emulate", "eventd.emulator.cli"),
    ("demo", "eventd.commands.demo"), ("receive", "eventd.commands.receive"),
    ("deadletter", "eventd.commands.deadletter"), ("status", "eventd.commands.status")])
def test_a_subcommand_loaded_when_chosen_has_all_its_flags_in_its_help(name, module, capsys):
    import argparse
    import importlib

    from eventd.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([name, "--help"])
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: eventd {name} ")
    flags = argparse.ArgumentParser(add_help=False)
    importlib.import_module(module).add_arguments(flags)
    for action in flags._actions:
        for option in action.option_strings:
            assert option in shown, (name, option)


def test_receive_prints_what_arrives_and_stops_on_sigterm(tmp_path):
    port = free_port()
    proc = eventd("receive", "--port", str(port), env={})
    try:
        assert "receiving on" in proc.stdout.readline()
        answer = requests.post(f"http://127.0.0.1:{port}/alerts",
                               json={"text": "container web-1 crashed"}, timeout=5)
        assert answer.status_code == 200
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert line.endswith('POST /alerts  {"text": "container web-1 crashed"}\n')
    assert proc.returncode == 0, err


def test_receive_shows_the_whole_body_with_control_characters_escaped(tmp_path):
    """Issues 21.5 and 20.14: `receive` showed only `text`, and printed a body's control
    characters raw (an ESC sequence can retitle, clear or rewrite the user's terminal)."""
    port = free_port()
    proc = eventd("receive", "--port", str(port), env={})
    hostile = [
        b"\x1b]0;pwned\x07\x1b[2J\x1b[1A\rforged line\n2nd\x9b31m",  # not JSON
        '{"text": "ok\u202eevil", "rule": "r\u0085x", "n": 1}'.encode(),  # JSON: C1, bidi
    ]
    try:
        assert "receiving on" in proc.stdout.readline()
        lines = []
        for body in hostile:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"POST /al\x1b[31merts HTTP/1.1\r\nHost: x\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                             + body)
                assert conn.recv(100).startswith(b"HTTP/1.1 200")
            lines.append(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    first, second = (line.rstrip("\n") for line in lines)
    assert first.endswith("POST /al\\x1b[31merts  \\x1b]0;pwned\\x07\\x1b[2J\\x1b[1A\\rforged "
                          "line\\n2nd\ufffd31m")  # a lone 0x9b byte is not UTF-8: replaced
    assert second.endswith('POST /al\\x1b[31merts  {"text": "ok\\u202eevil", "rule": '
                           '"r\\x85x", "n": 1}')
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c == "\u202e"
                   for c in first + second)


def test_receive_on_a_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "eventd", "receive", "--port", str(port)],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == f"eventd receive: cannot listen on 127.0.0.1:{port}: address in use"


# -- the emulator's help: the control endpoint examples work as printed ----------------------
def test_emulate_help_shows_the_control_endpoint_and_its_curl_examples_work(emulator):
    import json
    import re

    done = subprocess.run([sys.executable, "-m", "eventd", "emulate", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    for route in ("/_emulator/events", "/_emulator/faults", "/_emulator/calls",
                  "/_emulator/state"):
        assert route in done.stdout
    examples = re.findall(r"curl -s -X POST http://127\.0\.0\.1:8080(\S+) "
                          r"-H 'Content-Type: application/json' \\\n\s+-d '(.*?)'",
                          done.stdout, re.DOTALL)
    assert {path for path, _ in examples} == {"/_emulator/events", "/_emulator/faults"}
    uuid = emulator.state()["world"]["container"][0]["uuid"]
    for path, body in examples:
        data = json.loads(body.replace("<uuid>", uuid))
        answer = requests.post(emulator.rest_url.rstrip("/") + path, json=data, timeout=5)
        assert answer.status_code == 200, (path, answer.text)
    assert any(e.get("state") == "Stopped" for e in emulator.sent_events())
    assert emulator.faults.snapshot()


def test_emulate_finds_the_shipped_scenario_by_name():
    proc = eventd("emulate", "--scenario", "demo", "--rest-port", "0", "--stream-port", "0",
                  env={})
    try:
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert first.startswith("export DOCKERCLOUD_REST_HOST="), err
    assert proc.returncode == 0, err


def test_help_and_readme_speak_to_a_new_user():
    """Issue 21.5: no "issue 14" in the README, --source docker in its first paragraph and in
    `eventd --help`, and the rule count `eventd check rules/` really prints."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text("utf-8")
    first = readme.split("\n\n")[1]
    assert "--source docker" in first
    assert not __import__("re").search(r"\bissues? \d+\b", readme)
    done = subprocess.run([sys.executable, "-m", "eventd", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert "--source docker" in " ".join(done.stdout.split()) and "init" in done.stdout
    checked = subprocess.run([sys.executable, "-m", "eventd", "check", str(root / "rules")],
                             capture_output=True, text=True, timeout=30)
    said = checked.stdout.strip()  # e.g. "8 rules in 6 files: ok"
    assert f"`{said}`" in readme


def test_log_lines_read_as_written(emulator, tmp_path):
    """Issue 21.5's log wording: `1 rules`, `state in state` with --store memory, the apikey
    masked inside an unrelated path, a literal \\n in reload errors, webhook lines that named
    only host:port."""
    dead = free_port()
    rules_dir = tmp_path / "apikey-rules"  # the emulator's apikey is "apikey"
    rules = write_rules(rules_dir, f"""
        rules:
          - name: hook
            match: {{type: container}}
            actions:
              - webhook: {{url: "http://127.0.0.1:{dead}/team-a/alerts?token=SECRETQ", json: {{}}}}
    """)
    port = free_port()
    proc = eventd("run", "--rules", str(rules_dir), "--store", "memory", "--metrics-addr",
                  f"127.0.0.1:{port}", env=emulator_env(emulator))

    def metric(name: str) -> float | None:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
        except requests.ConnectionError:
            return None
        found = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
        return float(found[0]) if found else None

    try:
        wait_until(lambda: emulator.connection_count == 1, 15, message="eventd connected")
        emulator.emit_event()
        wait_until(lambda: (metric("eventd_spool_pending") or 0) >= 1, 10)
        rules.write_text("rules:\n  - name: hook\n    match: {type: container}\n"
                         "    actions: [{webhook: {}}, {lgo: {}}]\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: metric("eventd_rules_reload_success") == 0, 10)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = err.splitlines()

    def line(text: str) -> str:
        found = [entry for entry in lines if text in entry]
        assert found, f"no line with {text!r} in:\n{err}"
        return found[0]

    assert line("eventd started: 1 rule, ").endswith(
        "state in memory only (--store memory: nothing kept across a restart)")
    assert line("rule reload failed").endswith(
        "rule reload failed (2 problems); keeping the 1 rule in force")
    reload_problems = [entry for entry in lines if "rule reload: " in entry]
    assert len(reload_problems) == 2
    assert all(f"rule reload: {rules}:" in entry for entry in reload_problems)  # not .../***-rules
    assert f"to http://127.0.0.1:{dead}/team-a/alerts?... failed" in line("webhook for rule hook")
    assert line("not finished").endswith(
        "1 accepted action not finished, and lost: --store memory keeps nothing across a restart")
    assert "\\n" not in err and "SECRETQ" not in err and "***" not in err
