"""Typed, frozen settings built from an injected environment mapping and the command line.

Nothing here reads os.environ at import time; `Settings.from_env(environ)` is the one door.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eventd.errors import ConfigError

DEFAULT_STREAM_HOST = "wss://ws.cloud.docker.com/"
DEFAULT_REST_HOST = "https://cloud.docker.com/"


def _host(value: str, schemes: tuple[str, ...], variable: str) -> str:
    """Normalise a host URL to end in exactly one slash; reject other schemes."""
    parts = urlsplit(value.strip())
    if parts.scheme not in schemes or not parts.netloc:
        wanted = " or ".join(s + "://" for s in schemes)
        raise ConfigError(f"{variable} must be a {wanted} URL, got {value!r}")
    return value.strip().rstrip("/") + "/"


def parse_duration(value: str | int | float, name: str = "duration") -> float:
    """Parse `30`, `30s`, `500ms`, `10m`, `1h`, `1d` into seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
        for suffix in ("ms", "s", "m", "h", "d"):
            if text.endswith(suffix):
                number, factor = text[: -len(suffix)], units[suffix]
                break
        else:
            number, factor = text, 1.0
        try:
            seconds = float(number) * factor
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a duration (e.g. 30s, 10m, 1h)") from None
    if seconds < 0:
        raise ConfigError(f"{name}: {value!r} must not be negative")
    return seconds


def parse_addr(value: str, name: str = "--metrics-addr") -> tuple[str, int]:
    """Parse HOST:PORT (HOST may be empty for all interfaces; PORT may be 0)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}: {value!r} is not HOST:PORT")
    return (host.strip("[]") or "0.0.0.0", int(port))


@dataclass(frozen=True)
class Settings:
    """Everything the daemon needs to know, with the defaults the issues pin."""

    stream_host: str = DEFAULT_STREAM_HOST
    rest_host: str = DEFAULT_REST_HOST
    namespace: str | None = None
    rules: tuple[Path, ...] = (Path("rules"),)
    metrics_addr: tuple[str, int] | None = None
    state_dir: Path = Path("state")
    record: Path | None = None
    log_format: str = "text"
    log_level: str = "INFO"
    on_auth_error: str = "exit"  # exit | wait
    auth_error_wait: float = 3600.0
    shutdown_timeout: float = 10.0
    ping_interval: float = 10.0
    pong_timeout: float = 10.0
    idle_timeout: float = 300.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    healthy_after: float = 30.0
    queue_size: int = 2048  # events between reader and engine (backpressure beyond)
    dedupe_window: int = 50_000  # event uuids remembered: between half of it and all of it
    max_event_age: float = 900.0
    #: SQLite `synchronous` for the spool. In WAL mode "NORMAL" keeps every committed action
    #: through a crash or SIGKILL of eventd (the WAL is in the OS page cache); "FULL" also
    #: through a power loss, at about 5x the cost per accepted action.
    spool_sync: str = "NORMAL"
    #: which store keeps that state: a name of `eventd.stores.STORES` ("sqlite", in
    #: `state_dir`; "memory": nothing kept across a restart), or a store URL.
    store: str = "sqlite"
    user_agent: str = "eventd"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from DOCKERCLOUD_* variables, then apply explicit overrides."""
        stream = environ.get("DOCKERCLOUD_STREAM_HOST") or environ.get("DOCKERCLOUD_STREAM_URL") \
            or DEFAULT_STREAM_HOST
        rest = environ.get("DOCKERCLOUD_REST_HOST") or DEFAULT_REST_HOST
        values: dict[str, Any] = {
            "stream_host": _host(stream, ("ws", "wss"), "DOCKERCLOUD_STREAM_HOST"),
            "rest_host": _host(rest, ("http", "https"), "DOCKERCLOUD_REST_HOST"),
            "namespace": (environ.get("DOCKERCLOUD_NAMESPACE") or "").strip("/ ") or None,
        }
        sync = environ.get("EVENTD_SPOOL_SYNC", "").strip().upper()
        if sync:
            if sync not in ("NORMAL", "FULL"):
                raise ConfigError(f"EVENTD_SPOOL_SYNC must be normal or full, got {sync.lower()!r}")
            values["spool_sync"] = sync
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)

    @property
    def stream_url(self) -> str:
        """`<stream host>/api/audit/v1/[<namespace>/]events/` (reference 1.1)."""
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.stream_host}api/audit/v1/{ns}events/"

    def rest_url(self, path: str) -> str:
        """The REST host joined with a resource path such as an event's resource_uri."""
        return self.rest_host + path.lstrip("/")
