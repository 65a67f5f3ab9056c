"""Who may change anything through the console: a bearer token, and requests a browser's own page sent.

Reading needs no token: the console shows nothing secret. Acting (retry, discard, silence)
needs `Authorization: Bearer <EVENTD_UI_TOKEN>`; without a configured token the console is
read-only. The token is never accepted in the URL (it would land in proxies' and browsers'
histories): a query naming one is refused. Cross-site request forgery is shut out three ways,
each enough alone: the token travels in a header no other site's page can make a browser add;
a changing request must be `application/json` (a form cannot send it without a preflight,
which eventd never approves: it sends no CORS headers); and a browser's `Origin` or
`Sec-Fetch-Site` naming another site is refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["MIN_TOKEN", "Refusal", "check_write", "token_in_query"]

#: shortest token accepted from EVENTD_UI_TOKEN (a guessable one is no protection)
MIN_TOKEN = 16
_TOKEN_PARAMS = ("token", "access_token", "bearer", "auth", "authorization", "api_key", "key")


class Refusal(Exception):
    """A request the console will not serve: its HTTP status and a sentence why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def token_in_query(environ: Mapping[str, Any]) -> bool:
    """Whether the query string tries to carry a token (refused for every request)."""
    query = str(environ.get("QUERY_STRING") or "")
    return any(name.lower() in _TOKEN_PARAMS for name, _ in parse_qsl(query,
                                                                       keep_blank_values=True))


def check_write(environ: Mapping[str, Any], token: str | None) -> None:
    """Raise Refusal unless this request may change something."""
    if token is None:
        raise Refusal(403, "the console is read-only: set EVENTD_UI_TOKEN (or "
                           "EVENTD_UI_TOKEN_FILE) to allow actions")
    site = str(environ.get("HTTP_SEC_FETCH_SITE") or "")
    if site and site not in ("same-origin", "none"):
        raise Refusal(403, "cross-site request refused")
    origin = str(environ.get("HTTP_ORIGIN") or "")
    if origin and not _same_origin(origin, environ):
        raise Refusal(403, "cross-origin request refused")
    content_type = str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refusal(415, "send application/json")
    header = str(environ.get("HTTP_AUTHORIZATION") or "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Refusal(401, "this needs the console's token (Authorization: Bearer ...)")
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                               token.encode("utf-8")):
        raise Refusal(401, "wrong token")


def _same_origin(origin: str, environ: Mapping[str, Any]) -> bool:
    parts = urlsplit(origin)
    host = str(environ.get("HTTP_HOST") or "")
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == \
        host.lower()
