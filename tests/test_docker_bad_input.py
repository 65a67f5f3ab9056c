"""The docker source given what is not a working Engine: a clear line and exit 2 at start;
bad input in the middle of a stream counted and skipped while eventd keeps running."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

from eventd.clients.docker import make_client
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from eventd.sources.docker.consumer import EngineEvents
from tests.docker_engine import DockerEngine, FakeEngine, SocketProxy
from tests.test_docker_source import FAST, Collector, stop
from tests.waiting import wait_until

RULES = Path(__file__).resolve().parent.parent / "rules" / "docker"


def short_dir(tmp_path: Path) -> Path:
    """A directory for unix sockets (pytest's tmp_path can exceed their ~100 characters)."""
    path = Path(f"/tmp/dkb{id(tmp_path) % 10**8}")
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def sockets(tmp_path: Path):
    path = short_dir(tmp_path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_eventd(host: str, tmp_path: Path, prefix: list[str] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "DOCKER_HOST": host, "HOME": str(tmp_path),
           "EVENTD_SOURCE": "docker"}
    command = [*(prefix or []), sys.executable, "-m", "eventd", "run", "--rules", str(RULES),
               "--state-dir", str(tmp_path / "state")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)


def serve_garbage(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    if conn.recv(4096):  # a request (not a bare connect): answer garbage
                        conn.sendall(b"\x00\xff\xfe SSH-2.0-garbage \r\n\r\n\x01\x02")
                except OSError:
                    pass
    threading.Thread(target=answer, daemon=True).start()
    return server


def test_no_engine_at_start_is_exit_2_with_a_clear_line(tmp_path: Path, sockets: Path):
    result = run_eventd(f"unix://{sockets}/nothing.sock", tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"cannot use the Docker Engine at unix://{sockets}/nothing.sock: no such socket" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_a_socket_speaking_garbage_is_exit_2(tmp_path: Path, sockets: Path):
    server = serve_garbage(sockets / "g.sock")
    try:
        result = run_eventd(f"unix://{sockets}/g.sock", tmp_path)
    finally:
        server.close()
    assert result.returncode == 2, result.stderr
    assert "does not speak HTTP" in result.stderr and "not a Docker Engine" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_socket_that_is_not_an_engine_is_exit_2(tmp_path: Path, sockets: Path):
    from http.server import BaseHTTPRequestHandler
    from socketserver import ThreadingMixIn, UnixStreamServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not found")

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingMixIn, UnixStreamServer):
        daemon_threads = True

        def get_request(self):
            request, _ = super().get_request()
            return request, ("local", 0)

    server = Server(str(sockets / "h.sock"), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_eventd(f"unix://{sockets}/h.sock", tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2, result.stderr
    assert "answered HTTP 404" in result.stderr and "not a Docker Engine API" in result.stderr


def test_permission_denied_is_exit_2_and_says_so(docker_engine: DockerEngine, tmp_path: Path,
                                                 sockets: Path):
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run eventd without CAP_DAC_OVERRIDE")
    proxy = SocketProxy(docker_engine.socket, sockets / "p.sock")
    os.chmod(sockets / "p.sock", 0)  # like /var/run/docker.sock for a user outside its group
    try:
        # root, but without the capability that ignores file permissions: like any other user
        result = run_eventd(proxy.host, tmp_path, prefix=[
            setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all"])
    finally:
        proxy.close()
    assert result.returncode == 2, result.stderr
    assert "permission denied" in result.stderr
    assert "Watching Docker Engine" in result.stderr  # where the README explains the socket


def test_bad_events_in_the_stream_are_counted_and_skipped(sockets: Path, metrics: Metrics):
    good = {"Type": "container", "Action": "die", "time": 1767225600, "timeNano": 1767225600000000001,
            "Actor": {"ID": "c1", "Attributes": {"name": "good-1", "exitCode": "1"}}}
    later = dict(good, timeNano=good["timeNano"] + 5,
                 Actor={"ID": "c2", "Attributes": {"name": "good-2", "exitCode": "2"}})
    fake = FakeEngine(sockets / "f.sock", [
        [json.dumps(good).encode() + b"\n", b"[1, 2]\n", b'{"Action": "die"}\n',
         json.dumps(later).encode() + b"\n", b"{this is not json\n"],
        [],  # the reconnect: a quiet stream
    ])
    sink = Collector()
    settings = Settings(docker_host=fake.host)
    stopping = threading.Event()
    source = EngineEvents(fake.host, partial(make_client, settings, 5.0), sink, metrics, stopping,
                          FAST, ping_interval=0)
    source.thread = threading.Thread(target=source.run, daemon=True)  # type: ignore[attr-defined]
    source.thread.start()  # type: ignore[attr-defined]
    try:
        wait_until(lambda: fake.event_requests >= 2, 10, message="reconnected after the garbage")
        assert [e["name"] for e in sink.events if e.get("type") == "container"] == ["good-1", "good-2"]
        sample = metrics.registry.get_sample_value
        assert sample("eventd_events_invalid_total", {"reason": "not_object"}) == 1
        assert sample("eventd_events_invalid_total", {"reason": "missing_type"}) == 1
        assert sample("eventd_events_invalid_total", {"reason": "not_json"}) == 1
        assert sample("eventd_stream_reconnects_total", {"reason": "protocol_error"}) == 1
        wait_until(lambda: source.connected, 5, message="connected again")
    finally:
        stop(source, stopping)
        fake.close()
