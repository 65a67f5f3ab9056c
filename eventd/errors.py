"""The exception tree of eventd: one base class, context in attributes.

    EventdError
    ├── ConfigError                 bad settings or command line (exit 2)
    │   ├── CredentialsMissing      no credential source found (exit 2)
    │   ├── RuleError               a rule file that does not load (exit 2 / `check` exit 1)
    │   └── StateDirError           --state-dir unusable: a file, or held by another eventd (exit 2)
    ├── StreamError                 the websocket could not be used
    │   ├── AuthRejected            the server refused the credentials (exit 3)
    │   └── HandshakeFailed         a non-101 answer other than 401/403 (retried)
    ├── StoreError                  a store operation failed (`op`); drivers' errors become this
    │   └── StoreUnreachable        the store did not answer: "cannot reach the store at X" (exit 2)
    ├── LeaseLost                   a write fenced off: the lease it was made under moved on
    ├── MalformedEvent              a frame that is not a usable event (counted, skipped)
    ├── TemplateError               a template failed to render for one event
    ├── ActionError                 an action attempt failed
    │   ├── RetryableActionError    connection error, timeout, 5xx, 429: try again later
    │   └── PermanentActionError    other 4xx, a redirect, bad or unsafe options: dead-letter
    │       └── GateRefused         the gate refused the request (`reason`): none was made
    └── ActionSkipped               an action decided not to run (rate limit): done, not retried
"""

from __future__ import annotations


class EventdError(Exception):
    """Base class of every error eventd raises on purpose."""


class ConfigError(EventdError):
    """Invalid configuration: a setting, a flag or a file."""


class CredentialsMissing(ConfigError):
    """No credential source was found."""


class RuleError(ConfigError):
    """A rule set failed to load; `problems` holds every problem found."""

    def __init__(self, message: str, problems: list[object] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class StateDirError(ConfigError):
    """The state directory cannot be used: it names a file, or another eventd holds it (`pid`)."""

    def __init__(self, message: str, path: object = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid


class StoreError(EventdError):
    """A store operation failed; `op` names it (a bounded label). The driver's error is the cause.

    Stores convert their driver's errors (sqlite3.Error, redis' ConnectionError) into this at
    their boundary, so nothing else in eventd imports a driver to catch its errors.
    """

    def __init__(self, message: str, op: str = "") -> None:
        super().__init__(message)
        self.op = op


class StoreUnreachable(StoreError):
    """The store did not answer (down, refused, a wrong address): the one wording every command
    prints. `where` is its address without credentials, `reason` what the driver said."""

    def __init__(self, where: str, reason: str, op: str = "") -> None:
        super().__init__(f"cannot reach the store at {where} ({reason})", op=op)
        self.where = where
        self.reason = reason


class LeaseLost(EventdError):
    """A replica's write refused where it lands: the lease of the namespace it belongs to is
    no longer this replica's (another took the stream). Not a store failure: never retried."""


class StreamError(EventdError):
    """The stream connection failed."""


class AuthRejected(StreamError):
    """The server rejected the credentials (HTTP 401/403 or an UNAUTHORIZED error message)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class HandshakeFailed(StreamError):
    """The websocket handshake got an answer other than 101, 401 or 403."""

    def __init__(self, message: str, status_code: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class MalformedEvent(EventdError):
    """A frame that is not a JSON object with a `type`; `reason` is a bounded metric label."""

    def __init__(self, reason: str, sample: str = "") -> None:
        super().__init__(f"{reason}: {sample[:200]!r}")
        self.reason = reason
        self.sample = sample[:200]


class TemplateError(EventdError):
    """A template failed to render; `rule` names the rule whose template it was."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


class ActionError(EventdError):
    """One attempt of an action failed; `detail` is the server's own explanation, if any."""

    def __init__(self, message: str, status_code: int | None = None,
                 retry_after: float | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        self.detail = detail


class RetryableActionError(ActionError):
    """A failure worth retrying: connection error, timeout, 5xx, 429."""


class PermanentActionError(ActionError):
    """A failure that retrying cannot fix: 4xx other than 429, invalid options."""


class GateRefused(PermanentActionError):
    """The gate refused what an attempt would send; no request was made. `reason` is a
    bounded metric label (eventd_gate_refused_total), the message says why in words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, detail=message)
        self.reason = reason


class ActionSkipped(EventdError):
    """An action decided not to run (e.g. rate-limited); finished without a call, not retried."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # a bounded label: "rate_limited"

