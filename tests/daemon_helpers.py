"""Start a real Daemon against the emulator, with timings short enough for tests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from eventd.clients.dockercloud.auth import load_credentials
from eventd.daemon import Daemon
from eventd.ops.metrics import Metrics
from eventd.settings import Settings

FAST = {
    "ping_interval": 0.5, "pong_timeout": 0.5, "backoff_initial": 0.05, "backoff_max": 0.3,
    "healthy_after": 1.0, "shutdown_timeout": 5.0,
}


def emulator_env(emu: Any, **extra: str) -> dict[str, str]:
    """The environment a user would export after `eventd emulate`."""
    env = {
        "DOCKERCLOUD_REST_HOST": emu.rest_url,
        "DOCKERCLOUD_STREAM_HOST": emu.stream_url,
        "DOCKERCLOUD_USER": "user",
        "DOCKERCLOUD_APIKEY": "apikey",
        "HOME": "/nonexistent",
    }
    env.update(extra)
    return env


def write_rules(directory: Path, text: str, name: str = "rules.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def forward_rules(tmp_path: Path, url: str) -> Path:
    """Rule `forward`: every container event's uuid to the webhook receiver's /hook."""
    webhook = {"url": f"{url}/hook", "json": {"uuid": "{{ event.uuid }}"}}
    rule = {"name": "forward", "match": {"type": "container"}, "actions": [{"webhook": webhook}]}
    return write_rules(tmp_path / "rules", json.dumps({"rules": [rule]}))  # YAML reads JSON


def start_daemon(emu: Any, rules: Path, state_dir: Path, env: dict[str, str] | None = None,
                 **overrides: Any) -> Daemon:
    environ = env if env is not None else emulator_env(emu)
    options = dict(FAST)
    options.update(overrides)
    settings = Settings.from_env(environ, rules=(rules,), state_dir=state_dir, **options)
    daemon = Daemon(settings, load_credentials(environ), environ, Metrics())
    daemon.start()
    return daemon


# -- eventd as a process ------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eventd_process(*args: str, env: dict[str, str], **kwargs: Any) -> Any:
    """`python -m eventd ARGS` with only `env` (plus PATH), output captured as text."""
    import os
    import subprocess
    import sys

    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
    full_env.update(env)
    return subprocess.Popen([sys.executable, "-m", "eventd", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def is_ready(port: int) -> bool:
    """Whether eventd's /readyz on `port` answers 200 (connected, rules loaded, state usable)."""
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
