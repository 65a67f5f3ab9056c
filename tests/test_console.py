"""The console's HTTP API against a running daemon: attacker tests first, then what it shows.

The page renders every value as text (tests/test_console_browser.py checks that in Chromium);
here: a token never in a URL or a log, CSRF refused, no path reaches the file system, the
metrics server's limits hold for the console's requests, nothing secret is shown, and every
answer has the shape openapi.json says.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import jsonschema
import pytest
import requests

from eventd.console.app import openapi
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until

TOKEN = "console-token-0123456789abcdef"
SECRET = "hunter2-webhook-secret"
SPEC = openapi()


def _rules(receiver_url: str, name: str = "stopped") -> str:
    return f"""
        rules:
          - name: {json.dumps(name)}
            match: {{type: container, state: Stopped}}
            actions:
              - webhook:
                  url: "{receiver_url}/hook?token=${{HOOK_SECRET}}"
                  headers: {{X-Api-Key: "${{HOOK_SECRET}}"}}
                  json: {{text: "{{{{ event.uuid }}}}"}}
    """


@pytest.fixture
def console(emulator, webhook_receiver, tmp_path):
    started = []

    def run(token: str | None = TOKEN, rules: str | None = None, **overrides):
        path = write_rules(tmp_path / "rules", rules or _rules(webhook_receiver.url))
        env = emulator_env(emulator, HOOK_SECRET=SECRET)
        daemon = start_daemon(emulator, path, tmp_path / "state", env=env,
                              metrics_addr=("127.0.0.1", 0), ui_token=token, **overrides)
        started.append(daemon)
        wait_until(lambda: daemon.consumer.connected, 5)
        return daemon, f"http://127.0.0.1:{daemon.health_port}"

    yield run
    for daemon in started:
        daemon.stop(timeout=5)


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _write(base: str, path: str, body=None, token: str | None = TOKEN, **headers):
    sent = {"Content-Type": "application/json", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return requests.post(base + path, data=json.dumps(body or {}), headers=sent, timeout=5)


def _dead_letter(daemon, emulator, webhook_receiver):
    webhook_receiver.respond_with(400, count=1)  # a 4xx: dead-lettered at once
    emulator.emit_event(state="Stopped")
    wait_until(lambda: daemon.store.deadletter_count() == 1, 5, message="dead-lettered")
    return daemon.store.deadletter_list()[0].job.id


# -- attacker tests ----------------------------------------------------------------------------
def test_a_token_in_the_query_string_is_refused_everywhere_and_never_logged(console, caplog):
    caplog.set_level(logging.DEBUG)
    daemon, base = console()
    for path in ("/ui/", "/api/v1/info", "/api/v1/silences"):
        for name in ("token", "access_token", "TOKEN"):
            answer = requests.get(f"{base}{path}?{name}={TOKEN}", timeout=5)
            assert answer.status_code == 400 and "never goes in the URL" in answer.json()["error"]
    answer = _write(base, "/api/v1/silences?token=" + TOKEN, {"matchers": ["rule=x"],
                                                               "created_by": "a", "comment": "b"})
    assert answer.status_code == 400
    _write(base, "/api/v1/silences", {"matchers": ["rule=x"]}, token="wrong-" + TOKEN)
    # eventd's own log lines (the test's HTTP client logs its URLs, token and all)
    assert all(TOKEN not in record.getMessage() for record in caplog.records
               if record.name.startswith("eventd"))
    assert daemon.pipeline.silences.silences() == []


@pytest.mark.parametrize("headers, token, status", [
    ({"Content-Type": "text/plain"}, TOKEN, 415),  # what a cross-site form can send
    ({"Content-Type": "application/x-www-form-urlencoded"}, TOKEN, 415),
    ({"Origin": "http://evil.example"}, TOKEN, 403),
    ({"Sec-Fetch-Site": "cross-site"}, TOKEN, 403),
    ({}, None, 401),
    ({}, "not-the-token-0123456789", 401),
])
def test_cross_site_and_tokenless_writes_are_refused(console, webhook_receiver, emulator,
                                                     headers, token, status):
    daemon, base = console()
    letter = _dead_letter(daemon, emulator, webhook_receiver)
    webhook_receiver.clear()
    for path, body in [("/api/v1/silences", {"matchers": ["rule=stopped"], "created_by": "x",
                                             "comment": "y"}),
                       (f"/api/v1/deadletters/{letter}/retry", {}),
                       (f"/api/v1/deadletters/{letter}/discard", {})]:
        answer = _write(base, path, body, token=token, **headers)
        assert answer.status_code == status, (path, answer.text)
        assert set(answer.json()) == {"error"}
        assert "Access-Control-Allow-Origin" not in answer.headers
    assert daemon.pipeline.silences.silences() == []
    assert daemon.store.deadletter_count() == 1
    assert webhook_receiver.requests == []


def test_without_a_configured_token_the_console_is_read_only(console):
    daemon, base = console(token=None)
    assert requests.get(base + "/api/v1/info", timeout=5).json()["writable"] is False
    answer = _write(base, "/api/v1/silences", {"matchers": ["rule=x"], "created_by": "a",
                                               "comment": "b"}, token="anything-at-all-123")
    assert answer.status_code == 403 and "read-only" in answer.json()["error"]


@pytest.mark.parametrize("target", [
    "/ui/../../../../etc/passwd", "/ui/..%2f..%2f..%2fetc%2fpasswd", "/ui/%2e%2e/setup.cfg",
    "/ui//etc/passwd", "/ui/static/app.js", "/ui/app.js/..", "/ui/./app.js", "/ui/openapi.json",
    "/ui/../console/api.py", "/ui/app.js%00.html", "/ui/APP.JS", "/ui/\\..\\setup.cfg",
])
def test_no_path_under_ui_reaches_the_file_system(console, target):
    daemon, _ = console()
    answer = _raw(daemon.health_port, f"GET {target} HTTP/1.0\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 404"), answer[:200]
    assert b"root:" not in answer and b"[metadata]" not in answer and b"import" not in answer


def test_the_metrics_servers_limits_hold_for_console_requests(console):
    daemon, _ = console()
    port = daemon.health_port
    big_head = b"GET /ui/ HTTP/1.0\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    assert _raw(port, big_head).startswith(b"HTTP/1.0 431")
    head = (b"POST /api/v1/silences HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode())
    assert _raw(port, head + b"\r\nContent-Length: 20000\r\n\r\n" + b"{" * 100).startswith(
        b"HTTP/1.0 413")
    assert _raw(port, head + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}{}{\r\n").startswith(
        b"HTTP/1.0 411")
    assert _raw(port, head + b"\r\nContent-Length: -1\r\n\r\n").startswith(b"HTTP/1.0 400")
    started = time.monotonic()  # a body that never comes: 408 within the head's deadline
    assert _raw(port, head + b"\r\nContent-Length: 100\r\n\r\n{", timeout=10).startswith(
        b"HTTP/1.0 408")
    assert time.monotonic() - started < 7
    answer = _raw(port, head + b"\r\nContent-Length: 30\r\n\r\n" + b"[" * 30)
    assert answer.startswith(b"HTTP/1.0 400")  # not JSON (nor a RecursionError)
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def test_a_dead_letter_is_shown_redacted_then_retried_and_discarded(console, emulator,
                                                                    webhook_receiver):
    daemon, base = console()
    letter = _dead_letter(daemon, emulator, webhook_receiver)
    listed = requests.get(base + "/api/v1/deadletters", timeout=5)
    detail = requests.get(f"{base}/api/v1/deadletters/{letter}", timeout=5)
    for answer in (listed, detail):
        assert answer.status_code == 200
        assert SECRET not in answer.text and TOKEN not in answer.text
    shown = detail.json()
    assert shown["options"]["headers"] == {"X-Api-Key": "***"}
    assert "token=***" in shown["options"]["url"]
    webhook_receiver.clear()
    assert _write(base, f"/api/v1/deadletters/{letter}/retry").json() == {"retried": [letter]}
    wait_until(lambda: webhook_receiver.requests, 5, message="retried delivery arrives")
    assert daemon.store.deadletter_count() == 0
    assert _write(base, f"/api/v1/deadletters/{letter}/retry").status_code == 404
    letter = _dead_letter(daemon, emulator, webhook_receiver)
    assert _write(base, f"/api/v1/deadletters/{letter}/discard").json() == {"discarded": 1}
    assert daemon.store.deadletter_count() == 0
    assert requests.get(f"{base}/api/v1/deadletters/..%2f..", timeout=5).status_code in (400, 404)


def test_silences_through_the_api_mute_and_expire(console, emulator, webhook_receiver):
    daemon, base = console()
    bad = _write(base, "/api/v1/silences", {"matchers": ["rule=~(a+"], "created_by": "a",
                                            "comment": "b"})
    assert bad.status_code == 400 and "not a valid regex" in bad.json()["error"]
    created = _write(base, "/api/v1/silences", {
        "matchers": ["rule=stopped", {"name": "kind", "op": "=", "value": "webhook"}],
        "duration": "1h", "created_by": "on-call", "comment": "<img src=x onerror=alert(1)>"})
    assert created.status_code == 201
    silence = created.json()
    assert silence["state"] == "active" and silence["comment"] == "<img src=x onerror=alert(1)>"
    emulator.emit_event(state="Stopped")
    wait_until(lambda: daemon.metrics.registry.get_sample_value(
        "eventd_actions_total", {"kind": "webhook", "outcome": "silenced"}) == 1, 5)
    events = requests.get(base + "/api/v1/events?rule=stopped", timeout=5).json()["events"]
    assert events[0]["actions"][0]["status"] == "silenced"
    assert events[0]["actions"][0]["reason"] == f"silence {silence['id']}"
    ended = _write(base, f"/api/v1/silences/{silence['id']}/expire").json()
    assert ended["state"] == "expired"
    emulator.emit_event(state="Stopped")
    wait_until(lambda: webhook_receiver.requests, 5, message="delivered once expired")


def test_live_filters_and_the_event_stream(console, emulator):
    daemon, base = console()
    emulator.emit_event(state="Stopped")
    emulator.emit_event(state="Running")
    wait_until(lambda: len(requests.get(base + "/api/v1/events?type=container",
                                        timeout=5).json()["events"]) == 2, 5)
    stopped = requests.get(base + "/api/v1/events?state=stopped", timeout=5).json()["events"]
    assert [e["state"] for e in stopped] == ["Stopped"] and stopped[0]["rules"] == ["stopped"]
    assert requests.get(base + "/api/v1/events?namespace=other",
                        timeout=5).json()["events"] == []
    with socket.create_connection(("127.0.0.1", daemon.health_port), timeout=5) as sock:
        sock.sendall(b"GET /api/v1/events/stream?type=container HTTP/1.0\r\n\r\n")
        data = b""
        while b"retry: 1000" not in data:
            data += sock.recv(4096)
        assert b"Content-Type: text/event-stream" in data
        sent = emulator.emit_event(state="Stopped")
        while sent["uuid"].encode() not in data:
            data += sock.recv(65536)
        assert b"id: " in data and b"data: {" in data
    # a stream whose reader left ends at its next writes (an event, or the 5 s keep-alive)
    wait_until(lambda: emulator.emit_event(state="Stopped") and daemon.console.api.open_streams
               == 0, 10, interval=0.2, message="the closed stream was noticed")
    streams = [socket.create_connection(("127.0.0.1", daemon.health_port)) for _ in range(5)]
    try:
        for sock in streams:
            sock.sendall(b"GET /api/v1/events/stream HTTP/1.0\r\n\r\n")
        heads = [sock.recv(200) for sock in streams]
        assert sum(h.startswith(b"HTTP/1.0 503") for h in heads) == 1  # at most 4 at once
        assert sum(h.startswith(b"HTTP/1.0 200") for h in heads) == 4
    finally:
        for sock in streams:
            sock.close()


def test_rules_show_matches_and_the_last_reloads_problems(console, emulator, tmp_path):
    daemon, base = console()
    emulator.emit_event(state="Stopped")
    wait_until(lambda: requests.get(base + "/api/v1/rules", timeout=5).json()["rules"][0][
        "matches"] == 1, 5)
    (tmp_path / "rules" / "rules.yaml").write_text(
        f"rules:\n  - name: broken\n    match: {{type: [}}\n    url: {SECRET}\n")
    assert daemon.reload() is False
    shown = requests.get(base + "/api/v1/rules", timeout=5).json()
    assert shown["reload"]["ok"] is False and shown["reload"]["problems"]
    assert [r["name"] for r in shown["rules"]] == ["stopped"]  # the old rules stay in force


def test_ui_off_serves_no_console(console):
    daemon, base = console(ui=False)
    assert requests.get(base + "/ui/", timeout=5).status_code == 404
    assert requests.get(base + "/api/v1/info", timeout=5).status_code == 404
    assert requests.get(base + "/metrics", timeout=5).status_code == 200


def test_the_page_sets_data_only_as_text_and_is_its_own_only_script():
    static = Path(__file__).resolve().parents[1] / "eventd" / "console" / "static"
    script = (static / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setTimeout(\"", "javascript:"):
        assert sink not in script
    page = (static / "index.html").read_text()
    assert "<script>" not in page and "style=" not in page and "http" not in page.replace(
        "http-equiv", "")


# -- the OpenAPI file ------------------------------------------------------------------------------
def _check(answer, path: str, method: str = "get") -> None:
    responses = SPEC["paths"][path][method]["responses"]
    assert str(answer.status_code) in responses, (path, answer.status_code)
    schema = responses[str(answer.status_code)]["content"]["application/json"]["schema"]
    jsonschema.validate(answer.json(), {**schema, "components": SPEC["components"]})


def test_every_answer_has_the_shape_openapi_json_gives(console, emulator, webhook_receiver):
    daemon, base = console()
    letter = _dead_letter(daemon, emulator, webhook_receiver)
    created = _write(base, "/api/v1/silences", {"matchers": ["rule=other"], "created_by": "a",
                                                "comment": "b", "duration": 60})
    _check(created, "/api/v1/silences", "post")
    ident = created.json()["id"]
    gets = {"/api/v1/info": "/api/v1/info", "/api/v1/events": "/api/v1/events",
            "/api/v1/rules": "/api/v1/rules", "/api/v1/deadletters": "/api/v1/deadletters",
            f"/api/v1/deadletters/{letter}": "/api/v1/deadletters/{id}",
            "/api/v1/deadletters/nope": "/api/v1/deadletters/{id}",
            "/api/v1/silences": "/api/v1/silences", "/api/v1/cluster": "/api/v1/cluster",
            "/api/v1/openapi.json": "/api/v1/openapi.json"}
    for url, path in gets.items():
        _check(requests.get(base + url, timeout=5), path)
    _check(_write(base, f"/api/v1/silences/{ident}/expire"), "/api/v1/silences/{id}/expire",
           "post")
    _check(_write(base, "/api/v1/silences/nope/expire"), "/api/v1/silences/{id}/expire", "post")
    _check(_write(base, f"/api/v1/deadletters/{letter}/discard"),
           "/api/v1/deadletters/{id}/discard", "post")
    _check(_write(base, "/api/v1/deadletters/nope/retry"), "/api/v1/deadletters/{id}/retry",
           "post")
    _check(_write(base, "/api/v1/silences", {"matchers": []}), "/api/v1/silences", "post")
    served = set(gets.values()) | {"/api/v1/events/stream", "/api/v1/silences/{id}/expire",
                                   "/api/v1/deadletters/{id}/discard",
                                   "/api/v1/deadletters/{id}/retry"}
    assert served == set(SPEC["paths"])  # every documented path is served, and no other
    assert requests.get(base + "/api/v1/nothing", timeout=5).status_code == 404


# -- a cluster -------------------------------------------------------------------------------------
@pytest.fixture
def cluster():
    from tests.cluster_helpers import cluster_fixture

    yield from cluster_fixture()


@pytest.fixture
def replicas():
    from tests.cluster_helpers import replicas_fixture

    yield from replicas_fixture()


def test_the_cluster_page_and_a_silence_shared_by_replicas(emulator, webhook_receiver, tmp_path,
                                                          cluster, replicas):
    from tests.cluster_helpers import Replica

    rules = write_rules(tmp_path / "rules", """
        rules:
          - name: stopped
            match: {type: container, state: Stopped}
            actions:
              - log: {message: "stopped"}
    """)
    env = {"EVENTD_UI_TOKEN": TOKEN}
    for name in ("a", "b"):
        replicas.append(Replica(emulator, rules, tmp_path, name, cluster, namespaces="acme,globex",
                                env=env).start())
    a, b = replicas
    base_a, base_b = (f"http://127.0.0.1:{r.port}/api/v1" for r in replicas)

    def held():
        try:
            shown = requests.get(base_a + "/cluster", timeout=5).json()
        except (requests.ConnectionError, ValueError):
            return None
        holders = {s["namespace"]: s["holder"] for s in shown.get("streams", ())}
        return shown if len(shown.get("replicas", ())) == 2 and all(
            holders.get(ns) for ns in ("acme", "globex")) else None

    shown = wait_until(held, 30, interval=0.3, message="both replicas and both streams held")
    _check_shape = SPEC["paths"]["/api/v1/cluster"]["get"]["responses"]["200"]["content"]
    jsonschema.validate(shown, {**_check_shape["application/json"]["schema"],
                                "components": SPEC["components"]})
    assert shown["shared"] is True and shown["cluster"] == cluster.name
    assert sum(r["this"] for r in shown["replicas"]) == 1
    assert all(0 < s["ttl_left"] <= 2.0 for s in shown["streams"] if s["namespace"] in
               ("acme", "globex"))
    assert shown["spool"] == {"pending": 0, "deadletters": 0}
    created = _write(base_a.rsplit("/api/v1", 1)[0], "/api/v1/silences",
                     {"matchers": ["rule=stopped"], "created_by": "a", "comment": "shared"})
    assert created.status_code == 201
    wait_until(lambda: [s["id"] for s in requests.get(base_b + "/silences", timeout=5).json()[
        "silences"]] == [created.json()["id"]], 5, message="replica b lists a's silence")


def test_the_token_comes_from_the_environment_or_a_file_and_is_never_shown(tmp_path, capsys):
    from eventd.cli import main
    from eventd.errors import ConfigError
    from eventd.settings import Settings

    assert Settings.from_env({"EVENTD_UI_TOKEN": TOKEN}).ui_token == TOKEN
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    settings = Settings.from_env({"EVENTD_UI_TOKEN_FILE": str(secret)})
    assert settings.ui_token == TOKEN and TOKEN not in repr(settings)
    with pytest.raises(ConfigError, match="at least 16 characters") as info:
        Settings.from_env({"EVENTD_UI_TOKEN": "short-one"})
    assert "short-one" not in str(info.value)
    with pytest.raises(SystemExit) as exited:  # argparse: the choices, exit 2
        main(["run", "--ui", "maybe"], environ={"DOCKERCLOUD_AUTH": "Basic x"})
    assert exited.value.code == 2
    assert main(["run"], environ={"DOCKERCLOUD_AUTH": "Basic x", "EVENTD_UI": "sometimes"}) == 2
    assert "EVENTD_UI" in capsys.readouterr().err


def test_an_unexpected_error_is_a_500_logged_and_counted_and_the_server_keeps_serving(
        tmp_path, internal_errors):
    from eventd.console.wiring import build_console
    from eventd.ops.health import serve, shutdown
    from eventd.ops.metrics import Metrics
    from eventd.settings import Settings
    from eventd.stores.memory import MemoryStore

    def broken_rules():
        raise RuntimeError("a bug")

    metrics = Metrics()
    console = build_console(Settings(state_dir=tmp_path, rules=()), MemoryStore(), None, {},
                            secrets=(), rules=broken_rules, reload=dict, resume=lambda: None,
                            replica=dict, metrics=metrics)
    server = serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}), mounts=console.mounts())
    try:
        base = f"http://127.0.0.1:{server[0].server_port}"
        answer = requests.get(base + "/api/v1/rules", timeout=5)
        assert answer.status_code == 500 and answer.json() == {"error": "internal error (logged)"}
        assert metrics.registry.get_sample_value("eventd_internal_errors_total",
                                                 {"where": "console"}) == 1
        assert [where for where, _ in internal_errors] == ["console"]
        internal_errors.clear()
        assert requests.get(base + "/api/v1/info", timeout=5).status_code == 200
    finally:
        console.close()
        shutdown(*server)
