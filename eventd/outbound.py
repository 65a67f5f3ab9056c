"""What an action would send, as plain records: the gate checks them, the kind sends them as is.

An action kind turns a job into an `Outbound` (`prepare`): the calls it would make, each a
method, an `Address` and headers. The delivery layer hands it to the gate
(`eventd.delivery.gate`), and only an admitted Outbound is sent. URLs are parsed once, here,
strictly: the kind sends `Address.url`, rebuilt from the parts the gate checked, never the
string it was parsed from (a backslash, a second `@` or a control character make parsers
disagree about the host, so they are refused rather than guessed at).

Imports nothing of eventd, so that actions, delivery and stores can all use it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = ["Address", "BadAddress", "Call", "Outbound", "parse_url"]

#: default ports, so that an origin always names one (`https://h:443`)
DEFAULT_PORTS: dict[str, int] = {
    "http": 80, "https": 443, "ws": 80, "wss": 443, "nats": 4222, "tls": 4222, "mqtt": 1883,
    "mqtts": 8883, "amqp": 5672, "amqps": 5671, "postgres": 5432, "postgresql": 5432,
}
HTTP_SCHEMES = ("http", "https")
#: the lease a cluster's replica acts under, `<cluster>/<namespace>:<token>`, on every write
#: (stream handshake, action request): a server that keeps the highest seen refuses older ones
FENCING_HEADER = "Eventd-Fencing-Token"
MAX_URL = 8192

#: characters two URL parsers read differently (WHATWG turns `\` into `/` and drops tabs and
#: newlines; RFC 3986 parsers keep them): refused anywhere in a URL
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPED = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_SAFE = "!$&'()*+,;=:@/-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


class BadAddress(ValueError):
    """An address refused rather than guessed at (`reason`: the gate's label); the message
    never repeats it."""

    def __init__(self, message: str, reason: str = "url") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Address:
    """Where one call goes, in parts: the gate checks these, the sender sends exactly these.

    HTTP kinds: a URL's scheme, host, port, path and query (percent-encoded the way requests
    sends them). Broker and database kinds: their scheme, host and port, and in `path` the
    subject, topic, `exchange/routing-key` or table. The Engine (`docker`): `path` is the
    container's full id. Local writes (`file`, `log`): `path` is the file. `host` is lower
    case, without brackets for IPv6; `port` is 0 where there is none.
    """

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    query: str = ""

    @property
    def origin(self) -> str:
        """`scheme://host:port`: what logs and queue names may show of an HTTP address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to send, rebuilt from the parts (the default port left out, as requests does)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS.get(self.scheme) == self.port else f":{self.port}"
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{host}{port}{self.path or '/'}{query}"

    @property
    def loopback(self) -> bool:
        """Whether the host is this machine (`localhost`, 127.0.0.0/8, ::1)."""
        if self.host == "localhost" or self.host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_url(url: str, schemes: tuple[str, ...] = HTTP_SCHEMES,
              fragment: bool = True) -> tuple[Address, str | None]:
    """A URL as an Address, and its user info (`user:password`, decoded) if it has one.

    A fragment is dropped (it is never sent), or with `fragment=False` refused: for a path
    built from data, what follows a `#` would silently not be part of the call.

    Raises BadAddress for anything two parsers could read differently: a backslash, a
    control character or space, more than one `@`, a percent sign or an odd character in the
    host, a numeric host that is not a plain dotted IPv4, a port that is not 1-65535.
    """
    text = url.strip()
    if len(text) > MAX_URL:
        raise BadAddress(f"url is longer than {MAX_URL} characters")
    if _AMBIGUOUS.search(text):
        raise BadAddress("url holds a backslash, a space or a control character")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        raise BadAddress(f"url must be a {' or '.join(s + '://' for s in schemes)} URL")
    if not fragment and "#" in rest:
        raise BadAddress("url holds a '#'")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    authority, rest = rest[:end], rest[end:].split("#", 1)[0]  # a fragment is never sent
    userinfo, at, hostport = authority.rpartition("@")
    if at and "@" in userinfo:
        raise BadAddress("url holds more than one '@'")
    host, port = _host_port(hostport, scheme)
    path, _, query = rest.partition("?")
    address = Address(scheme, host, port, _canonical(path or "/", _PATH_SAFE),
                      _canonical(query, _QUERY_SAFE))
    return address, (unquote(userinfo) if at else None)


def _host_port(hostport: str, scheme: str) -> tuple[str, int]:
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise BadAddress("url has an unclosed '[' in its host")
        literal, after = hostport[1:close], hostport[close + 1:]
        try:
            host = ipaddress.IPv6Address(literal).compressed  # a zone (`%eth0`) is refused too
        except ValueError:
            raise BadAddress("url host is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise BadAddress("url has characters after its IPv6 host")
        port_text = after[1:]
    else:
        if hostport.count(":") > 1:
            raise BadAddress("url host holds ':' (an IPv6 address goes in brackets)")
        name, _, port_text = hostport.partition(":")
        host = _host_name(name)
    if not port_text:
        port = DEFAULT_PORTS.get(scheme, 0)
    elif _PORT.fullmatch(port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise BadAddress("url port must be a number from 1 to 65535")
    return host, port


def _host_name(name: str) -> str:
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]  # the root's dot: the same host
    if not name:
        raise BadAddress("url has no host")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadAddress("url host is not a valid international domain name") from None
    if not _HOST_NAME.fullmatch(name):
        raise BadAddress("url host holds a character no host name has")
    last = name.rsplit(".", 1)[-1]
    if last.isdigit() or last.startswith("0x"):
        # `127.1`, `2130706433`, `0x7f.1` reach 127.0.0.1 through inet_aton, while a pattern or
        # a loopback test reads them as names: only the plain dotted form is a numeric host.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise BadAddress("url host is a number but not a dotted IPv4 address") from None
    return name


def _canonical(part: str, safe: str) -> str:
    """Percent-encoded as requests sends it: escapes of unreserved characters decoded, a stray
    `%` escaped, everything outside `safe` encoded."""
    part = _PERCENT.sub("%25", part)
    part = _ESCAPED.sub(_unreserved, part)
    return quote(part, safe=safe)


def _unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(0)[1:], 16))
    return char if char in _UNRESERVED else match.group(0).upper()


@dataclass(frozen=True, slots=True)
class Call:
    """One request as it goes on the wire."""

    #: the HTTP method; or the verb of a non-HTTP kind (restart, publish, insert, append)
    method: str
    address: Address
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    #: it carries a secret: an Authorization header, a key or token header, user info, an API
    #: key the client adds. The gate refuses that in clear to another machine.
    credentials: bool = False
    #: a client that follows redirects would send the headers and body where a server says:
    #: the gate refuses any call that declares it would
    follows_redirects: bool = False


@dataclass(frozen=True, slots=True)
class Outbound:
    """Everything one attempt of a job would send, and the gate policy that judges it.

    `policy` names one of the gate's policies (`http`, `dockercloud`, `docker`, `local`;
    see eventd.delivery.gate). `subject` is the object acted on (a resource URI, a container's
    full id), and `facts` what the policy needs besides the calls (docker: the name the
    Engine resolved, the target the job asked for).
    """

    kind: str
    policy: str
    calls: tuple[Call, ...]
    subject: str = ""
    facts: Mapping[str, str] = field(default_factory=dict)
