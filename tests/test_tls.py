"""TLS with verification on: wss:// and https:// against the emulator's self-signed certificate,
--ca-file for the stream, REST and webhook sessions, client certificates, plain-text warnings."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from eventd.actions.webhook import SessionPool
from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.dockercloud.rest import RestClient
from eventd.emulator import Emulator
from eventd.emulator.tls import write_self_signed
from eventd.errors import ConfigError, RetryableActionError
from eventd.events import Received
from eventd.settings import Settings, TlsOptions, plaintext_warning, tls_from_env
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions
from tests.daemon_helpers import write_rules
from tests.waiting import wait_until


@pytest.fixture
def tls_emulator(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tick=0.02, tls=True, tls_dir=tmp_path / "tls") as emu:
        yield emu


def consume(emu: Emulator, tls: TlsOptions, metrics) -> tuple[StreamConsumer, threading.Thread,
                                                            threading.Event, list[Received]]:
    received: list[Received] = []
    stopping = threading.Event()
    consumer = StreamConsumer(Settings.from_env({"DOCKERCLOUD_STREAM_HOST": emu.stream_url}).stream_url,
                              Credentials(header=emu.auth_header, source="test"),
                              received.extend, metrics, stopping,
                              options=StreamOptions(tls=tls, backoff_initial=0.05, backoff_max=0.1),
                              sleep=lambda s: stopping.wait(0.05))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    return consumer, thread, stopping, received


def test_emulator_serves_wss_and_https_with_a_certificate_for_loopback(tls_emulator):
    assert tls_emulator.stream_url.startswith("wss://127.0.0.1:")
    assert tls_emulator.rest_url.startswith("https://127.0.0.1:")
    assert tls_emulator.ca_file is not None and tls_emulator.ca_file.is_file()
    key = tls_emulator.ca_file.parent / "emulator-key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(requests.exceptions.SSLError):  # requests' default trust: not ours
        requests.get(tls_emulator.rest_url + "_emulator/state", timeout=5)
    answer = requests.get(tls_emulator.rest_url + "_emulator/state", timeout=5,
                          verify=str(tls_emulator.ca_file))
    assert answer.json()["stream_url"] == tls_emulator.stream_url


def test_stream_over_wss_verifies_with_the_ca_file(tls_emulator, metrics):
    consumer, thread, stopping, received = consume(
        tls_emulator, TlsOptions(ca_file=tls_emulator.ca_file), metrics)
    try:
        wait_until(lambda: consumer.connected)
        sent = tls_emulator.emit_event(state="Stopped")
        wait_until(lambda: any(r.event == sent for r in received))
    finally:
        stopping.set()
        thread.join(5)
    assert [h.status for h in tls_emulator.handshakes()] == [101]


def test_stream_over_wss_refuses_an_unknown_certificate(tls_emulator, metrics, caplog):
    caplog.set_level(logging.WARNING, logger="eventd.sources.dockercloud.stream")
    consumer, thread, stopping, _ = consume(tls_emulator, TlsOptions(), metrics)
    try:
        wait_until(lambda: (metrics.registry.get_sample_value(
            "eventd_stream_reconnects_total", {"reason": "connect_error"}) or 0) >= 2)
        assert not consumer.connected
    finally:
        stopping.set()
        thread.join(5)
    assert tls_emulator.handshakes() == []  # no HTTP request, so no credentials, was sent
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_rest_over_https_verifies_with_the_ca_file(tls_emulator):
    creds = Credentials(header=tls_emulator.auth_header, source="test")
    good = RestClient(tls_emulator.rest_url, creds, tls=TlsOptions(ca_file=tls_emulator.ca_file))
    bad = RestClient(tls_emulator.rest_url, creds)
    try:
        assert [s["name"] for s in good.list_objects("/api/app/v1/service/")] == ["web", "db"]
        with pytest.raises(RetryableActionError):
            bad.get("/api/app/v1/service/")
    finally:
        good.close()
        bad.close()
    assert len(tls_emulator.rest_calls()) == 1


def test_the_ca_file_adds_trust_and_keeps_the_public_roots(tls_emulator):
    import certifi

    tls = TlsOptions(ca_file=tls_emulator.ca_file)
    public = sum(1 for line in Path(certifi.where()).read_text().splitlines()
                 if line.startswith("-----BEGIN CERTIFICATE"))
    assert tls.context.cert_store_stats()["x509_ca"] >= public + 1


def test_webhook_sessions_use_the_ca_file(tls_emulator):
    """A webhook to an https:// receiver with a private CA (the emulator's control endpoint)."""
    pool = SessionPool(TlsOptions(ca_file=tls_emulator.ca_file))
    try:
        answer = pool.get().post(tls_emulator.rest_url + "_emulator/events", timeout=5,
                                 json={"type": "container", "state": "FromWebhook"})
        assert answer.status_code == 200
    finally:
        pool.close()
    assert tls_emulator.sent_events()[-1]["state"] == "FromWebhook"
    with pytest.raises(requests.exceptions.SSLError):
        SessionPool().get().post(tls_emulator.rest_url + "_emulator/events", timeout=5,
                                 json={"type": "container"})


def test_client_certificate_is_presented_where_the_server_requires_one(tmp_path):
    client = write_self_signed(tmp_path / "client")
    with Emulator(tick=0.02, tls=True, tls_dir=tmp_path / "server",
                  tls_client_ca=client.cert) as emu:
        creds = Credentials(header=emu.auth_header, source="test")
        with_cert = RestClient(emu.rest_url, creds, tls=TlsOptions(
            ca_file=emu.ca_file, client_cert=client.cert, client_key=client.key))
        without = RestClient(emu.rest_url, creds, tls=TlsOptions(ca_file=emu.ca_file))
        try:
            assert with_cert.get("/api/app/v1/service/")["meta"]["total_count"] == 2
            with pytest.raises(RetryableActionError):
                without.get("/api/app/v1/service/")
        finally:
            with_cert.close()
            without.close()
        assert len(emu.rest_calls()) == 1


def test_tls_files_that_cannot_be_read_name_the_variable(tmp_path):
    with pytest.raises(ConfigError) as info:
        tls_from_env({"EVENTD_CA_FILE": str(tmp_path / "missing.pem")})
    assert "EVENTD_CA_FILE" in str(info.value) and "missing.pem" in str(info.value)
    with pytest.raises(ConfigError) as info:
        tls_from_env({}, client_key=str(tmp_path / "k.pem"))
    assert "EVENTD_CLIENT_CERT" in str(info.value)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError):
        _ = tls_from_env({"EVENTD_CA_FILE": str(junk)}).context
    flag = tls_from_env({"EVENTD_CA_FILE": str(tmp_path / "missing.pem")}, ca_file=str(junk))
    assert flag.ca_file == junk  # the flag wins over the variable


@pytest.mark.parametrize("url,warned", [
    ("ws://10.1.2.3:8081/", True), ("http://cloud.example/", True),
    ("ws://127.0.0.1:8081/", False), ("http://localhost:8080/", False), ("http://[::1]:80/", False),
    ("wss://ws.cloud.docker.com/", False), ("https://cloud.docker.com/", False)])
def test_plain_text_credentials_to_another_machine_are_warned_about(url, warned):
    message = plaintext_warning(url, "DOCKERCLOUD_STREAM_HOST")
    assert (message is not None) == warned
    if warned:
        assert "DOCKERCLOUD_STREAM_HOST" in message and "unencrypted" in message


def test_rest_client_warns_once_at_start_for_a_plain_http_host(caplog):
    caplog.set_level(logging.WARNING, logger="eventd.clients.dockercloud.rest")
    RestClient("http://192.0.2.7:8080/", Credentials(header="Basic x", source="test")).close()
    RestClient("http://127.0.0.1:8080/", Credentials(header="Basic x", source="test")).close()
    assert [r.getMessage().split(" is ")[0] for r in caplog.records] == ["DOCKERCLOUD_REST_HOST"]


def test_eventd_run_against_the_tls_emulator_with_eventd_ca_file(tls_emulator, tmp_path):
    rules = write_rules(tmp_path / "rules", "rules: []\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", "HOME": "/nonexistent",
           "DOCKERCLOUD_REST_HOST": tls_emulator.rest_url,
           "DOCKERCLOUD_STREAM_HOST": tls_emulator.stream_url,
           "DOCKERCLOUD_USER": "user", "DOCKERCLOUD_APIKEY": "apikey",
           "EVENTD_CA_FILE": str(tls_emulator.ca_file)}
    proc = subprocess.Popen([sys.executable, "-m", "eventd", "run", "--rules", str(rules),
                             "--state-dir", str(tmp_path / "state"),
                             "--metrics-addr", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 20, interval=0.1, message="eventd ready over wss://")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [h.status for h in tls_emulator.handshakes()] == [101]
    assert "unencrypted" not in err


def test_an_unreadable_ca_file_flag_is_exit_2_naming_it(tmp_path):
    rules = write_rules(tmp_path / "rules", "rules: []\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "DOCKERCLOUD_AUTH": "Bearer not-used"}
    done = subprocess.run([sys.executable, "-m", "eventd", "run", "--rules", str(rules),
                           "--ca-file", str(tmp_path / "nope.pem")],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--ca-file" in done.stderr and "nope.pem" in done.stderr
    assert "Traceback" not in done.stderr
