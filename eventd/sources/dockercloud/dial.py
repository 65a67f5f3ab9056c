"""An abortable stream connection: what websocket-client's `WebSocket.connect` does before
the HTTP upgrade (the TCP connect, an HTTP proxy's CONNECT tunnel, the TLS handshake), made
here so that another thread can abort it.

websocket-client gives the connecting thread's socket to nobody until the TLS handshake is
done, and closes rather than shuts it down: a stream consumer stopped while a partition
held its connect up (its lease handed over, lost or expiring) could not be stopped, so its
lease was not freed but left to expire, up to a TTL without a consumer. `Dial.abort` shuts
the socket down from any thread (a Linux connect in SYN_SENT is disconnected by
`shutdown()`; a read waiting for the TLS or HTTP answer returns), through a duplicate of
its descriptor that the TLS wrap (which takes the original over) leaves alone.

The proxy (from `http_proxy`/`https_proxy`/`no_proxy`, as websocket-client reads them) and
the TLS options (`sslopt`, `WEBSOCKET_CLIENT_CA_BUNDLE`, the same defaults) are
websocket-client's own functions; only the socket's connect is eventd's. The socket is then
handed to `WebSocket.connect(socket=...)`, which makes the HTTP upgrade on it.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any

from websocket import WebSocketException
from websocket import _http as ws_http
from websocket import _socket as ws_socket
from websocket import _url as ws_url

#: a refused or unreachable address: the next one of the host's addresses is tried
_NEXT_ADDRESS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH})
#: the longest wait of a connect between two looks at `aborted`
_TICK = 0.1


class Aborted(OSError):
    """The connection was aborted by `Dial.abort` (the consumer is stopping)."""


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

    def open(self, url: str, sslopt: dict[str, Any], timeout: float) -> socket.socket:
        """The connected (tunnelled, TLS-wrapped) socket for `url`, each blocking step at
        most `timeout` seconds; OSError or WebSocketException when it cannot be made, Aborted
        when `abort()` came first."""
        hostname, port, _resource, is_secure = ws_url.parse_url(url)
        proxy = ws_http.proxy_info()  # type: ignore[no-untyped-call]  # from the environment
        addresses, tunnel, auth = ws_http._get_addrinfo_list(hostname, port, is_secure, proxy)
        if not addresses:
            raise WebSocketException(f"Host not found.: {hostname}:{port}")
        sock = self._connect(addresses, timeout)
        try:
            if tunnel:
                sock = ws_http._tunnel(sock, hostname, port, auth)
            if is_secure:
                sock = ws_http._ssl_socket(sock, sslopt, hostname)
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
                for option in ws_socket.DEFAULT_SOCKET_OPTION:
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


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected yet or already gone
