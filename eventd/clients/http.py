"""The shared HTTP layer: sessions with timeouts and a User-Agent, and failure classification.

Every outbound HTTP call (REST actions, webhooks, Alertmanager, enrichment, backfill) goes
through here, so 5xx/429/connection errors are retried and other 4xx are not, everywhere.
Redirects are never followed: a 3xx is a permanent failure that names where it pointed (its
origin only), because following one would send the headers and body to another host.
"""

from __future__ import annotations

import email.utils
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:
    import requests

from eventd import __version__
from eventd.clients.charset import defer as defer_charset
from eventd.clients.metadata import defer as defer_metadata
from eventd.errors import ActionError, PermanentActionError, RetryableActionError
from eventd.ops.logconfig import redact
from eventd.outbound import Call

USER_AGENT = f"eventd/{__version__}"
DEFAULT_TIMEOUT = 10.0
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Statuses whose Retry-After means "alive, come back at T" (not counted as a failure).
TOLD_STATUS = frozenset({429, 503})
DETAIL_CHARS = 300  # how much of a server's explanation a dead letter or log line keeps


def new_session(user_agent: str = USER_AGENT, tls: Any = None) -> requests.Session:
    """A requests Session that never reads proxy settings for loopback and sends our UA.

    `tls` (settings.TlsOptions: --ca-file, --client-cert) configures its HTTPS connections.
    """
    defer_charset()  # before requests imports it: 2.1 MiB eventd rarely needs (clients/charset.py)
    defer_metadata()  # before urllib3 imports it: 0.34 MiB for HTTP/2 (clients/metadata.py)
    import requests  # here, not at the top: a daemon without HTTP actions never loads it (~8 MiB)

    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    # With trust_env, requests reads every environment variable (proxies, twice) and looks
    # for a netrc file on every request: a third of a webhook's Python work. What it would
    # find is read once here instead, unless there is a proxy or a netrc file to honour.
    session.trust_env, bundle = environment_settings()
    if bundle is not None:
        session.verify = bundle
    adapter = _abortable_adapter()
    session.mount("http://", adapter())
    session.mount("https://", adapter())
    if tls is not None:
        tls.configure(session)
    return session


# -- requests made under a lease, reset when it ends (issue 25) -----------------------------------
class Abortable:
    """The sockets of the requests one thread makes under one fencing token.

    A replica whose lease ended (ran out, taken, given up) must not have a request made under
    it reach its server afterwards: one written just before a partition is retransmitted by
    TCP once the partition heals, seconds after the lease went to another replica. `abort`
    shuts those sockets down with SO_LINGER 0: the thread sending wakes at once, its
    connection is closed with a reset, and the kernel discards what it still held to send."""

    __slots__ = ("aborted", "sockets", "still_ours", "token")

    def __init__(self, token: str, still_ours: Callable[[], bool]) -> None:
        self.token = token
        self.still_ours = still_ours
        self.sockets: list[socket.socket] = []
        self.aborted = False

    def end(self) -> None:
        """The attempt is over: its sockets are the pool's again, not the lease's."""
        _current.scope = None
        with _scopes_lock:
            _scopes.discard(self)


_scopes: set[Abortable] = set()
_scopes_lock = threading.Lock()
_current = threading.local()
_LINGER_0 = struct.pack("ii", 1, 0)


def requests_under(token: str, still_ours: Callable[[], bool]) -> Abortable:
    """Tie the requests this thread makes from now until `end()` to `token`: `abort_requests`
    resets them, and one whose connection is ready when `still_ours()` no longer holds (the
    lease ran out meanwhile) is not written at all."""
    scope = Abortable(token, still_ours)
    with _scopes_lock:
        _scopes.add(scope)
    _current.scope = scope
    return scope


def abort_requests(prefix: str) -> int:
    """Reset every request on its way under a token starting with `prefix`; how many
    attempts were hit (each ends with a connection error and `aborted` set)."""
    with _scopes_lock:
        hit = [scope for scope in _scopes if scope.token.startswith(prefix)]
        for scope in hit:
            scope.aborted = True
        sockets = [sock for scope in hit for sock in scope.sockets]
    for sock in sockets:
        _reset(sock)
    return len(hit)


def _reset(sock: socket.socket) -> None:
    """Close with RST, not FIN, whoever closes it: nothing queued is sent any more."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        # The read half only: the thread waiting for the answer wakes with end of file and
        # closes the connection (a reset, nothing else is sent: no FIN behind the queued
        # request). socket.socket's own shutdown, also for a TLS socket (its own would drop
        # its TLS state under the thread reading).
        socket.socket.shutdown(sock, socket.SHUT_RD)
    except OSError:
        pass  # closed meanwhile


def _enlist(sock: socket.socket | None) -> None:
    """Called by a connection about to write a request: tie its socket to this thread's
    lease, or refuse (ConnectionAbortedError) if that lease is no longer ours."""
    scope: Abortable | None = getattr(_current, "scope", None)
    if scope is None:
        return
    ours = scope.still_ours()
    with _scopes_lock:
        if not ours:
            scope.aborted = True
        if scope.aborted:
            raise ConnectionAbortedError("the lease this request was made under has ended")
        if sock is not None and sock not in scope.sockets:
            scope.sockets.append(sock)


_ADAPTER: Any = None


def _abortable_adapter() -> Any:
    """The HTTPAdapter class whose connections enlist their socket before each request
    (`_enlist`): urllib3's connection pools with a ConnectionCls of ours."""
    global _ADAPTER
    if _ADAPTER is not None:
        return _ADAPTER
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class PlainConnection(HTTPConnection):
        def connect(self) -> None:
            super().connect()
            _enlist(self.sock)

        def request(self, *args: Any, **kwargs: Any) -> None:
            _enlist(self.sock)  # a new connection enlists once connected (above)
            super().request(*args, **kwargs)

    class SecureConnection(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            _enlist(self.sock)

        def request(self, *args: Any, **kwargs: Any) -> None:
            _enlist(self.sock)
            super().request(*args, **kwargs)

    class PlainPool(HTTPConnectionPool):
        ConnectionCls = PlainConnection

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = SecureConnection

    def abortable(manager: Any) -> Any:
        classes = manager.pool_classes_by_scheme
        if classes.get("http") is HTTPConnectionPool and \
                classes.get("https") is HTTPSConnectionPool:  # a SOCKS proxy's: its own
            manager.pool_classes_by_scheme = {**classes, "http": PlainPool, "https": SecurePool}
        return manager

    class AbortableAdapter(HTTPAdapter):
        """requests' adapter, its requests resettable while a lease's attempt runs."""

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            abortable(self.poolmanager)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            return abortable(super().proxy_manager_for(proxy, **kwargs))

    _ADAPTER = AbortableAdapter
    return _ADAPTER


def environment_settings() -> tuple[bool, str | None]:
    """What requests would take from this process's environment, read once (eventd's
    environment does not change): whether it must still look on every request (a proxy
    setting or a netrc file), and otherwise the CA bundle it would verify with, if any."""
    import os
    import urllib.request

    home = os.path.expanduser("~")
    if urllib.request.getproxies() or os.environ.get("NETRC") is not None \
            or any(os.path.exists(os.path.join(home, name)) for name in (".netrc", "_netrc")):
        return True, None
    return False, os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in either form (delta-seconds or HTTP-date) as seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def raise_for_status(response: requests.Response, what: str) -> None:
    """Turn a non-2xx answer into a Retryable or Permanent ActionError with context."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        location = response.headers.get("Location")
        where = _origin(urljoin(response.url or "", location)) if location else "nowhere"
        detail = f"redirect to {where} not followed (eventd never follows redirects)"
        raise PermanentActionError(f"{what}: HTTP {status}: {detail}", status_code=status,
                                   detail=detail)
    detail = _error_detail(response)
    message = f"{what}: HTTP {status}{': ' + detail if detail else ''}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status in RETRYABLE_STATUS or status >= 500:
        raise RetryableActionError(message, status_code=status, retry_after=retry_after,
                                   detail=detail)
    raise PermanentActionError(message, status_code=status, detail=detail)


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else "?"
    except ValueError:
        return "?"


def _error_detail(response: requests.Response) -> str:
    """The API's own words (`{"error": ...}` or `{"detail": ...}`), cut short and redacted."""
    try:
        body: Any = response.json()
    except ValueError:
        return _clean(response.text)
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if isinstance(body.get(key), str):
                return _clean(str(body[key]))
    return ""


def _clean(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > DETAIL_CHARS:
        text = text[:DETAIL_CHARS] + "..."
    return redact(text)


def send(session: requests.Session, method: str, url: str, what: str, *,
         timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> requests.Response:
    """One HTTP attempt whose failures come out as ActionErrors (connection errors retryable)."""
    import requests

    try:
        response = session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.Timeout as exc:
        detail = f"timed out after {timeout}s"
        raise RetryableActionError(f"{what}: {detail}", detail=detail) from exc
    except requests.ConnectionError as exc:
        detail = f"connection failed ({type(exc).__name__})"
        raise RetryableActionError(f"{what}: {detail}", detail=detail) from exc
    except requests.RequestException as exc:
        raise PermanentActionError(f"{what}: {type(exc).__name__}",
                                   detail=type(exc).__name__) from exc
    raise_for_status(response, what)
    return response


def send_call(session: requests.Session, call: Call, what: str, *,
              timeout: float = DEFAULT_TIMEOUT) -> requests.Response:
    """Send one Call the gate admitted: its address's URL, headers and body, exactly."""
    return send(session, call.method, call.address.url, what, timeout=timeout,
                headers=dict(call.headers), data=call.body)


# -- failure classification ---------------------------------------------------------------------
def error_reason(exc: BaseException | None) -> str:
    """A bounded label for a failure: http_429, http_5xx, http_4xx, timeout, connection..."""
    status = exc.status_code if isinstance(exc, ActionError) else None
    if isinstance(status, int):
        return "http_429" if status == 429 else f"http_{status // 100}xx"
    cause = exc.__cause__ if exc is not None else None
    lib = sys.modules.get("requests")  # a requests exception means requests is loaded
    if lib is not None and isinstance(cause, lib.Timeout):
        return "timeout"
    if lib is not None and isinstance(cause, lib.ConnectionError):
        return "connection"
    if isinstance(cause, OSError):
        return "os_error"
    return "error" if isinstance(exc, ActionError) else "internal"


def is_told(exc: BaseException) -> bool:
    """429, or 503 with Retry-After: the target is alive and said when to come back."""
    if not isinstance(exc, ActionError) or exc.status_code not in TOLD_STATUS:
        return False
    return exc.status_code == 429 or exc.retry_after is not None


def describe_failure(exc: BaseException | None) -> str:
    """What went wrong, in a few words safe to log: `HTTP 400: <the server's explanation>`.

    ActionErrors never hold a URL's path; the server's words are cut short and redacted.
    """
    if exc is None:
        return "unknown error"
    if isinstance(exc, ActionError) and exc.status_code is not None:
        return f"HTTP {exc.status_code}" + (f": {exc.detail}" if exc.detail else "")
    if isinstance(exc, ActionError) and exc.detail:
        return exc.detail  # the message without the "<kind> <origin>: " the log line says
    return redact(str(exc)[:DETAIL_CHARS]) or type(exc).__name__
