"""Issue 13, "done when": `eventd run` with the shipped rules against a hostile host and hostile data.

One real eventd process, the shipped top-level `rules/*.yaml`, the emulator as REST and stream
host, the webhook receiver as ALERT_WEBHOOK_URL. The stream host first redirects the handshake to
another port; then events crafted to retarget the redeploy, inject templates, forge log lines and
exhaust memory arrive. The assertions are on what a user sees: REST calls, webhook bodies, stderr,
/metrics, file modes, the exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from eventd.emulator import Emulator
from eventd.emulator.world import (
    DEFAULT_CONTAINER_UUIDS,
    DEFAULT_SERVICE_UUIDS,
    DEFAULT_STACK_UUID,
)
from tests.daemon_helpers import emulator_env, free_port, is_ready
from tests.listener import Listener
from tests.waiting import wait_until

SHIPPED_RULES = Path(__file__).resolve().parent.parent / "rules"
APIKEY = "zq9-hostile-host-apikey-7x"
FORGED = "\n2026-01-01T00:00:00Z ERROR eventd: forged"
HUGE = "x" * (1024 * 1024)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """The emulator with an API key distinctive enough to search for in eventd's output; the
    user's objects live in the user's own namespace, as on Docker Cloud (the gate admits calls
    in that namespace, or in DOCKERCLOUD_NAMESPACE's)."""
    with Emulator(user="someone", apikey=APIKEY, namespace="someone", tick=0.02) as found:
        yield found


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


def metric_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(port: int, name: str) -> float | None:
    return next((v for (n, _), v in metric_samples(port).items() if n == name), None)


def hostile_events(emu: Emulator) -> dict[str, dict[str, Any]]:
    """The crafted events, by what each one tries."""
    world = emu.world
    web = world.uri("service", DEFAULT_SERVICE_UUIDS["web"])
    db = world.uri("service", DEFAULT_SERVICE_UUIDS["db"])
    stack = world.uri("stack", DEFAULT_STACK_UUID)
    web_1 = world.uri("container", DEFAULT_CONTAINER_UUIDS["web-1"])
    db_1 = world.uri("container", DEFAULT_CONTAINER_UUIDS["db-1"])
    action = f"/api/audit/v1/{emu.namespace}/action/{world.new_uuid()}/"

    def parents_of(uri: str) -> list[str]:
        return list(world.parents(world.find("container", uri.rstrip("/").rsplit("/", 1)[1])))

    def event(**fields: Any) -> dict[str, Any]:
        return emu.complete_event({"action": "update", **fields})

    return {
        # The redeploy's target taken from an element placed before the real service.
        "retarget": event(type="container", state="Stopped", resource_uri=web_1,
                          parents=[f"{stack}stop/?{web[web.index('/service/'):]}",
                                   *parents_of(web_1)]),
        # `..` segments: the only `/service/` parent walks back to the stack; the container's
        # own URI climbs out to the stack too (the crash rule fetches it).
        "dotdot": event(type="container", state="Stopped",
                        resource_uri=f"{db_1}../../stack/{DEFAULT_STACK_UUID}/",
                        parents=[f"{stack}../../service/{DEFAULT_SERVICE_UUIDS['db']}/"]),
        "dotdot_db": event(type="container", state="Stopped", resource_uri=db_1,
                           parents=[f"{db}../../stack/{DEFAULT_STACK_UUID}/service/"
                                    f"{DEFAULT_SERVICE_UUIDS['db']}/"]),
        # Jinja in event fields that the shipped action-failed rule puts into the webhook.
        "jinja": event(type="action", state="Failed",
                       resource_uri=action.replace("/action/", "/action/{{ 7*7 }}"),
                       parents=["{{ 7*7 }}", "{% for x in range(3) %}{{ x }}{% endfor %}",
                                "{{ ''.__class__.__mro__ }}"]),
        # A forged log line in the fields the action-failed rule logs.
        "forged_log": event(type="action", state="Failed", resource_uri=action + FORGED,
                            parents=[web + FORGED]),
        "forged_state": event(type="node", state="Unreachable" + FORGED,
                              resource_uri=world.uri("node", world.objects("node")[0].uuid) + FORGED,
                              parents=[FORGED]),
        # 1 MB strings: in the webhook's text, in the state and in a field no rule reads.
        "huge_parents": event(type="action", state="Failed", resource_uri=action, parents=[HUGE]),
        "huge_fields": event(type="container", state=HUGE, resource_uri=web_1 + HUGE,
                             parents=[HUGE], extra=HUGE),
    }


def test_hostile_stream_host_and_event_data_against_the_shipped_rules(emu, listener, webhook_receiver,
                                                                      tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    shipped = sorted(SHIPPED_RULES.glob("*.yaml"))
    assert {p.name for p in shipped} >= {"redeploy-stopped.yaml", "container-crash.yaml",
                                         "failed-action.yaml", "audit.yaml"}
    for path in shipped:
        shutil.copy(path, rules / path.name)
    state = tmp_path / "state"
    stderr_path = tmp_path / "eventd.stderr"
    port = free_port()
    # The stream host's first answer: go and authenticate somewhere else.
    emu.faults.redirect_handshake(f"ws://127.0.0.1:{listener.port}/stolen")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1",
           **emulator_env(emu, DOCKERCLOUD_USER="someone", DOCKERCLOUD_APIKEY=APIKEY,
                          ALERT_WEBHOOK_URL=f"{webhook_receiver.url}/alerts")}
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventd", "run", "--rules", str(rules), "--state-dir", str(state),
             "--metrics-addr", f"127.0.0.1:{port}", "--backoff-max", "1s"],
            env=env, cwd=tmp_path, umask=0o022, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        wait_until(lambda: is_ready(port) or proc.poll() is not None, 20, interval=0.1,
                   message="eventd connected after the redirect")
        assert proc.poll() is None, stderr_path.read_text()  # not exit 3: nobody was blamed
        assert [h.status for h in emu.handshakes()] == [302, 101]
        assert all(h.path == "/api/audit/v1/events/" for h in emu.handshakes())
        assert listener.connections == 0 and listener.received == b""

        emu.clear_rest_calls()
        events = hostile_events(emu)
        for sent in events.values():
            emu.emit(sent)
        sentinel = emu.complete_event({"type": "action", "action": "update", "state": "Failed",
                                       "resource_uri": f"/api/audit/v1/user/action/{emu.world.new_uuid()}/",
                                       "parents": ["sentinel"]})
        emu.emit(sentinel)

        web = emu.world.uri("service", DEFAULT_SERVICE_UUIDS["web"])
        wait_until(lambda: any(r.json().get("action") == sentinel["resource_uri"]
                               for r in webhook_receiver.requests), 30, interval=0.1,
                   message="the event after the hostile ones still alerted")
        wait_until(lambda: any(c.method == "POST" for c in emu.rest_calls()), 15, interval=0.1,
                   message="the legitimate redeploy was called")
        wait_until(lambda: metric(port, "eventd_spool_pending") == 0, 15, interval=0.1,
                   message="every accepted action delivered or dead-lettered")

        # Only the real service was redeployed; nothing reached a stack or a crafted path.
        calls = emu.rest_calls()
        assert [(c.method, c.path) for c in calls if c.method != "GET"] == [("POST", f"{web}redeploy/")]
        for call in calls:
            assert "/stack/" not in call.path and ".." not in call.path, call.path
            assert "?" not in call.path and "#" not in call.path, call.path
            assert not (call.method != "GET" and call.query), call

        # Templates in event data arrived as text, never evaluated.
        bodies = [r.json() for r in webhook_receiver.requests]
        [jinja] = [b for b in bodies if b.get("action") == events["jinja"]["resource_uri"]]
        assert jinja["text"] == ("Docker Cloud action failed on {{ 7*7 }}, "
                                 "{% for x in range(3) %}{{ x }}{% endfor %}, "
                                 "{{ ''.__class__.__mro__ }}")
        assert "49" not in jinja["text"] and "012" not in jinja["text"]
        assert not any("<class" in str(b) for b in bodies)

        # The daemon is alive and caught nothing unexpected.
        samples = metric_samples(port)
        assert samples[("eventd_stream_connected", ())] == 1
        assert all(v == 0 for (name, _), v in samples.items() if name == "eventd_internal_errors_total")
        assert is_ready(port)

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    err = stderr_path.read_text()
    assert proc.returncode == 0, err[-4000:]

    # The redirect was refused in so many words, and the credentials were never printed.
    assert "not followed" in err and "/stolen" in err
    assert APIKEY not in err and emu.auth_header not in err
    assert emu.auth_header.split()[1] not in err

    # Event data reached the log, escaped: no line of stderr is a record eventd did not write.
    assert not re.search(r"^2026-01-01T00:00:00Z ERROR eventd: forged", err, re.MULTILINE)
    assert "\\n2026-01-01T00:00:00Z ERROR eventd: forged" in err
    assert "\nforged" not in err

    # Private state whatever the umask: the directory 0700, every file in it 0600.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "audit.jsonl" for p in files), files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (p for p in state.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_a_huge_resource_uri_is_no_object_and_costs_no_time():
    """A 1 MB `resource_uri` once held the engine thread for minutes (quadratic regex backtracking)."""
    import time

    from eventd.events import object_ref

    uri = f"/api/app/v1/user/container/{DEFAULT_CONTAINER_UUIDS['web-1']}/"
    started = time.monotonic()
    assert object_ref(uri + HUGE) is None and object_ref(HUGE) is None
    assert time.monotonic() - started < 1
    assert object_ref(uri) is not None


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="aZ_-09/.\n x", max_size=24))
def test_a_resource_uri_names_the_object_the_tail_search_names(uri):
    """object_ref tries the tail's pattern where a URI's type segment starts before searching:
    the same object as the search from the left, for any text."""
    from eventd.events import _TAIL, _tail

    found, searched = _tail(uri), _TAIL.search(uri)
    assert (found and found.groups()) == (searched and searched.groups())
