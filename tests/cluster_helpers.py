"""Real Redis and real `eventd run` replicas for the cluster tests.

Redis is the server on 127.0.0.1:6379 (REDIS_URL overrides); each test gets its own
`--cluster` prefix and deletes its keys afterwards. Without Redis the tests skip, saying so,
except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.daemon_helpers import emulator_env, free_port

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The Redis the tests use."""
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def redis_client() -> Any:
    """A client on that Redis, or skip (fail under CI=true) when none answers."""
    import redis

    client = redis.Redis.from_url(redis_url(), socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"no Redis at {redis_url()} ({type(exc).__name__}); set REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return client


@dataclass
class Cluster:
    """One test's cluster name on the shared Redis."""

    client: Any
    name: str
    url: str

    def keys(self) -> list[str]:
        return sorted(k.decode() for k in self.client.scan_iter(f"{self.name}:*"))

    def holder(self, namespace: str) -> str | None:
        value = self.client.get(f"{self.name}:cluster:lease:{namespace}")
        return value.decode().rpartition(":")[0] if value else None

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(f"{self.name}:*"))
        if keys:
            self.client.delete(*keys)


def cluster_fixture() -> Iterator[Cluster]:
    client = redis_client()
    cluster = Cluster(client, f"test-{uuid.uuid4().hex[:10]}", redis_url())
    try:
        yield cluster
    finally:
        cluster.cleanup()
        client.close()


def replicas_fixture() -> Iterator[list[Replica]]:
    """The replicas a test starts (it appends them), stopped at the end. pytest shows a test's
    captured output only when it fails: then the tail of each replica's log is there."""
    started: list[Replica] = []
    try:
        yield started
    finally:
        for replica in started:
            replica.stop()
            print(f"--- replica {replica.name}, last 60 lines of its log ---")
            print("\n".join(replica.log().splitlines()[-60:]))


FAST_FLAGS = ("--ping-interval", "0.5s", "--pong-timeout", "1s", "--backoff-max", "0.3s",
              "--shutdown-timeout", "5s")


class Replica:
    """`eventd run` as a process, one replica of a cluster; its log goes to a file."""

    def __init__(self, emu: Any, rules: Path, workdir: Path, name: str, cluster: Cluster, *,
                 namespaces: str = "", ttl: str = "2s", env: dict[str, str] | None = None,
                 store: str | None = None) -> None:
        self.name = name
        self.emu = emu
        self.rules = rules
        self.state_dir = workdir / f"state-{name}"
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self.cluster = cluster
        self.namespaces = namespaces
        self.ttl = ttl
        self.store = store or cluster.url
        self.env = emulator_env(emu, DOCKERCLOUD_NAMESPACE=namespaces, **(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **self.env}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventd", "run", "--rules", str(self.rules),
             "--state-dir", str(self.state_dir), "--metrics-addr", f"127.0.0.1:{self.port}",
             "--store", self.store, "--cluster", self.cluster.name, "--lease-ttl", self.ttl,
             *FAST_FLAGS], env=full_env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except requests.RequestException:
            return ""

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample's value from /metrics (None if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return None

    def leads(self, namespace: str) -> bool:
        return self.sample("eventd_stream_leader", namespace=namespace) == 1.0

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            response = requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
        except requests.RequestException:
            return 0, {}
        return response.status_code, response.json()

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it will not go."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def overlaps(emu: Any) -> list[str]:
    """Every moment when two stream connections of one namespace were open at once."""
    found = []
    by_namespace: dict[str, list[Any]] = {}
    for conn in emu.stream_connections():
        by_namespace.setdefault(conn.namespace, []).append(conn)
    for namespace, conns in by_namespace.items():
        conns.sort(key=lambda c: c.opened)
        for before, after in zip(conns, conns[1:], strict=False):
            closed = before.closed if before.closed is not None else time.monotonic()
            if closed > after.opened:
                found.append(f"{namespace}: {before.peer} open until {closed:.3f}, "
                             f"{after.peer} opened at {after.opened:.3f}")
    return found


def open_counts(emu: Any) -> dict[str, int]:
    """Open stream connections per namespace now."""
    counts: dict[str, int] = emu.namespace_counts()
    return counts


class PrivateRedis:
    """A redis-server of the test's own on a free port, so the test can stop and resume it."""

    def __init__(self, workdir: Path) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        if self.binary is None:
            message = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)
        from tests.waiting import wait_until

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 10, message="private redis-server up")
        client.close()
        return self

    def pause(self) -> None:
        """Unreachable: the server stops answering (SIGSTOP), connections stay open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)
