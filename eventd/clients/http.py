"""The shared HTTP layer: sessions with timeouts and a User-Agent, and failure classification.

Every outbound HTTP call (REST actions, webhooks, Alertmanager, enrichment, backfill) goes
through here, so 5xx/429/connection errors are retried and other 4xx are not, everywhere.
Redirects are never followed: a 3xx is a permanent failure that names where it pointed (its
origin only), because following one would send the headers and body to another host.
"""

from __future__ import annotations

import email.utils
import sys
import time
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
    if tls is not None:
        tls.configure(session)
    return session


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
