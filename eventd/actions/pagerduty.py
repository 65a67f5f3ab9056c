"""The `pagerduty` action: PagerDuty's Events API v2 (`trigger` and `resolve` by `dedup_key`).

One POST to `<url>/v2/enqueue` per job. Firing and repeating send `trigger` with the same
`dedup_key` (PagerDuty adds a repeat to the open incident instead of opening another);
resolving sends `resolve` with it. The `dedup_key` is the option when given, else the
incident's identity (eventd.alerts.firing), which is stable across restarts. The routing key
goes in the body: it is a secret (`${PAGERDUTY_ROUTING_KEY}`, or `PAGERDUTY_ROUTING_KEY_FILE`),
never in a log line or a queue name. PagerDuty answers 202; 400 is a permanent error (the
event is invalid), 429 and 5xx are retried (429 with its Retry-After when one is sent).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, ClassVar

from eventd.actions.alertmanager import rfc3339
from eventd.actions.incident import (
    LIFECYCLE_OPTIONS,
    IncidentAction,
    attached_history,
    attached_logs,
    check_lifecycle,
    check_optional_url,
    phase,
    secret_digest,
)
from eventd.actions.webhook import http_call, origin
from eventd.errors import PermanentActionError
from eventd.events import parse_datetime
from eventd.outbound import Outbound
from eventd.records import ActionJob

DEFAULT_URL = "https://events.pagerduty.com"
ENQUEUE_PATH = "/v2/enqueue"
SEVERITIES = ("critical", "error", "warning", "info")
#: PagerDuty's limits: a summary of at most 1024 characters, a dedup_key of at most 255
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255


class PagerDutyAction(IncidentAction):
    """POST an Events API v2 event: trigger on fire and repeat, resolve on resolve."""

    name: ClassVar[str] = "pagerduty"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["routing_key"],
        "additionalProperties": False,
        "properties": {
            "routing_key": {"type": "string",
                            "description": "the integration's routing key: a secret, e.g. "
                                           "${PAGERDUTY_ROUTING_KEY}; empty: the action does nothing"},
            "url": {"type": "string", "description": f"default {DEFAULT_URL}"},
            "summary": {"type": "string"},
            "severity": {"type": "string", "description": "critical, error, warning or info"},
            "source": {"type": "string"},
            "component": {"type": "string"},
            "group": {"type": "string"},
            "class": {"type": "string"},
            "dedup_key": {"type": "string"},
            "custom_details": {"type": "object"},
            "links": {"type": "array", "items": {
                "type": "object", "required": ["href"], "additionalProperties": False,
                "properties": {"href": {"type": "string"}, "text": {"type": "string"}}}},
            **LIFECYCLE_OPTIONS,
        },
    }

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """A severity PagerDuty knows, an http(s) url if given, the lifecycle options."""
        problems = check_optional_url(options) + check_lifecycle(options)
        severity = options.get("severity", "error")
        if isinstance(severity, str) and "{" not in severity and severity not in SEVERITIES:
            problems.append(f"severity must be one of {', '.join(SEVERITIES)}")
        return problems

    def inactive(self, options: dict[str, Any]) -> bool:
        """No routing key (`${PAGERDUTY_ROUTING_KEY:-}` unset): nothing to send."""
        return options.get("routing_key") == ""

    def target(self, options: dict[str, Any]) -> str:
        """One queue per PagerDuty host."""
        return f"pagerduty:{origin(str(options.get('url') or DEFAULT_URL))}"

    def describe(self, job: ActionJob) -> str:
        """The host only (the routing key is in the body, never shown)."""
        return origin(str(job.options.get("url") or DEFAULT_URL))

    def incident_destination(self, options: dict[str, Any]) -> str:
        """The service (its routing key, digested) and host."""
        return f"{origin(str(options.get('url') or DEFAULT_URL))} " \
               f"{secret_digest(options.get('routing_key', ''))}"

    def dedup_key(self, job: ActionJob) -> str:
        """The option, else the incident's identity from the alert book, else the job id."""
        given = job.options.get("dedup_key")
        key = str(given) if given else str(job.context.get("incident_key") or job.id)
        return key[:MAX_DEDUP_KEY]

    def event(self, job: ActionJob) -> dict[str, Any]:
        """The Events API v2 body this job posts."""
        options = job.options
        body: dict[str, Any] = {"routing_key": str(options.get("routing_key", "")),
                                "dedup_key": self.dedup_key(job)}
        if phase(job) == "resolve":
            body["event_action"] = "resolve"
            return body
        body["event_action"] = "trigger"
        when = parse_datetime(job.event.get("datetime"))
        summary = str(options.get("summary") or f"{job.rule}: {job.event.get('type', 'event')} "
                                                 f"{job.event.get('action', '')}".strip())
        payload: dict[str, Any] = {
            "summary": summary[:MAX_SUMMARY],
            "source": str(options.get("source") or job.event.get("resource_uri") or "eventd"),
            "severity": str(options.get("severity") or "error"),
            "timestamp": rfc3339(when if when is not None else time.time()),
        }
        for name in ("component", "group", "class"):
            if options.get(name):
                payload[name] = str(options[name])
        details = dict(options.get("custom_details") or {})
        logs, history = attached_logs(job), attached_history(job)
        if logs:
            details.setdefault("logs", logs)
        if history:
            details.setdefault("history", history)
        if details:
            payload["custom_details"] = details
        body["payload"] = payload
        links = [{k: str(v) for k, v in link.items() if k in ("href", "text")}
                 for link in options.get("links") or () if isinstance(link, dict)]
        if links:
            body["links"] = links
        body["client"] = "eventd"
        return body

    def prepare(self, job: ActionJob) -> Outbound:
        """POST the event to <url>/v2/enqueue; it carries the routing key (credentials)."""
        if not job.options.get("routing_key"):
            raise PermanentActionError("pagerduty: routing_key is empty")
        body = json.dumps(self.event(job), separators=(",", ":")).encode()
        base = str(job.options.get("url") or DEFAULT_URL).rstrip("/")
        call = http_call("POST", base + ENQUEUE_PATH, {"Content-Type": "application/json"}, body)
        return self.outbound(dataclasses.replace(call, credentials=True))

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Post the event once (202 accepted)."""
        sent = self.post(job, outbound)
        return f"{phase(job)} {job.rule} (dedup_key {self.dedup_key(job)[:12]}...): {sent}"
