"""The shared HTTP layer: sessions with timeouts and a User-Agent, and failure classification.

Every outbound HTTP call (REST actions, webhooks, Alertmanager, enrichment, backfill) goes
through here, so 5xx/429/connection errors are retried and other 4xx are not, everywhere.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import requests

from eventd import __version__
from eventd.errors import PermanentActionError, RetryableActionError

USER_AGENT = f"eventd/{__version__}"
DEFAULT_TIMEOUT = 10.0
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def new_session(user_agent: str = USER_AGENT, tls: Any = None) -> requests.Session:
    """A requests Session that never reads proxy settings for loopback and sends our UA.

    `tls` (settings.TlsOptions: --ca-file, --client-cert) configures its HTTPS connections.
    """
    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    if tls is not None:
        tls.configure(session)
    return session


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
    detail = _error_detail(response)
    message = f"{what}: HTTP {status}{': ' + detail if detail else ''}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status in RETRYABLE_STATUS or status >= 500:
        raise RetryableActionError(message, status_code=status, retry_after=retry_after)
    raise PermanentActionError(message, status_code=status)


def _error_detail(response: requests.Response) -> str:
    """The API's own words (`{"error": ...}` or `{"detail": ...}`), cut short."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])[:200]
    return ""


def send(session: requests.Session, method: str, url: str, what: str, *,
         timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> requests.Response:
    """One HTTP attempt whose failures come out as ActionErrors (connection errors retryable)."""
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise RetryableActionError(f"{what}: timed out after {timeout}s") from exc
    except requests.ConnectionError as exc:
        raise RetryableActionError(f"{what}: connection failed ({type(exc).__name__})") from exc
    except requests.RequestException as exc:
        raise PermanentActionError(f"{what}: {type(exc).__name__}") from exc
    raise_for_status(response, what)
    return response
