"""deploy/Dockerfile, built and run by a real Docker Engine, as a production user would run it.

No registry is reachable here: the base is Debian bookworm made by debootstrap and imported
(tests/image_build.py caches it), the wheels come from the lock, and the build runs with
`--network none` and `PIP_NO_INDEX=1`, so the image holds exactly the lock's versions.

The Engine runs with `--bridge=none`, so the container that must reach the host's emulator
shares the host's network (`network_mode=host`) and serves /metrics on a free loopback port
(EVENTD_METRICS_ADDR, which the HEALTHCHECK reads); the demo runs with no network at all.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import image_build
from tests.daemon_helpers import free_port
from tests.docker_engine import DockerEngine
from tests.waiting import wait_until

pytestmark = [pytest.mark.locked, pytest.mark.timeout(1500)]

TAG = "eventd-test-image:latest"
APIKEY = "image-test-apikey-4b1d"
TMPFS = {"/tmp": "rw,nosuid,nodev,size=64m"}


@pytest.fixture(scope="module")
def image(docker_engine: DockerEngine) -> Iterator[dict[str, Any]]:
    """The image, built once for this module; yields its inspect data (plus the build time)."""
    base_tar = image_build.base_tarball()
    wheels = image_build.wheelhouse()
    base = f"{image_build.BASE_IMAGE}:{base_tar.stem.rsplit('-', 1)[-1]}"
    with docker_engine.client(timeout=600) as client:
        if not client.images(name=base):
            repository, tag = base.split(":")
            client.import_image_from_file(str(base_tar), repository=repository, tag=tag)
        context = image_build.build_context(wheels)
        started = time.monotonic()
        log: list[str] = []
        for chunk in client.build(fileobj=io.BytesIO(context), custom_context=True,
                                  dockerfile="deploy/Dockerfile", tag=TAG, network_mode="none",
                                  buildargs={"BASE": base, "PIP_NO_INDEX": "1"}, rm=True,
                                  forcerm=True, pull=False, decode=True):
            log.append(chunk.get("stream", "") or json.dumps(chunk))
            if "error" in chunk:
                raise AssertionError("docker build failed:\n" + "".join(log)[-5000:])
        seconds = time.monotonic() - started
        info = client.inspect_image(TAG)
        info["build_seconds"] = seconds
        info["base_size"] = client.inspect_image(base)["Size"]
        yield info


def run(engine: DockerEngine, name: str, command: list[str] | None = None, *,
        network: str = "none", environment: dict[str, str] | None = None,
        healthcheck: dict[str, Any] | None = None, **host_config: Any) -> str:
    """Start a container of the image: read-only, a tmpfs on /tmp, the image's user."""
    engine.remove(name)
    # vfs copies the whole image at create time: minutes on a busy machine, not seconds
    with engine.client(timeout=600) as client:
        config = client.create_host_config(network_mode=network, read_only=True, tmpfs=TMPFS,
                                           **host_config)
        created = client.create_container(TAG, command, name=name, environment=environment or {},
                                          healthcheck=healthcheck, host_config=config)
        client.start(created["Id"])
        return str(created["Id"])


def finish(engine: DockerEngine, name: str, timeout: float = 180) -> tuple[int, str]:
    """Wait for a container to exit; its exit code and its output."""
    with engine.client(timeout=timeout + 10) as client:
        code = client.wait(name, timeout=timeout)["StatusCode"]
        output = client.logs(name, stdout=True, stderr=True).decode(errors="replace")
    return int(code), output


def state(engine: DockerEngine, name: str) -> dict[str, Any]:
    with engine.client() as client:
        return client.inspect_container(name)["State"]  # type: ignore[no-any-return]


def test_the_image_is_built_offline_from_the_lock(image: dict[str, Any], docker_engine: DockerEngine,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    name = "eventd-image-packages"
    try:
        run(docker_engine, name, ["sh", "-c", "python -c 'import platform; print(platform.python_version())'"
                                  " && python -m pip list --format=freeze --disable-pip-version-check"])
        code, output = finish(docker_engine, name)
    finally:
        docker_engine.remove(name)
    assert code == 0, output
    python, *lines = output.split()
    installed = dict(line.split("==", 1) for line in lines if "==" in line)
    locked = image_build.locked_versions(image_build.RUNTIME_LOCK, python)
    runtime = {n: v for n, v in locked.items() if n not in ("setuptools", "wheel")}
    assert {image_build.canonical(n): v for n, v in installed.items() if n != "pip"} == \
        {**runtime, "eventd": image_build.eventd_version()}
    assert image["Config"]["User"] == "10001:10001"
    with capsys.disabled():
        print(f"\nimage {TAG}: {image['Size'] / 1e6:.1f} MB, of which the debootstrap bookworm "
              f"base {image['base_size'] / 1e6:.1f} MB, Python {python} "
              f"(built in {image['build_seconds']:.0f} s, --network none); installed: "
              + " ".join(f"{n}=={v}" for n, v in sorted(installed.items())))


def test_the_demo_passes_as_uid_10001_on_a_read_only_root(image: dict[str, Any],
                                                          docker_engine: DockerEngine) -> None:
    name = "eventd-image-demo"
    try:
        run(docker_engine, name, ["sh", "-c", "id -u; id -g; exec eventd demo --speed 5"])
        code, output = finish(docker_engine, name)
    finally:
        docker_engine.remove(name)
    assert code == 0, output[-4000:]
    assert output.split()[:2] == ["10001", "10001"]
    assert "alerts received" in output


@pytest.fixture
def emulator_with_key() -> Iterator[Any]:
    """The emulator on the host's loopback, accepting only user:APIKEY."""
    from eventd.emulator import Emulator

    emu = Emulator(user="user", apikey=APIKEY, tick=0.02)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def test_eventd_run_with_a_file_secret_is_healthy_and_stops_on_sigterm(
        image: dict[str, Any], docker_engine: DockerEngine, emulator_with_key: Any,
        tmp_path: Path) -> None:
    emulator = emulator_with_key
    # The key as a file, mounted read-only, readable by the container's user (uid 10001).
    secret = tmp_path / "apikey"
    secret.write_text(APIKEY + "\n")
    secret.chmod(0o644)
    port = free_port()
    command = list(image["Config"]["Cmd"])
    command[command.index("--metrics-addr") + 1] = f"127.0.0.1:{port}"
    environment = {
        "DOCKERCLOUD_USER": "user", "DOCKERCLOUD_APIKEY_FILE": "/run/secrets/apikey",
        "DOCKERCLOUD_REST_HOST": emulator.rest_url, "DOCKERCLOUD_STREAM_HOST": emulator.stream_url,
        "EVENTD_METRICS_ADDR": f"127.0.0.1:{port}",
    }
    # The image's HEALTHCHECK command, probed every second instead of every 30 s.
    fast = {"test": None, "interval": 1_000_000_000, "timeout": 4_000_000_000, "retries": 3,
            "start_period": 10_000_000_000}
    name = "eventd-image-run"
    try:
        run(docker_engine, name, command, network="host", environment=environment,
            healthcheck=fast, binds={str(secret): {"bind": "/run/secrets/apikey", "mode": "ro"}})
        wait_until(lambda: state(docker_engine, name)["Health"]["Status"] == "healthy"
                   or not state(docker_engine, name)["Running"], 90, interval=0.5,
                   message="the container's HEALTHCHECK reports healthy")
        health = state(docker_engine, name)
        assert health["Health"]["Status"] == "healthy", health
        with docker_engine.client() as client:  # the image's own probe, only its interval changed
            probe = client.inspect_container(name)["Config"]["Healthcheck"]["Test"]
        assert probe == image["Config"]["Healthcheck"]["Test"] and "/healthz" in probe[-1]
        assert any(h.status == 101 for h in emulator.handshakes()), "no accepted stream handshake"
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        with docker_engine.client() as client:
            stopped_at = time.monotonic()
            client.kill(name, signal="SIGTERM")
        code, output = finish(docker_engine, name, timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        docker_engine.remove(name)
    assert code == 0, output[-4000:]
    assert took < 10, f"SIGTERM took {took:.1f} s"
    assert APIKEY not in output
