"""Finding the Engine as the docker CLI does, and saying in one line why it cannot be used.

The address comes from `DOCKER_HOST` (`unix:///var/run/docker.sock` by default), TLS from
`DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`, read once into Settings. docker-py wraps every
failure in a few layers (DockerException < requests < urllib3 < OSError); `describe_failure`
walks them to the cause a user can act on, with a bounded `reason` for metrics.
"""

from __future__ import annotations

import errno
import http.client
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import docker
import docker.constants
import docker.errors
import requests

if TYPE_CHECKING:
    from eventd.settings import Settings

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
#: seconds for a plain API call (the event stream itself has no read timeout)
API_TIMEOUT = 10.0


@dataclass(frozen=True)
class Failure:
    """Why the Engine could not be used: a bounded metric label and a line for people."""

    reason: str  # no_socket | permission_denied | connect_error | connect_timeout | not_an_engine
    #            | protocol_error | engine_error
    detail: str


def engine_environ(settings: Settings) -> dict[str, str]:
    """The DOCKER_* variables docker-py reads, from the settings (never os.environ)."""
    env = {"DOCKER_HOST": settings.docker_host or DEFAULT_DOCKER_HOST}
    if settings.docker_tls_verify is not None:
        env["DOCKER_TLS_VERIFY"] = settings.docker_tls_verify
    if settings.docker_cert_path:
        env["DOCKER_CERT_PATH"] = settings.docker_cert_path
    return env


def make_client(settings: Settings, timeout: float = API_TIMEOUT,
                version: str | None = None) -> docker.APIClient:
    """An API client speaking the Engine's API version (one GET /version; raises if unreachable).

    Negotiated here rather than with `version="auto"`, which asks from inside the constructor
    and leaves the half-built client's socket open when the Engine does not answer. `version`:
    one negotiated before (a client made per call need not ask again each time).
    """
    kwargs: dict[str, Any] = docker.utils.kwargs_from_env(environment=engine_environ(settings))
    _probe_unix_socket(str(kwargs.get("base_url", "")), timeout)
    if not version:
        probe = docker.APIClient(version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                                 timeout=timeout, **kwargs)
        try:
            answer = probe.version(api_version=False)
        finally:
            probe.close()
        version = answer.get("ApiVersion") if isinstance(answer, dict) else None
        if not isinstance(version, str) or not version:
            raise ValueError("GET /version has no ApiVersion: not a Docker Engine")
    # a version given to the constructor is used as it is (no request): docker-py's public way
    return docker.APIClient(version=version, timeout=timeout, **kwargs)


def _probe_unix_socket(url: str, timeout: float) -> None:
    """Connect once to a unix socket Engine and close it; raise the OSError if that fails.

    docker-py's unix connection leaks its socket when connect() fails (no socket, permission
    denied), once per retry; asking first keeps a long outage from piling up descriptors.
    """
    if not url.startswith(("unix://", "http+unix://")):
        return
    path = url.split("://", 1)[1]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        probe.connect(path)


def safe_address(url: str) -> str:
    """The Engine address for logs: no user info, no query."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "npipe", ""):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def describe_failure(exc: BaseException) -> Failure:
    """The cause of a docker-py failure, as a user can act on it."""
    chain = _chain(exc)
    for cause in chain:
        if isinstance(cause, docker.errors.APIError) and cause.response is not None:
            status = cause.response.status_code
            explanation = str(cause.explanation or "")[:120]
            if cause.response.headers.get("Api-Version") is None and status in (404, 405, 400):
                return Failure("not_an_engine", f"answered HTTP {status} ({explanation}): "
                                                "this is not a Docker Engine API")
            return Failure("engine_error", f"Engine answered HTTP {status}: {explanation}")
        if isinstance(cause, requests.HTTPError) and cause.response is not None:
            return Failure("not_an_engine", f"answered HTTP {cause.response.status_code}: "
                                            "this is not a Docker Engine API")
    for cause in chain:
        if isinstance(cause, http.client.RemoteDisconnected):
            return Failure("connect_error", "the connection was closed before an answer")
        if isinstance(cause, http.client.HTTPException):
            return Failure("protocol_error", "the socket does not speak HTTP "
                                             f"({type(cause).__name__}): not a Docker Engine")
        if isinstance(cause, (TimeoutError, requests.Timeout)):
            return Failure("connect_timeout", "no answer in time")
        if isinstance(cause, OSError) and cause.errno is not None:
            if cause.errno in (errno.EACCES, errno.EPERM):
                return Failure("permission_denied", "permission denied (eventd's user may not use "
                                                    "the Engine socket: see the README, Watching "
                                                    "Docker Engine)")
            if cause.errno == errno.ENOENT:
                return Failure("no_socket", "no such socket (is the Engine running? is DOCKER_HOST "
                                            "right?)")
            if cause.errno == errno.ECONNREFUSED:
                return Failure("connect_error", "connection refused (is the Engine running?)")
            return Failure("connect_error", f"{type(cause).__name__}: {cause.strerror or cause}")
    if any(isinstance(c, (ValueError, UnicodeError)) for c in chain):
        return Failure("protocol_error", "the answer is not the Docker Engine API's JSON")
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return Failure("connect_error", f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes, and the exceptions urllib3/requests keep in their args."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    return seen
