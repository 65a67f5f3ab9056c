"""Redis for tests: the shared server (127.0.0.1:6379, or REDIS_URL) and servers a test starts.

- `shared_redis_url()`: the URL of the Redis every machine of ours and CI runs. When nothing
  answers there the test is skipped with what to install, or fails under CI=true (CI must run
  these tests, not skip them).
- `redis_cluster` fixture: a cluster name (key prefix) of the test's own; its keys are deleted
  afterwards, so tests never see each other's state.
- `RedisServer`: a `redis-server` child on a free port (`--save '' --appendonly no`), that a
  test can pause (SIGSTOP: Redis answers nothing), resume, or kill; always stopped at the end.
- `SentinelSet`: a primary, a replica and one `redis-server --sentinel` watching them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Self

import pytest
import redis

from tests.external import free_port, require_binary
from tests.waiting import wait_until

DEFAULT_URL = "redis://127.0.0.1:6379/0"
INSTALL = "redis-server"  # the Debian package with redis-server and its Sentinel mode


def shared_redis_url() -> str:
    """REDIS_URL or the local default; skip (fail under CI=true) if it does not answer."""
    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        message = (f"no Redis answers at {url.rpartition('@')[2]} ({type(exc).__name__}); "
                   f"start one (apt-get install {INSTALL}) or set REDIS_URL")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: CI must run these tests, not skip them)",
                        pytrace=False)
        pytest.skip(message)
    return url


def delete_cluster(url: str, cluster: str) -> int:
    """Delete every key of `cluster` (its prefix); how many."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{cluster}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        return len(keys)
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    """The shared Redis' URL (skips when none answers)."""
    return shared_redis_url()


@pytest.fixture
def redis_cluster(redis_url: str) -> Iterator[str]:
    """A cluster name no other test uses; its keys are deleted afterwards."""
    cluster = f"test-{secrets.token_hex(6)}"
    try:
        yield cluster
    finally:
        delete_cluster(redis_url, cluster)


def redis_server_binary() -> str:
    return require_binary("redis-server", package=INSTALL)


class RedisServer:
    """One `redis-server` on a free 127.0.0.1 port, in its own directory."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None,
                 password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True)

    def start(self) -> Self:
        binary = redis_server_binary()
        secret = ("--requirepass", self.password) if self.password else ()
        self._log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), *secret, *self.extra],
            stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(self.answers, 15.0, 0.05, f"redis-server on port {self.port} to answer")
        except BaseException:
            self.stop()
            raise
        return self

    def answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its data and its port, and answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server must be able to die
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SentinelSet:
    """A primary, a replica of it and one Sentinel monitoring them as `mymaster` (quorum 1);
    started once the replica is in sync (a write can be confirmed by it: WAIT)."""

    SERVICE = "mymaster"
    #: a replica's first sync starts at once (Redis' default waits 5 s for more replicas)
    _SYNC_NOW = ("--repl-diskless-sync-delay", "0")

    def __init__(self, directory: Path, down_after_ms: int = 1000) -> None:
        """`down_after_ms`: how long a server answers nothing before Sentinel counts it down."""
        self.directory = directory
        self.down_after_ms = down_after_ms
        self.primary = RedisServer(directory / "primary", *self._SYNC_NOW)
        self.replica = RedisServer(directory / "replica")
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True)

    def master_port(self) -> int | None:
        client = self.sentinel_client()
        try:
            answer = client.execute_command("SENTINEL", "get-master-addr-by-name", self.SERVICE)
            return int(answer[1]) if answer else None
        except redis.RedisError:
            return None
        finally:
            client.close()

    def start(self) -> Self:
        self.primary.start()
        self.replica.extra = (*self._SYNC_NOW, "--replicaof", "127.0.0.1",
                              str(self.primary.port))
        self.replica.start()
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.SERVICE} 5000\n"
            f"sentinel parallel-syncs {self.SERVICE} 1\n")
        self.sentinel = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: self.master_port() == self.primary.port, 15.0, 0.05,
                   "the sentinel to report the primary")

        def replica_known() -> bool:  # connected, and its INFO read: one it can promote
            client = self.sentinel_client()
            try:
                return any(r.get("flags") == "slave" and r.get("runid") for r in
                           client.execute_command("SENTINEL", "replicas", self.SERVICE))
            except redis.RedisError:
                return False
            finally:
                client.close()

        self.wait_in_sync()
        wait_until(replica_known, 20.0, 0.1, "the sentinel to discover the replica")
        return self

    def wait_in_sync(self, timeout: float = 20.0) -> None:
        """Until the replica has finished its sync with the primary (its link is up)."""
        def in_sync() -> bool:
            client = self.replica.client()
            try:
                return client.info("replication").get("master_link_status") == "up"
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_until(in_sync, timeout, 0.05, "the replica to be in sync")

    def failover(self) -> None:
        """Promote the replica (SENTINEL FAILOVER) and wait until Sentinel names it."""
        client = self.sentinel_client()
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.SERVICE)
        finally:
            client.close()
        wait_until(lambda: self.master_port() == self.replica.port, 20.0, 0.1,
                   "the sentinel to name the replica primary")

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            try:
                self.sentinel.wait(10)
            except subprocess.TimeoutExpired:
                self.sentinel.kill()
        self.replica.stop()
        self.primary.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
