"""Choosing the source: --source / EVENTD_SOURCE, and the Engine's address from DOCKER_*."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker

from eventd.clients.docker import engine_environ
from eventd.settings import Settings
from tests.docker_engine import DockerEngine
from tests.waiting import wait_until

RULES = Path(__file__).resolve().parent.parent / "rules" / "docker"


def eventd(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "eventd", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=30, cwd=cwd)


def test_an_unknown_source_is_exit_2_with_a_suggestion(tmp_path: Path):
    result = eventd("run", "--source", "dokcer", "--rules", str(RULES), "--state-dir",
                    str(tmp_path / "s"), env={}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "unknown source 'dokcer'" in result.stderr and "did you mean 'docker'" in result.stderr


def test_the_docker_source_needs_no_docker_cloud_credentials(tmp_path: Path):
    # No DOCKERCLOUD_* anywhere: what stops it is the missing Engine, not missing credentials.
    result = eventd("run", "--rules", str(RULES), "--state-dir", str(tmp_path / "s"),
                    env={"EVENTD_SOURCE": "docker", "DOCKER_HOST": f"unix://{tmp_path}/x.sock"},
                    cwd=tmp_path)
    assert result.returncode == 2
    assert "credentials" not in result.stderr.lower() and "Docker Engine" in result.stderr


def test_the_flag_wins_over_the_environment(tmp_path: Path):
    # EVENTD_SOURCE=docker, but --source dockercloud: the Docker Cloud credentials are asked for.
    result = eventd("run", "--source", "dockercloud", "--rules", str(RULES), "--state-dir",
                    str(tmp_path / "s"), env={"EVENTD_SOURCE": "docker"}, cwd=tmp_path)
    assert result.returncode == 2 and "credentials" in result.stderr.lower()


def test_docker_variables_reach_the_client_as_the_docker_cli_reads_them(tmp_path: Path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    settings = Settings.from_env({"DOCKER_HOST": "tcp://engine.example:2376",
                                  "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)})
    assert settings.docker_host == "tcp://engine.example:2376"
    kwargs = docker.utils.kwargs_from_env(environment=engine_environ(settings))
    assert kwargs["base_url"] == "tcp://engine.example:2376"
    assert kwargs["tls"].verify is True and kwargs["tls"].ca_cert == str(tmp_path / "ca.pem")
    assert kwargs["tls"].cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    default = Settings.from_env({})
    assert engine_environ(default) == {"DOCKER_HOST": "unix:///var/run/docker.sock"}
    assert default.source == "dockercloud"


def test_eventd_run_source_docker_serves_ready_and_stops_with_0(docker_engine: DockerEngine,
                                                               tmp_path: Path):
    import requests

    from tests.external import free_port

    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DOCKER_HOST": docker_engine.host}
    process = subprocess.Popen(
        [sys.executable, "-m", "eventd", "run", "--source", "docker", "--rules", str(RULES),
         "--state-dir", str(tmp_path / "s"), "--metrics-addr", f"127.0.0.1:{port}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_until(ready, 15, interval=0.1, message="/readyz answers 200")
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert 'eventd_source_info{source="docker"} 1.0' in text
        assert "eventd_stream_connected 1.0" in text
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert "source docker: Docker Engine" in stderr


def test_without_the_engine_packages_the_tests_skip_or_fail_under_ci(monkeypatch, tmp_path: Path):
    import pytest

    import tests.docker_engine as engine_fixture

    monkeypatch.setattr(engine_fixture, "SEARCH_PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install docker.io busybox-static"):
        engine_fixture.require_engine_binaries()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: CI must run these tests"):
        engine_fixture.require_engine_binaries()
