"""The `opsgenie` action: Opsgenie's Alert API v2 (create with an `alias`, close by alias).

Firing and repeating create the alert with the same `alias` (Opsgenie de-duplicates: the open
alert's count goes up instead of a second alert); resolving closes it by alias. The alias is
the option when given, else the incident's identity (eventd.alerts.firing), stable across
restarts. The API key goes as `Authorization: GenieKey <key>`: a secret (`${OPSGENIE_API_KEY}`
or `OPSGENIE_API_KEY_FILE`). `region: eu` uses api.eu.opsgenie.com. Opsgenie answers 202
(it processes asynchronously); 422 and other 4xx are dead letters, 429 and 5xx are retried.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import quote

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
from eventd.actions.webhook import http_call, is_template, origin
from eventd.errors import PermanentActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

ENDPOINTS = {"us": "https://api.opsgenie.com", "eu": "https://api.eu.opsgenie.com"}
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
#: the Alert API's limits (characters; tags: count and length)
MAX_MESSAGE = 130
MAX_ALIAS = 512
MAX_DESCRIPTION = 15000
MAX_TAGS = 20
MAX_TAG = 50
MAX_SOURCE = 100


class OpsgenieAction(IncidentAction):
    """POST /v2/alerts to fire and repeat, /v2/alerts/<alias>/close?identifierType=alias to resolve."""

    name: ClassVar[str] = "opsgenie"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["api_key", "message"],
        "additionalProperties": False,
        "properties": {
            "api_key": {"type": "string",
                        "description": "an API integration's key: a secret, e.g. "
                                       "${OPSGENIE_API_KEY}; empty: the action does nothing"},
            "region": {"type": "string", "description": "us (default) or eu"},
            "url": {"type": "string", "description": "the API's base (instead of region)"},
            "message": {"type": "string"},
            "alias": {"type": "string"},
            "description": {"type": "string"},
            "priority": {"type": "string", "description": "P1 (critical) to P5; default P3"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "details": {"type": "object", "additionalProperties": {"type": "string"}},
            "entity": {"type": "string"},
            "source": {"type": "string"},
            "note": {"type": "string", "description": "a note added when the alert is closed"},
            **LIFECYCLE_OPTIONS,
        },
    }

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """A known region and priority, an http(s) url if given, the lifecycle options."""
        problems = check_optional_url(options) + check_lifecycle(options)
        region = options.get("region", "us")
        if not is_template(region) and region not in ENDPOINTS:
            problems.append(f"region must be one of {', '.join(ENDPOINTS)}")
        priority = options.get("priority", "P3")
        if not is_template(priority) and priority not in PRIORITIES:
            problems.append(f"priority must be one of {', '.join(PRIORITIES)}")
        return problems

    def inactive(self, options: dict[str, Any]) -> bool:
        """No API key (`${OPSGENIE_API_KEY:-}` unset): nothing to send."""
        return options.get("api_key") == ""

    @staticmethod
    def base(options: dict[str, Any]) -> str:
        """The API's base URL: `url`, else the region's endpoint."""
        given = options.get("url")
        if given:
            return str(given).rstrip("/")
        return ENDPOINTS.get(str(options.get("region") or "us"), ENDPOINTS["us"])

    def target(self, options: dict[str, Any]) -> str:
        """One queue per Opsgenie host."""
        return f"opsgenie:{origin(self.base(options))}"

    def describe(self, job: ActionJob) -> str:
        """The host only (the key is a header, never shown)."""
        return origin(self.base(job.options))

    def incident_destination(self, options: dict[str, Any]) -> str:
        """The host and the integration (its key, digested)."""
        return f"{origin(self.base(options))} {secret_digest(options.get('api_key', ''))}"

    def alias(self, job: ActionJob) -> str:
        """The option, else the incident's identity, else the job id."""
        given = job.options.get("alias")
        return (str(given) if given else str(job.context.get("incident_key") or job.id))[:MAX_ALIAS]

    def create(self, job: ActionJob) -> dict[str, Any]:
        """The create-alert body."""
        options = job.options
        body: dict[str, Any] = {"message": str(options.get("message") or job.rule)[:MAX_MESSAGE],
                                "alias": self.alias(job),
                                "priority": str(options.get("priority") or "P3")}
        description = str(options.get("description") or "")
        history, logs = attached_history(job), attached_logs(job)
        if history:
            description += ("\n\n" if description else "") + history
        if logs:
            description += ("\n\n" if description else "") + "Last log lines:\n" + logs
        if description:
            body["description"] = description[:MAX_DESCRIPTION]
        tags = [str(tag)[:MAX_TAG] for tag in options.get("tags") or ()][:MAX_TAGS]
        if tags:
            body["tags"] = tags
        details = {str(k): str(v) for k, v in (options.get("details") or {}).items()}
        if details:
            body["details"] = details
        if options.get("entity"):
            body["entity"] = str(options["entity"])[:MAX_ALIAS]
        body["source"] = str(options.get("source") or "eventd")[:MAX_SOURCE]
        return body

    def prepare(self, job: ActionJob) -> Outbound:
        """Create, or close by alias; the key as a GenieKey header (credentials)."""
        options = job.options
        if not options.get("api_key"):
            raise PermanentActionError("opsgenie: api_key is empty")
        headers = {"Content-Type": "application/json",
                   "Authorization": f"GenieKey {options['api_key']}"}
        base = self.base(options)
        if phase(job) == "resolve":
            url = f"{base}/v2/alerts/{quote(self.alias(job), safe='')}/close?identifierType=alias"
            body: dict[str, Any] = {"source": str(options.get("source") or "eventd")[:MAX_SOURCE]}
            if options.get("note"):
                body["note"] = str(options["note"])
        else:
            url, body = f"{base}/v2/alerts", self.create(job)
        return self.outbound(http_call("POST", url, headers,
                                       json.dumps(body, separators=(",", ":")).encode()))

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Send it once (202: Opsgenie will process it)."""
        sent = self.post(job, outbound)
        verb = "close" if phase(job) == "resolve" else phase(job)
        return f"{verb} {job.rule} (alias {self.alias(job)[:12]}...): {sent}"
