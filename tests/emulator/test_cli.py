"""`python -m eventd.emulator` / `eventd emulate` as a person runs it."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from websocket import create_connection

ROOT = Path(__file__).resolve().parents[2]


def launch(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "eventd.emulator", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def process():
    started: list[subprocess.Popen[str]] = []

    def run(*args: str) -> subprocess.Popen[str]:
        proc = launch(*args)
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_prints_export_lines_serves_and_exits_0_on_sigterm(process):
    proc = process("--rest-port", "0", "--stream-port", "0", "--user", "alice",
                   "--apikey", "k3y")
    lines = [proc.stdout.readline().rstrip("\n") for _ in range(5)]
    env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert all(line.startswith("export DOCKERCLOUD_") for line in lines)
    assert list(env) == ["DOCKERCLOUD_REST_HOST", "DOCKERCLOUD_STREAM_HOST", "DOCKERCLOUD_USER",
                         "DOCKERCLOUD_APIKEY", "DOCKERCLOUD_AUTH"]
    assert env["DOCKERCLOUD_USER"] == "alice" and env["DOCKERCLOUD_APIKEY"] == "k3y"
    auth = env["DOCKERCLOUD_AUTH"].strip("'")
    assert auth == "Basic " + base64.b64encode(b"alice:k3y").decode()
    rest_host = env["DOCKERCLOUD_REST_HOST"]
    assert rest_host.startswith("http://127.0.0.1:") and rest_host.endswith("/")
    r = requests.get(rest_host + "api/app/v1/alice/service/", headers={"Authorization": auth})
    assert r.status_code == 200 and r.json()["meta"]["total_count"] == 2
    stream_host = env["DOCKERCLOUD_STREAM_HOST"]
    ws = create_connection(stream_host.rstrip("/") + "/api/audit/v1/alice/events",
                           header=["Authorization: " + auth], timeout=5)
    try:
        assert ws.recv() == '{"type":"auth"}'
    finally:
        ws.close()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "REST GET /api/app/v1/alice/service/ -> 200" in err
    assert "stream connection opened" in err
    assert "k3y" not in err and auth.split()[1] not in err


def test_sigint_also_stops_cleanly(process):
    proc = process("--rest-port", "0", "--stream-port", "0", "--token", "opaque")
    lines = [proc.stdout.readline() for _ in range(5)]
    assert lines[4].strip() == "export DOCKERCLOUD_AUTH=opaque"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_a_broken_scenario_exits_2_naming_file_and_line(process, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("timeline:\n  - at: 1\n    node_unreachabel: {index: 0}\n")
    proc = process("--rest-port", "0", "--stream-port", "0", "--scenario", str(path))
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 2
    assert out == ""
    assert f"{path}:3: unknown step 'node_unreachabel' (did you mean 'node_unreachable'?)" in err


@pytest.mark.parametrize("which", ["--rest-port", "--stream-port"])
def test_a_port_in_use_is_one_line_and_exit_2(process, which):
    """Issue 21.5: a port in use exited 1 with the OSError and a stray `stream server ...
    stopped` log line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--stream-port" if which == "--rest-port" else "--rest-port"
        proc = process(which, str(port), other, "0")
        out, err = proc.communicate(timeout=15)
    api = "REST API" if which == "--rest-port" else "Stream API"
    assert proc.returncode == 2 and out == ""
    assert err.splitlines() == [f"eventd emulate: cannot listen on 127.0.0.1:{port} for the {api}: "
                                "address in use (--rest-port / --stream-port 0 picks a free port)"]


def test_tls_serves_https_and_wss_and_prints_the_certificate_path(process, tmp_path):
    import ssl

    proc = process("--rest-port", "0", "--stream-port", "0", "--tls", "--tls-dir",
                   str(tmp_path / "tls"))
    lines = [proc.stdout.readline().rstrip("\n") for _ in range(6)]
    env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    ca_file = env["EVENTD_CA_FILE"]
    assert ca_file == str(tmp_path / "tls" / "emulator-cert.pem") and Path(ca_file).is_file()
    assert env["DOCKERCLOUD_REST_HOST"].startswith("https://127.0.0.1:")
    assert env["DOCKERCLOUD_STREAM_HOST"].startswith("wss://127.0.0.1:")
    auth = env["DOCKERCLOUD_AUTH"].strip("'")
    r = requests.get(env["DOCKERCLOUD_REST_HOST"] + "api/app/v1/user/service/",
                     headers={"Authorization": auth}, verify=ca_file, timeout=5)
    assert r.status_code == 200
    ws = create_connection(env["DOCKERCLOUD_STREAM_HOST"] + "api/audit/v1/events/",
                           header=["Authorization: " + auth], timeout=5,
                           sslopt={"ca_certs": ca_file, "cert_reqs": ssl.CERT_REQUIRED})
    try:
        assert ws.recv() == '{"type":"auth"}'
    finally:
        ws.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
