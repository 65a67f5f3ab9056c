"""What runs on the test network's hosts: Redis, Sentinel and `eventd run` replicas.

Each is a child process started on its host with `ip netns exec` (which execs: the pid is
the program's own, so SIGSTOP and SIGKILL reach it). Redis keeps an append-only file synced
on every write (`appendfsync always`), as a deployment that promises "accepted is kept" must:
a restart then loses nothing it acknowledged, so what the checker finds missing is eventd's.
The test process reaches them from the observer host (`Network.call`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import redis
import requests

from tests.chaos.history import Journal
from tests.chaos.netns import Network
from tests.external import require_binary
from tests.waiting import wait_until

REDIS_PORT = 6379
SENTINEL_PORT = 26379
METRICS_PORT = 9100
SERVICE = "mymaster"
OBSERVER = "obs"
#: eventd's flags for a test cluster: fast pings and backoff, as tests/cluster_helpers.py
FAST_FLAGS = ("--ping-interval", "0.5s", "--pong-timeout", "1s", "--backoff-max", "0.3s",
              "--shutdown-timeout", "5s")


def redis_binary() -> str:
    return require_binary("redis-server", package="redis-server")


class RedisNode:
    """One redis-server on a host of its own, port 6379, data in `directory`."""

    def __init__(self, net: Network, role: str, directory: Path,
                 replica_of: RedisNode | None = None, options: tuple[str, ...] = ()) -> None:
        self.net = net
        self.role = role
        self.directory = directory
        self.replica_of = replica_of
        self.options = options  # more redis-server flags (`--min-replicas-to-write 1`)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return self.net.address(self.role)

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{REDIS_PORT}/0"

    def start(self, primary: bool = False) -> RedisNode:
        """Start it; `primary`: as a primary, whatever it followed at first. A node Sentinel
        promoted comes back so after a restart: Sentinel rewrote its config file. (Started
        as a replica of the node it followed at first, which by then followed it, the two
        were each other's replica: no primary, and no replica Sentinel could promote, for
        good; make chaos on 2d06cba, from t+388.)"""
        self.directory.mkdir(parents=True, exist_ok=True)
        follow = ("--replicaof", self.replica_of.address, str(REDIS_PORT)) \
            if self.replica_of is not None and not primary else ()
        self._log = (self.directory / "stdout.log").open("ab")
        self.process = self.net.popen(self.role, [
            redis_binary(), "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
            "--protected-mode", "no", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--auto-aof-rewrite-percentage", "0",
            "--repl-diskless-sync-delay", "0",
            "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"),
            *follow, *self.options], stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(self.answers, 15, 0.05, f"redis-server on {self.role} to answer")
        return self

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=self.address, port=REDIS_PORT, socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True, **options)

    def answers(self) -> bool:
        def ping() -> bool:
            client = self.client()
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False
            finally:
                client.close()
        return self.net.call(OBSERVER, ping)

    def _state(self) -> dict[str, Any] | None:
        """INFO replication and persistence in one dict (None: it does not answer)."""
        def ask() -> dict[str, Any] | None:
            client = self.client()
            try:
                return {**client.info("replication"), **client.info("persistence")}
            except redis.RedisError:
                return None
            finally:
                client.close()
        return self.net.call(OBSERVER, ask)

    def in_sync(self) -> bool:
        """A replica: whether its link to the primary is up and its first sync is done."""
        state = self._state()
        return state is not None and state.get("master_link_status") == "up" \
            and not state.get("loading") and not state.get("aof_rewrite_in_progress")

    def follows(self, primary: str | None) -> bool:
        """Whether it agrees that `primary` (an address) is the primary: it is that one and
        says it is a primary, or it is a replica of it, linked and synced."""
        state = self._state()
        if state is None:
            return False
        if self.address == primary:
            return bool(state.get("role") == "master")
        return state.get("role") == "slave" and state.get("master_host") == primary \
            and state.get("master_link_status") == "up" and not state.get("loading")

    def kill(self) -> None:
        """SIGKILL (after SIGCONT: a paused server must be able to die)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


class Sentinel:
    """One Sentinel (quorum 1) on a host of its own, watching `primary` as `mymaster`."""

    def __init__(self, net: Network, role: str, directory: Path, primary: RedisNode) -> None:
        self.net = net
        self.role = role
        self.directory = directory
        self.primary = primary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.net.address(self.role)

    @property
    def url(self) -> str:
        """eventd's --store for this Sentinel's service."""
        return f"redis+sentinel://{self.address}:{SENTINEL_PORT}/{SERVICE}/0"

    def start(self, replicas: int = 1) -> Sentinel:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {SENTINEL_PORT}\nbind 0.0.0.0\nprotected-mode no\ndir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} {self.primary.address} {REDIS_PORT} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        self.process = self.net.popen(self.role, [redis_binary(), str(config), "--sentinel"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: self.master() == self.primary.address, 15, 0.05,
                   "the sentinel to report the primary")
        wait_until(lambda: len(self._ask("SENTINEL", "replicas", SERVICE) or []) >= replicas,
                   20, 0.1, "the sentinel to discover the replica")
        return self

    def _ask(self, *command: str) -> Any:
        def ask() -> Any:
            client = redis.Redis(host=self.address, port=SENTINEL_PORT, socket_timeout=2,
                                 decode_responses=True)
            try:
                return client.execute_command(*command)
            except redis.RedisError:
                return None
            finally:
                client.close()
        return self.net.call(OBSERVER, ask)

    def master(self) -> str | None:
        """The address Sentinel names primary now."""
        answer = self._ask("SENTINEL", "get-master-addr-by-name", SERVICE)
        return str(answer[0]) if answer else None

    def failover(self, timeout: float = 20.0) -> str:
        """Promote the replica (SENTINEL FAILOVER); the new primary's address."""
        before = self.master()
        self._ask("SENTINEL", "FAILOVER", SERVICE)
        return wait_until(lambda: (lambda now: now if now and now != before else None)(
            self.master()), timeout, 0.1, "the sentinel to name a new primary")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Replica:
    """`eventd run` on a host of its own, one replica of the cluster; its log is a file."""

    def __init__(self, net: Network, role: str, workdir: Path, journal: Journal,
                 args: list[str], env: dict[str, str]) -> None:
        self.net = net
        self.role = role
        self.journal = journal
        self.args = args
        self.env = env
        self.log_path = workdir / f"{role}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def address(self) -> str:
        return self.net.address(self.role)

    def start(self) -> Replica:
        full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            log.write(f"--- started at {time.time():.3f} ---\n".encode())
            log.flush()
            self.process = self.net.popen(
                self.role, [sys.executable, "-m", "eventd", "run", *self.args,
                            "--metrics-addr", f"127.0.0.1:{METRICS_PORT}"],
                env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.paused = False
        self.journal.started(self.role, self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the process stops; its sockets stay open, the kernel still ACKs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: no lease released, no close frame sent."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.journal.ended(self.process.pid, "kill")
        self.paused = False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (after SIGCONT), then SIGKILL if it does not go."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
            self.journal.ended(self.process.pid, "exit")
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        """Its /metrics, read on its own loopback (no partition cuts the test off)."""
        def get() -> str:
            try:
                return requests.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=2).text
            except requests.RequestException:
                return ""
        return "" if self.paused else self.net.call(self.role, get)

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample's value from /metrics (None if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return None

    def leads(self) -> list[str]:
        """The namespaces whose stream it says it consumes (eventd_stream_leader)."""
        from prometheus_client.parser import text_string_to_metric_families

        led = []
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == "eventd_stream_leader" and sample.value == 1.0:
                    led.append(sample.labels["namespace"])
        return sorted(led)
