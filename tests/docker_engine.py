"""A real Docker Engine for tests: Debian's `dockerd`, rootful, all its state in a temp dir.

`DockerEngine(workdir).start()` runs `dockerd --storage-driver vfs --iptables=false
--bridge=none` with its socket, data root, exec root and pid file under `workdir` (kept short:
a unix socket path holds at most ~100 characters), waits for `/_ping` with a deadline, and
imports a tiny image (`eventd-test-busybox:latest`) from a rootfs tarball of Debian's static
busybox and its applet links (no registry is reachable). `stop()` ends dockerd (and the
containerd it started) whatever happened. `restart()` stops and starts it on the same
directories, as an operator's `systemctl restart docker` would.

Fixtures (re-exported by tests/conftest.py):
- `docker_engine`: one Engine per test session; yields the DockerEngine (`.host` is the
  DOCKER_HOST URL). Tests use it with containers of their own names and `--network none`.
- `docker_client`: a docker-py APIClient on it.

Missing binaries skip with the apt-get line (`docker.io busybox-static`); CI=true fails instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from tests.waiting import wait_until

IMAGE = "eventd-test-busybox:latest"
APPLETS = ("sh", "sleep", "true", "false", "echo", "cat", "kill", "ls", "head", "dd", "yes")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
PACKAGES = "docker.io busybox-static"


#: where Debian installs dockerd, containerd and runc (/usr/sbin is not on every user's PATH)
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def require_engine_binaries() -> tuple[str, str]:
    """dockerd and a static busybox; skip (or fail under CI=true) naming the packages."""
    found = {name: shutil.which(name, path=SEARCH_PATH) for name in ("dockerd", "containerd", "runc")}
    busybox = shutil.which("busybox", path=SEARCH_PATH)
    missing = [name for name, path in found.items() if path is None]
    if busybox is None or not _static(Path(busybox)):
        missing.append("a static busybox")
    if missing:
        message = (f"{', '.join(missing)} not found; install with: apt-get install {PACKAGES}")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: CI must run these tests, not skip them)",
                        pytrace=False)
        pytest.skip(message)
    assert found["dockerd"] is not None and busybox is not None
    return found["dockerd"], busybox


def _static(path: Path) -> bool:
    """An ELF without a PT_INTERP program header runs in an empty container."""
    data = path.read_bytes()[:4096]
    return data[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in data and b"/lib/ld-" not in data


class DockerEngine:
    """One dockerd with everything it keeps in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.dockerd, self.busybox = require_engine_binaries()
        self.socket = self.workdir / "d.sock"
        if len(str(self.socket)) > 100:
            raise ValueError(f"{self.socket} is too long for a unix socket path")
        self.log_path = self.workdir / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start dockerd and wait until it answers /_ping; import the test image once."""
        for name in ("data", "exec"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.dockerd, "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false",
                 "--bridge=none", "--host", self.host, "--data-root", str(self.workdir / "data"),
                 "--exec-root", str(self.workdir / "exec"), "--pidfile", str(self.workdir / "d.pid"),
                 "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "PATH": SEARCH_PATH})  # it runs containerd and runc by name
        try:
            wait_until(self._ready, timeout, interval=0.05, message="dockerd answers /_ping")
        except (AssertionError, _Exited):
            tail = self.log_tail()
            self.stop()
            raise AssertionError(f"dockerd did not start:\n{tail}") from None
        self._import_image()
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise _Exited()
        if not self.socket.exists():
            return False
        try:
            with self.client(timeout=2) as client:
                return bool(client.ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def client(self, timeout: float = 30) -> Any:
        """A docker-py APIClient (the version negotiated without leaking a socket on failure)."""
        from eventd.clients.docker import make_client
        from eventd.settings import Settings

        return make_client(Settings(docker_host=self.host), timeout)

    def _import_image(self) -> None:
        with self.client() as client:
            if client.images(name=IMAGE):
                return
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                tar.add(self.busybox, arcname="bin/busybox")
                for applet in APPLETS:
                    info = tarfile.TarInfo(f"bin/{applet}")
                    info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(info)
                for directory in ("tmp", "proc", "sys", "dev", "etc"):
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            repository, tag = IMAGE.split(":")
            client.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)

    def stop(self) -> None:
        """SIGTERM dockerd (it stops its containers and containerd), SIGKILL the group if slow."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)
        _kill_group(process.pid)

    def restart(self) -> None:
        """Stop and start again on the same directories (its event buffer is lost)."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- containers ----------------------------------------------------------------------------
    def run(self, name: str, command: list[str], labels: dict[str, str] | None = None,
            healthcheck: dict[str, Any] | None = None, **host_config: Any) -> str:
        """Create and start a container (no network); its id."""
        with self.client() as client:
            config = client.create_host_config(network_mode="none", **host_config)
            created = client.create_container(IMAGE, command, name=name, labels=labels or {},
                                              healthcheck=healthcheck, host_config=config)
            client.start(created["Id"])
            return str(created["Id"])

    def remove(self, *names: str) -> None:
        with self.client() as client:
            for name in names:
                try:
                    client.remove_container(name, force=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Exited(Exception):
    """dockerd ended while we waited for it."""


def _kill_group(pgid: int) -> None:
    """Anything left of dockerd's process group (containerd, shims) goes too."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


#: room for the image test's build: vfs copies the whole Debian base at every layer (~2 GB)
TMPFS_SIZE = "8g"


@contextlib.contextmanager
def engine_workdir(prefix: str) -> Iterator[Path]:
    """A short temp directory for an Engine's state, on a tmpfs of its own where we may mount one.

    vfs writes a full copy of an image per layer and per container: on this machine's disk the
    image test's build spent minutes copying, and deleting the ~30,000 files afterwards took
    more than the 120 s a test (here: the session's last teardown) may take. On a tmpfs both
    are memory copies and `umount` frees it all at once. Without the right to mount, the
    directory stays on disk and is deleted by a detached `rm` that nothing waits for.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(workdir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=False).returncode == 0
    try:
        yield workdir
    finally:
        if mounted and subprocess.run(["umount", "--lazy", str(workdir)], check=False,
                                      stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL).returncode == 0:
            workdir.rmdir()
        else:
            subprocess.Popen(["rm", "-rf", "--one-file-system", str(workdir)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """One real dockerd for the whole session, always stopped at its end."""
    require_engine_binaries()
    with engine_workdir("dk") as workdir:
        engine = DockerEngine(workdir)
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()


@pytest.fixture
def docker_client(docker_engine: DockerEngine) -> Iterator[Any]:
    """A docker-py APIClient on the session's Engine."""
    with docker_engine.client() as client:
        yield client


class SocketProxy:
    """A unix socket in front of the Engine's that a test can cut and restore.

    `cut()` closes every connection through it and refuses new ones (the socket file stays,
    connections are reset), as a lost link between eventd and the Engine would; the Engine
    itself keeps running and keeps its events. `restore()` lets connections through again.
    `hold(path)` keeps the answers to requests for that path from the client (the Engine slow
    to give a container's logs) until `release()` (or `release(path)`: that hold alone).
    """

    def __init__(self, target: Path, path: Path) -> None:
        import socket
        import threading

        self.target = str(target)
        self.path = path
        self._socket_module = socket
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._cut = False
        #: requests whose answers wait for release(), each with the event release sets
        self._holds: dict[bytes, Any] = {}
        self.held = 0  # requests held so far
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        import threading

        socket = self._socket_module
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    continue
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    upstream.connect(self.target)
                except OSError:  # the Engine is restarting: the client sees a reset
                    upstream.close()
                    client.close()
                    continue
                self._open += [client, upstream]
            held: list[Any] = []  # the release this connection waits for (what it asked)
            threading.Thread(target=self._pipe, args=(client, upstream, held, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, held, False),
                             daemon=True).start()

    def hold(self, path: bytes) -> None:
        """Answer no request whose first line holds `path` (its answer waits, the connection
        open) until `release()`: a log stream that the Engine is slow to give."""
        import threading

        self._holds[path] = threading.Event()

    def release(self, path: bytes | None = None) -> None:
        """Let the held answers through (those of `path` alone if given)."""
        for key in [path] if path is not None else list(self._holds):
            released = self._holds.pop(key, None)
            if released is not None:
                released.set()

    def _pipe(self, source: Any, destination: Any, held: Any = None,
              asking: bool = False) -> None:
        try:
            while data := source.recv(65536):
                if asking and held is not None:
                    line = data.split(b"\r\n", 1)[0]
                    matched = [released for path, released in list(self._holds.items())
                               if path in line]
                    if matched:
                        held += matched
                        with self._lock:
                            self.held += 1
                if not asking and held:
                    for released in list(held):
                        released.wait(60)
                destination.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, destination):
                try:
                    sock.shutdown(self._socket_module.SHUT_RDWR)
                except OSError:
                    pass
            source.close()  # each direction closes the socket it read; both end together

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, []
        for sock in sockets:
            try:
                sock.shutdown(self._socket_module.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self.cut()
        self._server.close()
        self.path.unlink(missing_ok=True)


class FakeEngine:
    """A real HTTP server on a unix socket that answers like an Engine, with a scripted /events.

    `/version`, `/_ping` and `/info` answer as an Engine does; each `GET /events` sends the
    next script's chunks (bytes, as they go on the wire) and then ends the response. For an
    Engine that goes wrong in the middle of its stream.
    """

    def __init__(self, path: Path, scripts: list[list[bytes]]) -> None:
        import http.server
        import json
        import socketserver
        import threading

        self.path = path
        self.scripts = list(scripts)
        self.event_requests = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Api-Version", "1.41")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json_lines(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                route = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                if route == "version":
                    self._json({"ApiVersion": "1.41", "Version": "fake", "MinAPIVersion": "1.12"})
                elif route == "info":
                    self._json({"ID": "FAKE:ENGINE", "Name": "fake",
                                "SystemTime": "2026-01-01T00:00:00.000000000Z"})
                elif route == "_ping":
                    data = b"OK"
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(data)
                elif route == "events" and "until=" in self.path:  # past events: none held
                    self._json_lines()
                elif route == "events":
                    fake.event_requests += 1
                    chunks = fake.scripts.pop(0) if fake.scripts else []
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Api-Version", "1.41")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    if not chunks and not fake.scripts:
                        threading.Event().wait(30)  # nothing more to say: stay open, quiet
                    self.wfile.write(b"0\r\n\r\n")
                    self.close_connection = True
                else:
                    self.send_error(404)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self) -> Any:
                request, _ = super().get_request()
                return request, ("local", 0)

        self._server = Server(str(path), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
