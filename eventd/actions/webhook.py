"""The `webhook` action: one HTTP request per event to any JSON or text endpoint.

Every request carries `Idempotency-Key: <job id>`, stable for one rule, event and action, so
a receiver can drop the repeats that at-least-once delivery may cause. Logs and queue names
hold only scheme://host:port: a webhook URL's path or query is often its secret.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from eventd.actions.base import ActionContext, utf8_message
from eventd.clients.http import new_session, send_call
from eventd.errors import ConfigError, PermanentActionError
from eventd.ops.logconfig import MASK, redact
from eventd.outbound import BadAddress, Call, Outbound, parse_url
from eventd.records import ActionJob

if TYPE_CHECKING:
    import requests  # loaded by new_session() on the first request

METHODS = ("POST", "PUT", "PATCH", "GET", "DELETE")
DEFAULT_TIMEOUT = 10.0


def origin(url: str) -> str:
    """`scheme://host:port` of a URL (never user info, path or query); `invalid` if it cannot
    be parsed unambiguously (the same parser the gate and the request use)."""
    try:
        return parse_url(url)[0].origin
    except BadAddress:
        return "invalid"


#: a path segment that looks like a token (20+ characters mixing letters and digits)...
_TOKEN_LIKE = re.compile(r"(?=[^/]*[0-9])(?=[^/]*[A-Za-z])[A-Za-z0-9_\-]{20,}")
#: ...or names one (`/secret-token`, `/apikey`)
_NAMES_A_SECRET = re.compile(r"(?i)token|key|secret|passw|pwd|sig|auth|cred")


def loggable(url: str) -> str:
    """`scheme://host:port/path` for log lines: no user info, the query as `?...`, and path
    parts that look like or name a token (and the webhook tokens the redactor knows) as `***`."""
    where = origin(url)
    if where == "invalid":
        return where
    parts = urlsplit(url.strip())
    path = "/".join(MASK if _TOKEN_LIKE.fullmatch(segment) or _NAMES_A_SECRET.search(segment)
                    else segment for segment in parts.path.split("/"))
    return redact(where + path + ("?..." if parts.query else ""))


#: header and query names that hold a secret (as eventd.ops.logconfig reads them)
_SECRET_NAME = re.compile(r"(?i)authorization|cookie|token|key|secret|passw(?:or)?d|pwd|"
                          r"signature|sig|auth|credential|session")
#: headers eventd sets itself, which hold no secret
_OWN_HEADERS = frozenset({"idempotency-key", "content-type", "accept", "user-agent"})


def http_call(method: str, url: str, headers: Mapping[str, str],
              body: bytes | None = None) -> Call:
    """One HTTP Call to `url`, parsed once (BadAddress if it cannot be): user info becomes an
    explicit `Authorization: Basic` header; a secret-looking header, user info or query key
    marks the call as carrying credentials."""
    address, userinfo = parse_url(url)
    sent = dict(headers)
    credentials = any(_SECRET_NAME.search(name) and name.lower() not in _OWN_HEADERS
                      for name in sent)
    if userinfo is not None:
        credentials = True
        if not any(name.lower() == "authorization" for name in sent):
            sent["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
    if any(_SECRET_NAME.search(unquote(pair.partition("=")[0]))
           for pair in address.query.split("&") if "=" in pair):
        credentials = True
    return Call(method, address, tuple(sent.items()), body, credentials=credentials)


def is_template(value: object) -> bool:
    """Whether a string option still holds a template (it is checked again after rendering)."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_url(value: object, name: str = "url") -> list[str]:
    """Problems with a URL option (none for a template)."""
    if not isinstance(value, str) or not value.strip():
        return [f"{name} is required"]
    if is_template(value):
        return []
    if origin(value) == "invalid":
        return [f"{name} must be an http:// or https:// URL"]
    return []


def check_timeout(value: object) -> list[str]:
    """Problems with a timeout option."""
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return ["timeout must be a positive number of seconds"]
    return []


class SessionPool:
    """One requests Session per worker thread (Sessions are not thread-safe), all closable.

    Sessions of threads that ended (lanes closed to bound their number) are closed when the
    next one is made, so sessions and their connections stay bounded too.
    """

    def __init__(self, tls: Any = None) -> None:
        self._tls = tls  # settings.TlsOptions
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: dict[threading.Thread, requests.Session] = {}

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = new_session(tls=self._tls)
            self._local.session = session
            with self._lock:
                ended = [t for t in self._all if not t.is_alive()]
                stale = [self._all.pop(t) for t in ended]
                self._all[threading.current_thread()] = session
            for old in stale:
                old.close()
        return session

    def __len__(self) -> int:
        with self._lock:
            return len(self._all)

    def close(self) -> None:
        with self._lock:
            sessions, self._all = list(self._all.values()), {}
        for session in sessions:
            session.close()


class HttpPostAction:
    """What every HTTP-delivered kind shares: a session pool, one queue per host, logs that
    name scheme://host:port/path with secrets masked (`loggable`), sending what the gate
    admitted. Subclasses set `name` and implement `prepare`."""

    name: ClassVar[str]

    def __init__(self, context: ActionContext) -> None:
        self.context = context
        self._sessions = SessionPool(context.settings.tls)

    def target(self, options: dict[str, Any]) -> str:
        """One queue per receiving host."""
        return f"{self.name}:{origin(str(options.get('url', '')))}"

    def describe(self, job: ActionJob) -> str:
        """Where the job goes, safe to log (see `loggable`)."""
        return loggable(str(job.options.get("url", "")))

    def inactive(self, options: dict[str, Any]) -> bool:
        """A request is always made."""
        return False

    def flush(self) -> None:
        """Nothing buffered."""

    def close(self) -> None:
        """Close the HTTP sessions."""
        self._sessions.close()

    def outbound(self, *calls: Call) -> Outbound:
        """The calls under the `http` policy of the gate."""
        return Outbound(kind=self.name, policy="http", calls=calls)

    def post(self, job: ActionJob, outbound: Outbound) -> str:
        """Send the admitted call; `METHOD origin: HTTP status` of what was sent."""
        call = outbound.calls[0]
        where = call.address.origin
        response = send_call(self._sessions.get(), call, f"{self.name} {where}",
                             timeout=float(job.options.get("timeout") or DEFAULT_TIMEOUT))
        return f"{call.method} {where}: HTTP {response.status_code}"


#: a digest group's defaults (`group: {by, wait, max}`; eventd.alerts.groups collects them)
GROUP_WAIT = 30.0
GROUP_MAX = 100


def group_limits(group: Mapping[str, Any]) -> tuple[float, int]:
    """`wait` (seconds) and `max` of a `group` option, with their defaults (ConfigError if bad)."""
    from eventd.settings import parse_duration

    wait = parse_duration(group.get("wait", GROUP_WAIT), "group.wait")
    size = group.get("max", GROUP_MAX)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"group.max: {size!r} must be a whole number of at least 1")
    return wait, size


class WebhookAction(HttpPostAction):
    """POST (or another method) a JSON or text body to a URL."""

    name: ClassVar[str] = "webhook"
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = False
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "minLength": 1},
            "method": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "json": {},
            "body": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
            "group": {
                "type": "object",
                "description": "a digest: events whose `by` renders alike within `wait` of the first "
                               "become one request (at most `max` events); templates see group.key, "
                               "group.count, group.events (oldest first)",
                "required": ["by"],
                "additionalProperties": False,
                "properties": {
                    "by": {"type": "string", "description": "a template, e.g. {{ parent.service }}"},
                    "wait": {"type": ["string", "number"], "default": "30s"},
                    "max": {"type": "integer", "minimum": 1, "default": 100},
                },
            },
        },
    }

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """url is an http(s) URL, json and body exclude each other, the method is known, a
        group's wait is a duration."""
        problems = check_url(options.get("url"))
        if "json" in options and "body" in options:
            problems.append("give either json or body, not both")
        method = options.get("method", "POST")
        if not isinstance(method, str) or (not is_template(method)
                                            and method.upper() not in METHODS):
            problems.append(f"method must be one of {', '.join(METHODS)}")
        headers = options.get("headers", {})
        if not isinstance(headers, dict):
            problems.append("headers must be a mapping of names to strings")
        problems.extend(check_timeout(options.get("timeout")))
        group = options.get("group")
        if isinstance(group, dict):
            try:
                if group_limits(group)[0] <= 0:
                    problems.append("group.wait must be more than 0")
            except ConfigError as exc:
                problems.append(str(exc))
        return problems

    def prepare(self, job: ActionJob) -> Outbound:
        """The one request: method, the URL parsed once, headers with the Idempotency-Key."""
        options = job.options
        method = str(options.get("method") or "POST").upper()
        if method not in METHODS:
            raise PermanentActionError(f"webhook: method must be one of {', '.join(METHODS)}")
        headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
        headers["Idempotency-Key"] = job.id
        body: bytes | None = None
        if "json" in options:
            body = json.dumps(options["json"], separators=(",", ":")).encode()
            _default_header(headers, "Content-Type", "application/json")
        elif "body" in options:
            body = utf8_message(str(options["body"]), "webhook")  # a lone surrogate: dead
            _default_header(headers, "Content-Type", "text/plain; charset=utf-8")
        return self.outbound(http_call(method, str(options.get("url", "")), headers, body))

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Send it once; 2xx is success, 5xx/429/connection errors are retryable."""
        return self.post(job, outbound)


def _default_header(headers: dict[str, str], name: str, value: str) -> None:
    if not any(key.lower() == name.lower() for key in headers):
        headers[name] = value
