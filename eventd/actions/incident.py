"""What the incident kinds share (pagerduty, opsgenie, slack, msteams): options, checks, phases.

The lifecycle itself (fire, repeat, resolve, expire; identity from the rendered labels, kept in
the store) is `eventd.alerts.firing`, the same as for `alertmanager`: it puts into each job's
context `incident_key`, `repeat` (the identity was already firing), `ends_at` (resolving) and
`notes` (what the service answered the first time, e.g. Slack's message ts). A kind here only
reads those and sends. `logs` and `history` (enrichment) arrive in the context too, and every
kind attaches them where its service shows text.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

from eventd.actions.webhook import HttpPostAction, check_timeout, check_url, is_template
from eventd.errors import ConfigError
from eventd.records import ActionJob
from eventd.settings import parse_duration

#: the options every incident kind takes besides its own
LIFECYCLE_OPTIONS: dict[str, Any] = {
    "labels": {"type": "object", "additionalProperties": {"type": "string"},
               "description": "the incident's identity (alertname defaults to the rule's name); a "
                              "rule with `resolve: true` and the same labels resolves it"},
    "resolve": {"type": "boolean",
                "description": "resolve the incident with these labels (nothing is sent when it "
                               "is not open)"},
    "resolve_after": {"type": ["string", "number"],
                      "description": "resolve the incident once it has not fired again for this "
                                     "long (e.g. 10m: a crash loop that stopped)"},
    "expire": {"type": ["string", "number"],
               "description": "forget an incident nothing resolved after this long (default 24h)"},
    "timeout": {"type": "number", "exclusiveMinimum": 0},
}

#: the most characters of logs or history a kind puts into one message
MAX_ATTACHED = 4000


def check_lifecycle(options: dict[str, Any]) -> list[str]:
    """Problems with the shared options: labels a mapping, timeout, expire a duration."""
    problems: list[str] = []
    if not isinstance(options.get("labels", {}), dict):
        problems.append("labels must be a mapping of names to strings")
    problems.extend(check_timeout(options.get("timeout")))
    for name in ("expire", "resolve_after"):
        value = options.get(name)
        if value is not None and not is_template(value):
            try:
                if parse_duration(value, name) <= 0:
                    problems.append(f"{name} must be more than 0")
            except ConfigError as exc:
                problems.append(str(exc))
    if options.get("resolve") is True and "resolve_after" in options:
        problems.append("resolve_after belongs to the firing action, not the resolving one")
    return problems


def check_optional_url(options: dict[str, Any], name: str = "url") -> list[str]:
    """A URL option that may be left out (the service's own endpoint is the default)."""
    return [] if name not in options else check_url(options.get(name), name)


def secret_digest(value: object) -> str:
    """A short stable digest of a secret (a routing key, a token): identity without the secret."""
    return hashlib.blake2b(str(value).encode(), digest_size=8).hexdigest()


def phase(job: ActionJob) -> str:
    """`resolve`, `repeat` or `fire`: what this job does to its incident."""
    if "ends_at" in job.context:
        return "resolve"
    return "repeat" if job.context.get("repeat") else "fire"


def attached_logs(job: ActionJob) -> str:
    """The container's last lines the enrichment attached (redacted already), bounded; "" if none."""
    lines = job.context.get("logs")
    if not isinstance(lines, list) or not lines:
        return ""
    text = "\n".join(str(line) for line in lines)
    return text[-MAX_ATTACHED:]


def attached_history(job: ActionJob) -> str:
    """The object's recent events the enrichment attached, as one summary line; "" if none."""
    history = job.context.get("history")
    if isinstance(history, dict) and isinstance(history.get("summary"), str):
        return str(history["summary"])[:MAX_ATTACHED]
    return ""


class IncidentAction(HttpPostAction):
    """An HTTP incident kind: durable, part of the alert lifecycle, one queue per host."""

    incident: ClassVar[bool] = True
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = False

    def incident_destination(self, options: dict[str, Any]) -> str:
        """Where its incidents go, as part of their identity (no secret in clear)."""
        raise NotImplementedError
