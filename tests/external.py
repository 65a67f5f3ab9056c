"""Real Prometheus and Alertmanager for tests: Debian's binaries on free 127.0.0.1 ports.

Each server runs as a child process in a directory of its own, with a configuration file
written from the arguments, and is stopped (SIGTERM, then SIGKILL) whatever the test did.
A missing binary skips the test, with the apt-get line that installs it; under CI (`CI=true`)
it fails instead, so that CI cannot go green by running none of these tests.

Fixtures (re-exported by tests/conftest.py), each yielding a base URL such as
`http://127.0.0.1:40123`:

- `prometheus`: scrapes `prometheus_targets` (`{job: ["host:port", ...]}`) every second,
  evaluates `prometheus_rule_files` every second, and sends alerts to
  `prometheus_alertmanager_url` when it is not None. All three default to nothing; a test
  module overrides them by defining fixtures of the same names.
- `alertmanager`: routes every alert to `alertmanager_webhook_url` (by default the test's
  `webhook_receiver`, path `/alertmanager`) with group_wait 1s, group_interval 1s and
  resolve_timeout 5s, so that a firing or resolved alert arrives within seconds.

For other settings, build `Prometheus(...)` or `Alertmanager(...)` directly and use it as a
context manager.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.receiver import WebhookReceiver
from tests.waiting import wait_until

#: Debian installs its binaries here; looked at when they are not on PATH.
DEBIAN_BIN = Path("/usr/bin")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# -- binaries ----------------------------------------------------------------------------------
def require_binary(*names: str, package: str) -> str:
    """The path of the first of `names` found; skip the test if none (fail it under CI=true)."""
    for name in names:
        path = shutil.which(name) or shutil.which(name, path=str(DEBIAN_BIN))
        if path:
            return path
    message = (f"{' or '.join(names)} not found on PATH or in {DEBIAN_BIN}; "
               f"install with: apt-get install {package}")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: CI must run these tests, not skip them)", pytrace=False)
    pytest.skip(message)


def promtool() -> str:
    return require_binary("promtool", package="prometheus")


def prometheus_binary() -> str:
    return require_binary("prometheus", package="prometheus")


def alertmanager_binary() -> str:
    # Debian names it prometheus-alertmanager; upstream's tarball, alertmanager.
    return require_binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")


def free_port() -> int:
    """A port nothing listens on right now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- servers -----------------------------------------------------------------------------------
class ExternalServer:
    """A server binary run as a child process, with its configuration and data in `workdir`."""

    name = "server"
    config_name = "config.yml"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    # What a subclass provides.
    def binary(self) -> str:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def arguments(self) -> list[str]:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / self.config_name

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Write the configuration, start the binary, and wait until `/-/ready` answers 200."""
        binary = self.binary()
        for attempt in range(3):  # another process may take the free port before we bind it
            self.port = free_port()
            self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen([binary, *self.arguments()], cwd=self.workdir,
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                wait_until(self._ready, timeout, interval=0.05, message=f"{self.name} ready")
                return self
            except _Exited:
                if "address already in use" in self.log_tail() and attempt < 2:
                    continue
                raise AssertionError(f"{self.name} exited with {self.process.returncode} "
                                     f"before it was ready:\n{self.log_tail()}") from None
            except AssertionError:
                self.stop()
                raise AssertionError(f"{self.name} not ready within {timeout}s:\n"
                                     f"{self.log_tail()}") from None
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise _Exited()
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it is still running after STOP_TIMEOUT seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Exited(Exception):
    """The child process ended while we waited for it to be ready."""


class Prometheus(ExternalServer):
    """A Prometheus that scrapes `targets` and evaluates `rule_files`, every second by default."""

    name = "prometheus"
    config_name = "prometheus.yml"

    def __init__(self, workdir: Path, targets: Mapping[str, Sequence[str]] | None = None,
                 rule_files: Sequence[Path] = (), alertmanager_url: str | None = None,
                 scrape_interval: str = "1s", evaluation_interval: str = "1s") -> None:
        super().__init__(workdir)
        self.targets = dict(targets or {})
        self.rule_files = [Path(path).resolve() for path in rule_files]
        self.alertmanager_url = alertmanager_url
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval

    def binary(self) -> str:
        return prometheus_binary()

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.evaluation_interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
                               for job, targets in self.targets.items()],
            "rule_files": [str(path) for path in self.rule_files],
        }
        if self.alertmanager_url:
            url = urlsplit(self.alertmanager_url)
            config["alerting"] = {"alertmanagers": [{
                "scheme": url.scheme, "path_prefix": url.path or "/",
                "static_configs": [{"targets": [url.netloc]}]}]}
        return config

    def arguments(self) -> list[str]:
        return [f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]

    # -- the HTTP API ------------------------------------------------------------------------
    def query(self, expr: str) -> dict[str, Any]:
        """The whole answer of `/api/v1/query`: `status`, then `data` or `error`."""
        return query(self.url, expr)


class Alertmanager(ExternalServer):
    """An Alertmanager that routes every alert to `webhook_url` (or nowhere), without clustering."""

    name = "alertmanager"
    config_name = "alertmanager.yml"

    def __init__(self, workdir: Path, webhook_url: str | None = None,
                 group_by: Sequence[str] = ("alertname",), group_wait: str = "1s",
                 group_interval: str = "1s", repeat_interval: str = "1h",
                 resolve_timeout: str = "5s") -> None:
        super().__init__(workdir)
        self.webhook_url = webhook_url
        self.group_by = list(group_by)
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.resolve_timeout = resolve_timeout

    def binary(self) -> str:
        return alertmanager_binary()

    def config(self) -> dict[str, Any]:
        receiver: dict[str, Any] = {"name": "test"}
        if self.webhook_url:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True}]
        return {
            "global": {"resolve_timeout": self.resolve_timeout},
            "route": {"receiver": "test", "group_by": self.group_by,
                      "group_wait": self.group_wait, "group_interval": self.group_interval,
                      "repeat_interval": self.repeat_interval},
            "receivers": [receiver],
        }

    def arguments(self) -> list[str]:
        return [f"--config.file={self.config_path}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address="]  # empty: no gossip port, no peers

    # -- the HTTP API ------------------------------------------------------------------------
    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (`GET /api/v2/alerts`)."""
        answer = requests.get(f"{self.url}/api/v2/alerts", timeout=5)
        answer.raise_for_status()
        return list(answer.json())


def query(base_url: str, expr: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a Prometheus at `base_url` for `expr` now; the JSON answer, error or not."""
    answer = requests.get(f"{base_url}/api/v1/query", params={"query": expr}, timeout=timeout)
    body: dict[str, Any] = answer.json()
    return body


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def prometheus_targets() -> dict[str, list[str]]:
    """Scrape targets of the `prometheus` fixture, by job name; override in a test module."""
    return {}


@pytest.fixture
def prometheus_rule_files() -> list[Path]:
    """Rule files the `prometheus` fixture evaluates; override in a test module."""
    return []


@pytest.fixture
def prometheus_alertmanager_url() -> str | None:
    """Where the `prometheus` fixture sends alerts (e.g. return `alertmanager`); none by default."""
    return None


@pytest.fixture
def prometheus(tmp_path_factory: pytest.TempPathFactory, prometheus_targets: dict[str, list[str]],
               prometheus_rule_files: list[Path],
               prometheus_alertmanager_url: str | None) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1: its base URL."""
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), targets=prometheus_targets,
                        rule_files=prometheus_rule_files,
                        alertmanager_url=prometheus_alertmanager_url)
    with server:
        yield server.url


@pytest.fixture
def alertmanager_webhook_url(webhook_receiver: WebhookReceiver) -> str | None:
    """Where the `alertmanager` fixture sends notifications; override in a test module."""
    return f"{webhook_receiver.url}/alertmanager"


@pytest.fixture
def alertmanager(tmp_path_factory: pytest.TempPathFactory,
                 alertmanager_webhook_url: str | None) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1: its base URL."""
    server = Alertmanager(tmp_path_factory.mktemp("alertmanager"), webhook_url=alertmanager_webhook_url)
    with server:
        yield server.url
