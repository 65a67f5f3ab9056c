"""The `alertmanager` action: post one alert per event to Alertmanager's v2 API.

The body is a JSON list with one alert; `alertname` defaults to the rule's name, `startsAt`
is the event's time. Alertmanager itself groups and de-duplicates alerts by their labels.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any, ClassVar

from eventd.actions.base import ActionJob
from eventd.actions.webhook import DEFAULT_TIMEOUT, HttpPostAction, check_timeout, check_url, origin
from eventd.delivery.http import send
from eventd.errors import PermanentActionError
from eventd.events import parse_datetime

ALERTS_PATH = "/api/v2/alerts"


def rfc3339(timestamp: float) -> str:
    """POSIX time as RFC 3339 in UTC with a `Z`."""
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class AlertmanagerAction(HttpPostAction):
    """POST `[alert]` to `<url>/api/v2/alerts`."""

    name: ClassVar[str] = "alertmanager"
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = False
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "minLength": 1},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "generator_url": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """url is an http(s) base URL; labels and annotations are mappings."""
        problems = check_url(options.get("url"))
        for key in ("labels", "annotations"):
            if not isinstance(options.get(key, {}), dict):
                problems.append(f"{key} must be a mapping of names to strings")
        problems.extend(check_timeout(options.get("timeout")))
        return problems

    def alert(self, job: ActionJob) -> dict[str, Any]:
        """The one alert this job posts."""
        options = job.options
        labels = {"alertname": job.rule}
        labels.update({str(k): str(v) for k, v in (options.get("labels") or {}).items()})
        started = parse_datetime(job.event.get("datetime"))
        alert: dict[str, Any] = {
            "labels": labels,
            "annotations": {str(k): str(v) for k, v in (options.get("annotations") or {}).items()},
            "startsAt": rfc3339(started if started is not None else time.time()),
        }
        if options.get("generator_url"):
            alert["generatorURL"] = str(options["generator_url"])
        return alert

    def run(self, job: ActionJob) -> str:
        """Post the alert once."""
        base = str(job.options.get("url", ""))
        where = origin(base)
        if where == "invalid":
            raise PermanentActionError("alertmanager: url must be an http:// or https:// URL")
        url = base.split("?", 1)[0].rstrip("/") + ALERTS_PATH
        self.check(url)
        body = json.dumps([self.alert(job)], separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": job.id}
        response = send(self._sessions.get(), "POST", url, f"alertmanager {where}",
                        timeout=float(job.options.get("timeout") or DEFAULT_TIMEOUT),
                        headers=headers, data=body)
        return f"alert {job.rule} to {where}: HTTP {response.status_code}"
