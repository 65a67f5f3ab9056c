"""What the emulator saw: recorded REST calls, stream handshakes and connections, for tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

# Query keys that carry credentials in legacy clients (`?user=&token=`, `?auth=`).
SECRET_KEYS = frozenset({"token", "auth", "apikey", "api_key", "password"})
# Headers whose values are credentials: shown as `<scheme> ***` unless revealed on purpose.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers for a listing: credential values replaced, their scheme (`Basic`) kept."""
    shown: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS:
            scheme, sep, _ = value.partition(" ")
            value = f"{scheme} ***" if sep else "***"
        shown[name] = value
    return shown


def redact_target(target: str) -> str:
    """A request target fit for logs: credential-looking query values replaced."""
    split = urlsplit(target)
    if not split.query:
        return target
    pairs = [(k, "***" if k.lower() in SECRET_KEYS else v)
             for k, v in parse_qsl(split.query, keep_blank_values=True)]
    return f"{split.path}?{urlencode(pairs, safe='/,:*')}"


class Headers(dict[str, str]):
    """A dict keeping the original header names, with case-insensitive lookup."""

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        super().__init__(items.items() if isinstance(items, Mapping) else items)

    def _key(self, name: str) -> str:
        if not dict.__contains__(self, name):
            lowered = name.lower()
            for key in self:
                if key.lower() == lowered:
                    return key
        return name

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(self._key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self._key(name))

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(self._key(name), default)


@dataclass(frozen=True)
class RecordedCall:
    """One REST call the emulator answered (control calls excluded)."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    json: Any
    status: int
    peer: str = ""  # the client's address:port
    at: float = 0.0  # time.monotonic() when it was answered

    def to_json(self, reveal: bool = False) -> dict[str, Any]:
        """The call as JSON for the control endpoint (credentials redacted unless `reveal`)."""
        headers = dict(self.headers) if reveal else redact_headers(self.headers)
        return {"method": self.method, "path": self.path, "query": dict(self.query),
                "headers": headers, "json": self.json, "status": self.status,
                "peer": self.peer, "at": self.at}


@dataclass(frozen=True)
class Handshake:
    """One websocket handshake attempt and the status it got (101 when accepted)."""

    path: str
    query: dict[str, str]
    headers: Headers
    status: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    peer: str = ""  # the client's address:port
    at: float = 0.0  # time.monotonic() when it was answered

    def to_json(self, reveal: bool = False) -> dict[str, Any]:
        """The handshake as JSON for the control endpoint (credentials redacted unless `reveal`)."""
        headers = dict(self.headers) if reveal else redact_headers(self.headers)
        return {"path": self.path, "query": dict(self.query), "headers": headers,
                "status": self.status}


@dataclass
class StreamConnection:
    """One accepted stream connection: its namespace and when it opened and closed.

    Times are `time.monotonic()` of the emulator's process; `closed` is None while open.
    With keepalive pings on, `last_pong` is when the client last answered one (a client
    that stopped answering was alive until then at least) and `ended` says who ended it:
    `client` (it closed or hung up), `keepalive` (no pong in time), `server` (stopped or a
    drop fault). `token` is the fencing-token header of its handshake, `frames` how many
    frames were written to it.
    """

    namespace: str
    peer: str
    opened: float
    closed: float | None = None
    token: str | None = None
    last_pong: float | None = None
    frames: int = 0
    ended: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The connection as JSON for the control endpoint."""
        return {"namespace": self.namespace, "peer": self.peer, "opened": self.opened,
                "closed": self.closed, "token": self.token, "last_pong": self.last_pong,
                "frames": self.frames, "ended": self.ended}
