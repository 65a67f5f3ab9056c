"""The `webhook` action: one HTTP request per event to any JSON or text endpoint.

Every request carries `Idempotency-Key: <job id>`, stable for one rule, event and action, so
a receiver can drop the repeats that at-least-once delivery may cause. Logs and queue names
hold only scheme://host:port: a webhook URL's path or query is often its secret.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from eventd.actions.base import ActionContext, ActionJob
from eventd.delivery.http import new_session, send
from eventd.errors import ConfigError, PermanentActionError

if TYPE_CHECKING:
    import requests  # loaded by new_session() on the first request

METHODS = ("POST", "PUT", "PATCH", "GET", "DELETE")
DEFAULT_TIMEOUT = 10.0


def origin(url: str) -> str:
    """`scheme://host:port` of a URL (never user info, path or query); `invalid` if unparsable."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "invalid"
    if parts.scheme not in ("http", "https") or not host:
        return "invalid"
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def check_destination(url: str, allow_hosts: tuple[str, ...] = ()) -> str | None:
    """Why a rendered URL may not be used (None: it may): a path climbing with `.`/`..`
    segments (also percent-encoded), or a host outside the --allow-host patterns."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
    except ValueError:
        return "url is not a valid URL"
    path = parts.path
    if _DOT_SEGMENT.search(path) or _DOT_SEGMENT.search(unquote(path)) or "\\" in path:
        return "url path must not hold '.' or '..' segments"
    if allow_hosts and not any(fnmatch.fnmatchcase(host, pattern.lower())
                               for pattern in allow_hosts):
        return f"host {host!r} is not allowed by --allow-host ({', '.join(allow_hosts)})"
    return None


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
    name only scheme://host:port. Subclasses set `name` and implement `run`."""

    name: ClassVar[str]

    def __init__(self, context: ActionContext) -> None:
        self.context = context
        self._sessions = SessionPool(context.settings.tls)

    def target(self, options: dict[str, Any]) -> str:
        """One queue per receiving host."""
        return f"{self.name}:{origin(str(options.get('url', '')))}"

    def describe(self, job: ActionJob) -> str:
        """Where the job goes, safe to log."""
        return origin(str(job.options.get("url", "")))

    def inactive(self, options: dict[str, Any]) -> bool:
        """A request is always made."""
        return False

    def flush(self) -> None:
        """Nothing buffered."""

    def close(self) -> None:
        """Close the HTTP sessions."""
        self._sessions.close()

    def check(self, url: str) -> None:
        """Refuse (permanently, no request made) a URL that may not be used."""
        problem = check_destination(url, self.context.settings.allow_hosts)
        if problem is not None:
            raise PermanentActionError(f"{self.name}: refused, no request made: {problem}")


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

    def run(self, job: ActionJob) -> str:
        """Send the request once; 2xx is success, 5xx/429/connection errors are retryable."""
        options = job.options
        url = str(options.get("url", ""))
        where = origin(url)
        problems = self.validate(options) if where == "invalid" else []
        if problems:
            raise PermanentActionError(f"webhook: {'; '.join(problems)}")
        self.check(url)
        method = str(options.get("method") or "POST").upper()
        headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
        headers["Idempotency-Key"] = job.id
        kwargs: dict[str, Any] = {}
        if "json" in options:
            kwargs["data"] = json.dumps(options["json"], separators=(",", ":")).encode()
            _default_header(headers, "Content-Type", "application/json")
        elif "body" in options:
            kwargs["data"] = str(options["body"]).encode("utf-8")
            _default_header(headers, "Content-Type", "text/plain; charset=utf-8")
        response = send(self._sessions.get(), method, url, f"webhook {where}",
                        timeout=float(options.get("timeout") or DEFAULT_TIMEOUT),
                        headers=headers, **kwargs)
        return f"{method} {where}: HTTP {response.status_code}"


def _default_header(headers: dict[str, str], name: str, value: str) -> None:
    if not any(key.lower() == name.lower() for key in headers):
        headers[name] = value
