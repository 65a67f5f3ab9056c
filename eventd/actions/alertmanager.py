"""The `alertmanager` action: post one alert per event to Alertmanager's v2 API.

The body is a JSON list with one alert; `alertname` defaults to the rule's name, `startsAt`
is the event's time. Alertmanager itself groups and de-duplicates alerts by their labels.
What fires is kept and re-sent by `eventd.alerts.firing`, which puts `starts_at` and
`ends_in` (or, resolving, `ends_at`) into the job's context; this module only sends.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import time
from typing import Any, ClassVar

from eventd.actions.webhook import HttpPostAction, check_timeout, check_url
from eventd.errors import ConfigError
from eventd.events import parse_datetime
from eventd.outbound import Address, Call, Outbound, parse_url
from eventd.records import ActionJob
from eventd.settings import parse_duration

ALERTS_PATH = "/api/v2/alerts"


def rfc3339(timestamp: float) -> str:
    """POSIX time as RFC 3339 in UTC with a `Z`."""
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class AlertmanagerAction(HttpPostAction):
    """POST `[alert]` to `<url>/api/v2/alerts`."""

    name: ClassVar[str] = "alertmanager"
    #: its alerts have a lifecycle (eventd.alerts.firing): fire, re-send, resolve, expire
    incident: ClassVar[bool] = True
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = False
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string",
                    "description": "Alertmanager's base URL; empty (an unset ${VAR:-}): the action "
                                   "does nothing"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "generator_url": {"type": "string"},
            "resolve": {"type": "boolean",
                        "description": "send the alert with the same labels as resolved (endsAt = now) "
                                       "and stop re-sending it"},
            "expire": {"type": ["string", "number"],
                       "description": "stop re-sending an alert nothing resolved after this long "
                                      "(default 24h)"},
            "resolve_after": {"type": ["string", "number"],
                              "description": "resolve the alert once it has not fired again for "
                                             "this long"},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """url is an http(s) base URL (or empty: off); labels and annotations are mappings."""
        url = options.get("url")
        problems = [] if url == "" else check_url(url)
        for key in ("labels", "annotations"):
            if not isinstance(options.get(key, {}), dict):
                problems.append(f"{key} must be a mapping of names to strings")
        problems.extend(check_timeout(options.get("timeout")))
        for name in ("expire", "resolve_after"):
            value = options.get(name)
            if value is not None and not (isinstance(value, str) and "{" in value):
                try:
                    if parse_duration(value, name) <= 0:
                        problems.append(f"{name} must be more than 0")
                except ConfigError as exc:
                    problems.append(str(exc))
        return problems

    def inactive(self, options: dict[str, Any]) -> bool:
        """No Alertmanager configured (`url: "${ALERTMANAGER_URL:-}"` with the variable unset):
        nothing to send, so the engine neither renders nor queues it."""
        return options.get("url") == ""

    def alert(self, job: ActionJob) -> dict[str, Any]:
        """The one alert this job posts."""
        options = job.options
        labels = {"alertname": job.rule}
        labels.update({str(k): str(v) for k, v in (options.get("labels") or {}).items()})
        started = parse_datetime(job.event.get("datetime"))
        annotations = {str(k): str(v) for k, v in (options.get("annotations") or {}).items()}
        logs, history = job.context.get("logs"), job.context.get("history")
        if isinstance(logs, list) and logs and "logs" not in annotations:
            annotations["logs"] = "\n".join(str(line) for line in logs)[-4000:]
        if isinstance(history, dict) and history.get("summary") and "history" not in annotations:
            annotations["history"] = str(history["summary"])[:4000]
        alert: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(started if started is not None else time.time()),
        }
        context = job.context
        if isinstance(context.get("starts_at"), (int, float)):
            alert["startsAt"] = rfc3339(float(context["starts_at"]))
        if isinstance(context.get("ends_at"), (int, float)):  # resolving
            alert["endsAt"] = rfc3339(float(context["ends_at"]))
        elif isinstance(context.get("ends_in"), (int, float)):  # firing: active until re-sent
            alert["endsAt"] = rfc3339(time.time() + float(context["ends_in"]))
        if options.get("generator_url"):
            alert["generatorURL"] = str(options["generator_url"])
        return alert

    def prepare(self, job: ActionJob) -> Outbound:
        """POST `[alert]` to the base URL's /api/v2/alerts (the base parsed once)."""
        base, userinfo = parse_url(str(job.options.get("url", "")))
        path = base.path.rstrip("/") + ALERTS_PATH
        body = json.dumps([self.alert(job)], separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": job.id}
        if userinfo is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        address = Address(base.scheme, base.host, base.port, path)
        return self.outbound(Call("POST", address, tuple(headers.items()), body,
                                  credentials=userinfo is not None))

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Post the alert once."""
        sent = self.post(job, outbound)
        verb = "resolved" if "ends_at" in job.context else "re-sent" if job.context.get("resend") \
            else "alert"
        return f"{verb} {job.rule}: {sent}"
