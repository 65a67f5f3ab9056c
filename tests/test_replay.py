"""`eventd replay` tells the truth: enrichment in dry runs, redacted URLs, a deadline for real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.daemon_helpers import emulator_env, write_rules


def replay(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent", **env}
    return subprocess.run([sys.executable, "-m", "eventd", "replay", *args], env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


def record(path: Path, *events: dict) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def stopped(uri: str, uuid: str = "e1") -> dict:
    return {"type": "container", "action": "update", "state": "Stopped", "resource_uri": uri,
            "parents": [], "uuid": uuid, "datetime": "2026-11-27T10:00:00Z"}


ENRICH_RULES = """
rules:
  - name: crashed
    match: {type: container, state: Stopped}
    enrich: resource
    when: "{{ resource is not none }}"
    actions:
      - log: {message: "{{ resource.name }} stopped"}
"""


def test_dry_run_makes_the_read_only_enrichment_get_as_live(emulator, tmp_path):
    container = emulator.state()["world"]["container"][0]
    uri = f"/api/app/v1/user/container/{container['uuid']}/"
    rules = write_rules(tmp_path / "rules", ENRICH_RULES)
    events = record(tmp_path / "events.jsonl", stopped(uri))
    done = replay(str(events), "--rules", str(rules), "--dry-run", env=emulator_env(emulator))
    assert done.returncode == 0, done.stderr
    assert f"enrich: GET {emulator.rest_url.rstrip('/')}{uri} (read-only) -> found" in done.stdout
    assert "rule crashed" in done.stdout
    assert f'"message": "{container["name"]} stopped"' in done.stdout
    assert "1 matched a rule" in done.stdout
    calls = [(c.method, c.path) for c in emulator.rest_calls()]
    assert calls == [("GET", uri)]  # one read, nothing else


def test_dry_run_without_a_rest_host_says_enrich_was_skipped(tmp_path):
    rules = write_rules(tmp_path / "rules", ENRICH_RULES)
    events = record(tmp_path / "events.jsonl", stopped("/api/app/v1/user/container/abc/"))
    done = replay(str(events), "--rules", str(rules), "--dry-run", env={})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("event e1 container Stopped")
    assert lines[1].startswith("  enrich skipped: no REST host")
    assert "0 matched a rule" in done.stdout


def test_dry_run_redacts_webhook_urls_and_says_throttled_once(tmp_path):
    rules = write_rules(tmp_path / "rules", """
rules:
  - name: slack
    match: {type: container}
    throttle: {key: "{{ event.resource_uri }}", window: 10m}
    actions:
      - webhook: {url: "https://hooks.slack.com/services/T0001/B0002/sekr1tSlackToken", json: {}}
      - webhook: {url: "http://bob:hunter2pass@example.com/h?token=abc123tok", json: {}}
""")
    uri = "/api/app/v1/user/container/abc/"
    events = record(tmp_path / "events.jsonl", stopped(uri, "e1"), stopped(uri, "e2"))
    done = replay(str(events), "--rules", str(rules), "--dry-run", env={})
    assert done.returncode == 0, done.stderr
    for secret in ("sekr1tSlackToken", "hunter2pass", "abc123tok"):
        assert secret not in done.stdout
    assert "hooks.slack.com/services/***" in done.stdout
    assert "webhook: throttled (key '/api/app/v1/user/container/abc/')" in done.stdout
    assert "throttled (throttled" not in done.stdout


def test_replay_help_says_actions_run_for_real():
    done = subprocess.run([sys.executable, "-m", "eventd", "replay", "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    text = " ".join(done.stdout.split())
    assert "RUN FOR REAL" in text and "--timeout" in text and "up to 10 minutes" in text


def test_a_real_replay_against_a_dead_target_stops_at_its_timeout(tmp_path):
    import socket

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rules = write_rules(tmp_path / "rules", f"""
rules:
  - name: hook
    match: {{type: container}}
    actions:
      - webhook: {{url: "http://127.0.0.1:{port}/down", json: {{}}}}
""")
    events = record(tmp_path / "events.jsonl", stopped("/api/app/v1/user/container/abc/"))
    done = replay(str(events), "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                  "--timeout", "1s", env={}, timeout=60)  # not the 10 minutes of retries
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--timeout reached: 1 action(s) not finished stay in the spool" in done.stdout
