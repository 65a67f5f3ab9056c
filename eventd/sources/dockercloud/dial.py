"""An abortable stream connection: the TCP connect, an HTTP proxy's CONNECT tunnel and the
TLS handshake, made here so that another thread can abort them.

websocket-client gives the connecting thread's socket to nobody until the TLS handshake is
done, and closes rather than shuts it down: a stream consumer stopped while a partition
held its connect up (its lease handed over, lost or expiring) could not be stopped, so its
lease was not freed but left to expire, up to a TTL without a consumer. `Dial.abort` shuts
the socket down from any thread (a Linux connect in SYN_SENT is disconnected by
`shutdown()`; a read waiting for the TLS or HTTP answer returns), through a duplicate of
its descriptor that the TLS wrap (which takes the original over) leaves alone.

Everything here is the standard library's public API plus websocket-client's public
`DEFAULT_SOCKET_OPTION`; it does what websocket-client's own connect does, so users see no
difference: the proxy comes from `https_proxy` (wss) or `http_proxy` (ws) and their upper-case
forms, skipped for a host `no_proxy` names (a name, a domain suffix, an address or a network,
or `*`), with Basic credentials from the proxy URL; TLS uses `sslopt["context"]` (eventd's own
context, for --ca-file and client certificates) or a verifying default context that honours
`WEBSOCKET_CLIENT_CA_BUNDLE` and `SSLKEYLOGFILE` as websocket-client does. The socket is then
handed to `WebSocket.connect(socket=...)` (public), which makes the HTTP upgrade on it.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from websocket import (
    DEFAULT_SOCKET_OPTION,
    WebSocketAddressException,
    WebSocketException,
    WebSocketProxyException,
)

#: a refused or unreachable address: the next one of the host's addresses is tried
_NEXT_ADDRESS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH})
#: the longest wait of a connect between two looks at `aborted`
_TICK = 0.1
#: the most a proxy's answer to CONNECT may take up (status line and headers)
_MAX_PROXY_ANSWER = 64 * 1024


class Aborted(OSError):
    """The connection was aborted by `Dial.abort` (the consumer is stopping)."""


class Proxy(NamedTuple):
    """An HTTP proxy to tunnel through, and its Basic credentials (or None)."""

    host: str
    port: int
    auth: tuple[str, str] | None


def target_of(url: str) -> tuple[str, int, bool]:
    """(host, port, secure) of a ws:// or wss:// URL; WebSocketException otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise WebSocketException(f"not a ws:// or wss:// URL with a host: scheme {scheme!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise WebSocketException(f"bad port in the stream URL: {exc}") from None
    secure = scheme == "wss"
    return parts.hostname, port or (443 if secure else 80), secure


def proxy_for(host: str, secure: bool, environ: Mapping[str, str] = os.environ) -> Proxy | None:
    """The proxy the environment names for `host`, as websocket-client reads it (None: none)."""
    if _no_proxy(host, environ):
        return None
    key = "https_proxy" if secure else "http_proxy"
    value = environ.get(key, environ.get(key.upper(), "")).replace(" ", "")
    if not value:
        return None
    parts = urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise WebSocketProxyException(f"bad port in {key}: {exc}") from None
    if not parts.hostname:
        raise WebSocketProxyException(f"{key} names no host")
    auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
    return Proxy(parts.hostname, port, auth)


def _no_proxy(host: str, environ: Mapping[str, str]) -> bool:
    value = environ.get("no_proxy", environ.get("NO_PROXY", "")).replace(" ", "")
    entries = [entry for entry in value.split(",") if entry]
    if "*" in entries or host in entries:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        for entry in entries:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except (ValueError, TypeError):
                continue
        return False
    for entry in entries:
        domain = entry.lstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def default_context(environ: Mapping[str, str] = os.environ) -> ssl.SSLContext:
    """websocket-client's default: verify the host and its certificate against the system's
    CAs, or those of WEBSOCKET_CLIENT_CA_BUNDLE (a file or a directory)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    keylog = environ.get("SSLKEYLOGFILE")
    if keylog is not None:
        context.keylog_filename = keylog
    bundle = environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")
    try:
        if bundle and os.path.isfile(bundle):
            context.load_verify_locations(cafile=bundle)
        elif bundle and os.path.isdir(bundle):
            context.load_verify_locations(capath=bundle)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise WebSocketException(f"SSL CA certificate loading failed: {exc}") from None
    return context


class Dial:
    """One connection attempt (TCP, tunnel, TLS) that `abort()` ends from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: socket.socket | None = None  # a dup of the socket being connected
        self.aborted = False

    def abort(self) -> None:
        """Shut the socket being connected down (a blocked connect or read returns); any
        later step of this attempt is refused."""
        with self._lock:
            self.aborted = True
            handle = self._handle
            if handle is not None:
                _shut(handle)

    def open(self, url: str, sslopt: Mapping[str, Any], timeout: float) -> socket.socket:
        """The connected (tunnelled, TLS-wrapped) socket for `url`, each blocking step at
        most `timeout` seconds; OSError or WebSocketException when it cannot be made, Aborted
        when `abort()` came first."""
        host, port, secure = target_of(url)
        proxy = proxy_for(host, secure)
        where = (host, port) if proxy is None else (proxy.host, proxy.port)
        try:
            addresses = socket.getaddrinfo(*where, 0, socket.SOCK_STREAM, socket.SOL_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise WebSocketAddressException(exc) from None
        if not addresses:
            raise WebSocketAddressException(f"Host not found.: {where[0]}:{where[1]}")
        sock = self._connect(addresses, timeout)
        try:
            if proxy is not None:
                _tunnel(sock, host, port, proxy.auth)
            if secure:
                context = sslopt.get("context") or default_context()
                sock = context.wrap_socket(sock, server_hostname=sslopt.get("server_hostname")
                                           or host)
            self._check()
        except BaseException as exc:
            sock.close()
            if self.aborted and not isinstance(exc, Aborted):
                raise Aborted("aborted") from exc
            raise
        return sock

    def done(self) -> None:
        """The attempt is over (connected or not): drop the duplicate descriptor (the
        connection itself stays open). Later aborts do nothing."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def _connect(self, addresses: list[Any], timeout: float) -> socket.socket:
        error: OSError | None = None
        for family, kind, proto, _name, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                for option in DEFAULT_SOCKET_OPTION:
                    sock.setsockopt(*option)
                self._watch(sock)
                self._connect_one(sock, address, timeout)
            except OSError as exc:
                sock.close()
                if self.aborted:
                    raise exc if isinstance(exc, Aborted) else Aborted("aborted") from exc
                if exc.errno not in _NEXT_ADDRESS:
                    raise
                error = exc
                continue
            return sock
        assert error is not None  # getaddrinfo gave at least one address
        raise error

    def _connect_one(self, sock: socket.socket, address: Any, timeout: float) -> None:
        """A non-blocking connect, its wait cut in ticks that look at `aborted` (abort's
        shutdown wakes it at once, but may come just before the connect started)."""
        deadline = time.monotonic() + timeout
        sock.setblocking(False)
        code = sock.connect_ex(address)
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EINTR):
            self._check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            if poller.poll(min(left, _TICK) * 1000):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._check()
        if code != 0:
            raise OSError(code, os.strerror(code))
        sock.settimeout(timeout)

    def _watch(self, sock: socket.socket) -> None:
        """Keep a duplicate of `sock` for abort(); abort at once if it came already."""
        handle = sock.dup()
        with self._lock:
            old, self._handle = self._handle, handle
            aborted = self.aborted
        if old is not None:
            old.close()
        if aborted:
            raise Aborted("aborted")

    def _check(self) -> None:
        if self.aborted:
            raise Aborted("aborted")


def _tunnel(sock: socket.socket, host: str, port: int, auth: tuple[str, str] | None) -> None:
    """Ask the proxy for a tunnel to host:port (HTTP CONNECT); WebSocketProxyException unless
    it answers 200. The answer is read byte by byte: what follows it is the server's."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth is not None and auth[0]:
        secret = auth[0] if not auth[1] else f"{auth[0]}:{auth[1]}"
        request += f"Proxy-Authorization: Basic {base64.b64encode(secret.encode()).decode()}\r\n"
    sock.sendall((request + "\r\n").encode())
    answer = bytearray()
    while not answer.endswith(b"\r\n\r\n"):
        if len(answer) >= _MAX_PROXY_ANSWER:
            raise WebSocketProxyException("the proxy's answer to CONNECT is too long")
        byte = sock.recv(1)
        if not byte:
            raise WebSocketProxyException("the proxy closed the connection during CONNECT")
        answer += byte
    status_line = bytes(answer.split(b"\r\n", 1)[0]).decode("latin-1")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or fields[1] != "200":
        shown = fields[1] if len(fields) > 1 and fields[1].isdigit() else "a malformed answer"
        raise WebSocketProxyException(f"failed CONNECT via proxy status: {shown}")


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected yet or already gone
