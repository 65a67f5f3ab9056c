"""Credentials for the Docker Cloud APIs, found as the official SDKs found them.

Precedence (reference 4.2, python SDK and CLI): DOCKERCLOUD_AUTH, then DOCKERCLOUD_USER +
DOCKERCLOUD_APIKEY, then DOCKERCLOUD_USER + DOCKERCLOUD_PASS, then ~/.docker/config.json.
Each secret variable may instead name a file (`DOCKERCLOUD_AUTH_FILE`, `DOCKERCLOUD_APIKEY_FILE`,
`DOCKERCLOUD_PASS_FILE`), as Docker secrets and Kubernetes mount them.
The secret never leaves this object except through `header`; its repr is redacted.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eventd.errors import ConfigError, CredentialsMissing
from eventd.settings import read_secret_files

DOCKER_HUB = "https://index.docker.io/v1/"

LOOKED_FOR = (
    "DOCKERCLOUD_AUTH (or _FILE), DOCKERCLOUD_USER with DOCKERCLOUD_APIKEY (or _FILE), "
    "DOCKERCLOUD_USER with DOCKERCLOUD_PASS (or _FILE), or an auth for "
    "https://index.docker.io/v1/ in ~/.docker/config.json"
)


@dataclass(frozen=True)
class Credentials:
    """An `Authorization` header value and where it came from (safe to log: `source`, `user`)."""

    header: str = field(repr=False)
    source: str
    user: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r}, user={self.user!r}, header='***')"

    __str__ = __repr__

    @classmethod
    def basic(cls, user: str, secret: str, source: str) -> Credentials:
        """`Basic base64(user:secret)`, as python-dockercloud built it."""
        token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        return cls(header=f"Basic {token}", source=source, user=user)

    @property
    def account(self) -> str | None:
        """The user name these credentials act as (a Basic DOCKERCLOUD_AUTH names it too), if
        known: the user's own Docker Cloud namespace."""
        if self.user:
            return self.user
        scheme, _, token = self.header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user = base64.b64decode(token, validate=True).decode("utf-8").partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return None
        return user or None

    def secrets(self) -> list[str]:
        """Strings that must never appear in output (the header and its token part)."""
        values = [self.header]
        _, _, token = self.header.partition(" ")
        if token:
            values.append(token)
            try:
                decoded = base64.b64decode(token, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            _, sep, secret = decoded.partition(":")
            if sep and len(secret) >= 4:
                values.append(secret)
        return [v for v in values if v]


def load_credentials(environ: Mapping[str, str], home: Path | None = None) -> Credentials:
    """Find credentials in the SDKs' order; raise CredentialsMissing naming what was looked for.

    A `_FILE` variable that cannot be used is CredentialsMissing too (exit 2), naming the
    variable and the path, never the content.
    """
    original = environ
    try:
        environ = read_secret_files(environ, ("DOCKERCLOUD_AUTH", "DOCKERCLOUD_APIKEY",
                                              "DOCKERCLOUD_PASS"))
    except ConfigError as exc:
        raise CredentialsMissing(str(exc)) from None

    def name(variable: str) -> str:
        return f"{variable}_FILE" if original.get(f"{variable}_FILE") else variable

    auth = environ.get("DOCKERCLOUD_AUTH", "").strip()
    if auth:
        return Credentials(header=auth, source=name("DOCKERCLOUD_AUTH"),
                           user=environ.get("DOCKERCLOUD_USER"))
    user = environ.get("DOCKERCLOUD_USER", "").strip()
    if user and environ.get("DOCKERCLOUD_APIKEY"):
        return Credentials.basic(user, environ["DOCKERCLOUD_APIKEY"],
                                 f"DOCKERCLOUD_USER+{name('DOCKERCLOUD_APIKEY')}")
    if user and environ.get("DOCKERCLOUD_PASS"):
        return Credentials.basic(user, environ["DOCKERCLOUD_PASS"],
                                 f"DOCKERCLOUD_USER+{name('DOCKERCLOUD_PASS')}")
    found = _from_docker_config(home if home is not None else _home(environ))
    if found is not None:
        return found
    raise CredentialsMissing(f"no Docker Cloud credentials found; looked for {LOOKED_FOR}")


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HOME") or os.path.expanduser("~"))


def _from_docker_config(home: Path) -> Credentials | None:
    """Read ~/.docker/config.json as python-dockercloud did (DOCKER_CONFIG is ignored, as there)."""
    path = home / ".docker" / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_creds_store(store)
        if found is not None:
            return found
    entry = (config.get("auths") or {}).get(DOCKER_HUB)
    if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
        token = entry["auth"]
        try:
            user = base64.b64decode(token).decode("utf-8").partition(":")[0] or None
        except (ValueError, UnicodeDecodeError):
            user = None
        return Credentials(header=f"Basic {token}", source="~/.docker/config.json", user=user)
    return None


def _from_creds_store(store: str) -> Credentials | None:
    import subprocess  # only for a credsStore: 0.28 MiB that `eventd run` rarely needs

    try:
        done = subprocess.run(
            [f"docker-credential-{store}", "get"], input=DOCKER_HUB, capture_output=True,
            text=True, timeout=10, check=False,
        )
        data = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if isinstance(data, dict) and data.get("Username") and data.get("Secret"):
        return Credentials.basic(data["Username"], data["Secret"], f"credsStore {store}")
    return None
