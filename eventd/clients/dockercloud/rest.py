"""A small Docker Cloud REST client: auth header, JSON headers, pagination, action URIs.

Used by the `dockercloud` action, enrichment and backfill. Paths are resource URIs as the
stream carries them (`/api/app/v1/<ns>/service/<uuid>/`), joined to the REST host.
"""

from __future__ import annotations

import json as _json
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from eventd.clients.dockercloud.auth import Credentials
from eventd.clients.http import DEFAULT_TIMEOUT, USER_AGENT, new_session, send, send_call
from eventd.outbound import Call, parse_url
from eventd.settings import TlsOptions, plaintext_warning

if TYPE_CHECKING:
    import requests  # loaded by new_session() on the first call

logger = logging.getLogger(__name__)

#: The states in which a Docker Cloud action has ended (the reference's action object).
TERMINAL_STATES = frozenset({"Success", "Failed", "Canceled"})


class RestClient:
    """Authenticated JSON calls to one REST host; thread-safe (one session per thread)."""

    def __init__(self, rest_host: str, credentials: Credentials, *,
                 timeout: float = DEFAULT_TIMEOUT, user_agent: str = USER_AGENT,
                 reconnection_interval: float = -1.0, tls: TlsOptions | None = None) -> None:
        self.rest_host = rest_host.rstrip("/") + "/"
        self.tls = tls if tls is not None else TlsOptions()
        warning = plaintext_warning(self.rest_host, "DOCKERCLOUD_REST_HOST")
        if warning is not None:
            logger.warning("%s", warning)
        self._credentials = credentials
        self.timeout = timeout
        self.user_agent = user_agent
        # DOCKERCLOUD_RECONNECTION_INTERVAL: recycle a session idle for longer than this.
        self.reconnection_interval = reconnection_interval
        self._local = threading.local()

    @property
    def credentials(self) -> Credentials:
        """The credentials it sends (the Stream API's logs use the same)."""
        return self._credentials

    @property
    def account(self) -> str | None:
        """The user name the credentials act as, if known (`Credentials.account`)."""
        return self._credentials.account

    def url(self, path: str) -> str:
        """The absolute URL of a resource path, always with a trailing slash before the query."""
        base, sep, query = path.partition("?")
        if not base.endswith("/"):
            base += "/"
        return self.rest_host + base.lstrip("/") + (sep + query if sep else "")

    def _session(self) -> requests.Session:
        now = time.monotonic()
        session: requests.Session | None = getattr(self._local, "session", None)
        last = getattr(self._local, "last_used", now)
        if session is not None and self.reconnection_interval >= 0 \
                and now - last > self.reconnection_interval:
            session.close()
            session = None
        if session is None:
            session = self.tls.configure(new_session(self.user_agent))
            self._local.session = session
        self._local.last_used = now
        return session

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None,
                timeout: float | None = None) -> requests.Response:
        """One call; raises RetryableActionError / PermanentActionError on failure."""
        headers = {"Authorization": self._credentials.header, "Accept": "application/json"}
        if json is not None:
            headers["Content-Type"] = "application/json"
        url = self.url(path)
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        return send(self._session(), method, url, f"{method} {path.partition('?')[0]}",
                    timeout=timeout or self.timeout, headers=headers, json=json)

    def call(self, method: str, path: str, *, json: Any = None,
             params: dict[str, Any] | None = None) -> Call:
        """One call as the gate sees it and `send_call` sends it: the URL parsed once (a `#`
        is refused: nothing after it would be sent), the headers but for Authorization, which
        `send_call` adds (`credentials=True`). BadAddress if the URL cannot be parsed."""
        url = self.url(path)
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        address, _ = parse_url(url, fragment=False)
        headers = [("Accept", "application/json")]
        body = None
        if json is not None:
            headers.append(("Content-Type", "application/json"))
            body = _json.dumps(json).encode()
        return Call(method, address, tuple(headers), body, credentials=True)

    def send_call(self, call: Call, timeout: float | None = None) -> requests.Response:
        """Send a Call the gate admitted, with the credentials; errors as in `request`."""
        headers = (("Authorization", self._credentials.header), *call.headers)
        what = f"{call.method} {call.address.path}"
        return send_call(self._session(), Call(call.method, call.address, headers, call.body,
                                               credentials=True),
                         what, timeout=timeout or self.timeout)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a resource and return its JSON body."""
        return self.request("GET", path, params=params).json()

    def list_objects(self, path: str, params: dict[str, Any] | None = None,
                     limit: int = 100, max_pages: int = 100) -> Iterator[dict[str, Any]]:
        """Iterate a list endpoint across pages (`meta.next`, offset += limit, as python did)."""
        query = dict(params or {})
        query["limit"] = limit
        offset = 0
        for _ in range(max_pages):
            query["offset"] = offset
            body = self.get(path, query)
            objects = body.get("objects") or []
            yield from objects
            meta = body.get("meta") or {}
            if not meta.get("next") or not objects:
                return
            offset += limit

    def close(self) -> None:
        """Close this thread's session."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
