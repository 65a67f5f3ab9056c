"""Message brokers for tests: the machine's (NATS 4222 with JetStream, Mosquitto 1883,
RabbitMQ 5672 guest/guest) and private ones a test stops and starts.

- `shared_nats()`, `shared_mqtt()`, `shared_amqp()`: the machine's URL; skip naming the
  package when nothing answers (fail under CI=true).
- `NatsServer`: a private `nats-server -js` on a free port, its JetStream store in a temporary
  directory that survives a restart; `MosquittoServer`: a private `mosquitto` with a config
  of the test's own; `TcpProxy`: a proxy a test cuts and restores (RabbitMQ is not started
  privately).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Self

import pytest

from tests.external import free_port
from tests.waiting import wait_until


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: CI must run these tests, not skip them)", pytrace=False)
    pytest.skip(message)


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def shared_nats() -> str:
    url = os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"
    if not answers(int(url.rpartition(":")[2])):
        _unavailable("no NATS answers at 127.0.0.1:4222; apt-get install nats-server and run "
                     "it with -js")
    return url


def shared_mqtt() -> str:
    if not answers(1883):
        _unavailable("no MQTT broker answers at 127.0.0.1:1883; apt-get install mosquitto")
    return "mqtt://127.0.0.1:1883"


def shared_amqp() -> str:
    if not answers(5672):
        _unavailable("no RabbitMQ answers at 127.0.0.1:5672; apt-get install rabbitmq-server")
    return "amqp://guest:guest@127.0.0.1:5672"


def _binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}")
                                        if Path(p).exists()), None)
    if found is None:
        _unavailable(f"{name} is not installed (apt-get install {name})")
    return str(found)


class _Process:
    """A server process on a free port that a test stops, kills and starts again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventd-bus-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        log = open(self.dir / "server.log", "ab")
        # command() writes the configuration: once, before the server reads it (calling it
        # again for the message below truncated the file under a starting server, which then
        # ran on its defaults: nats-server on 4222, Mosquitto local-only on 1883)
        command = self.command()
        self.proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_until(lambda: answers(self.port), 60, 0.05, f"{command[0]} to listen")
        except AssertionError as exc:
            tail = (self.dir / "server.log").read_text(errors="replace")[-1500:]
            code = self.proc.poll()
            raise AssertionError(f"{exc} (exit code {code})\n{tail}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NatsServer(_Process):
    """nats-server with JetStream; its store outlives a restart."""

    def __init__(self, max_payload: int | None = None) -> None:
        super().__init__()
        self.max_payload = max_payload
        self.url = f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        conf = self.dir / "nats.conf"
        lines = [f"listen: 127.0.0.1:{self.port}",
                 f"jetstream {{ store_dir: \"{self.dir / 'js'}\" }}"]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        conf.write_text("\n".join(lines) + "\n")
        return [_binary("nats-server"), "-c", str(conf)]


class MosquittoServer(_Process):
    """mosquitto on a free port, anonymous, optionally with a packet size limit."""

    def __init__(self, max_packet_size: int | None = None) -> None:
        super().__init__()
        self.max_packet_size = max_packet_size
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # run as root, mosquitto drops to its own user: without this its database could not
        # be saved at SIGTERM (Permission denied), and sessions would not outlive a restart
        os.chmod(self.dir, 0o777)
        conf = self.dir / "mosquitto.conf"
        # persistence: sessions and their queued messages outlive a restart (saved at SIGTERM)
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 "persistence true", f"persistence_location {self.dir}/",
                 "max_queued_messages 0"]
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        conf.write_text("\n".join(lines) + "\n")
        return [_binary("mosquitto"), "-c", str(conf)]


class TcpProxy:
    """Forwards 127.0.0.1:port to a server; `cut()` closes every connection and refuses new
    ones until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
