"""The `msteams` action: an incident as an Adaptive Card posted to a Teams Workflows webhook.

A Workflows webhook ("When a Teams webhook request is received") takes a message with one
Adaptive Card attachment and answers 202. It cannot thread or edit, so fire, repeat and
resolve are each a card: the first says the incident opened, a repeat says it happened again,
the resolve says it is resolved (in green). The webhook's URL holds its signature (`sig=`):
a secret (`${MSTEAMS_WEBHOOK_URL}` or `MSTEAMS_WEBHOOK_URL_FILE`), masked in every log line.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from eventd.actions.incident import (
    LIFECYCLE_OPTIONS,
    IncidentAction,
    attached_history,
    attached_logs,
    check_lifecycle,
    phase,
    secret_digest,
)
from eventd.actions.webhook import check_url, http_call, loggable, origin
from eventd.errors import PermanentActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_VERSION = "1.4"
#: Teams refuses messages over about 28 KB; the card stays well under it
MAX_TEXT = 6000
MAX_FACTS = 20


class MsTeamsAction(IncidentAction):
    """POST `{"type": "message", "attachments": [<Adaptive Card>]}` to the webhook."""

    name: ClassVar[str] = "msteams"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["webhook_url", "title"],
        "additionalProperties": False,
        "properties": {
            "webhook_url": {"type": "string",
                            "description": "the Workflows webhook: a secret, e.g. "
                                           "${MSTEAMS_WEBHOOK_URL}; empty: the action does nothing"},
            "title": {"type": "string"},
            "text": {"type": "string"},
            "facts": {"type": "object", "additionalProperties": {"type": "string"}},
            **LIFECYCLE_OPTIONS,
        },
    }

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """An http(s) webhook_url (or empty: off), the lifecycle options."""
        url = options.get("webhook_url")
        problems = [] if url == "" else check_url(url, "webhook_url")
        return problems + check_lifecycle(options)

    def inactive(self, options: dict[str, Any]) -> bool:
        """No webhook (`${MSTEAMS_WEBHOOK_URL:-}` unset): nothing to send."""
        return options.get("webhook_url") == ""

    def target(self, options: dict[str, Any]) -> str:
        """One queue per webhook host."""
        return f"msteams:{origin(str(options.get('webhook_url', '')))}"

    def describe(self, job: ActionJob) -> str:
        """The webhook with its path tokens and query (the signature) masked."""
        return loggable(str(job.options.get("webhook_url", "")))

    def incident_destination(self, options: dict[str, Any]) -> str:
        """The webhook, digested."""
        return secret_digest(options.get("webhook_url", ""))

    def card(self, job: ActionJob) -> dict[str, Any]:
        """The Adaptive Card for this job's phase."""
        options = job.options
        step = phase(job)
        title = str(options.get("title") or job.rule)
        heading = {"fire": title, "repeat": f"Again: {title}", "resolve": f"Resolved: {title}"}
        body: list[dict[str, Any]] = [{
            "type": "TextBlock", "text": heading[step][:MAX_TEXT], "weight": "Bolder",
            "size": "Medium", "wrap": True,
            "color": "Good" if step == "resolve" else "Attention"}]
        if options.get("text"):
            body.append({"type": "TextBlock", "text": str(options["text"])[:MAX_TEXT],
                         "wrap": True})
        facts = [{"title": str(k), "value": str(v)}
                 for k, v in list((options.get("facts") or {}).items())[:MAX_FACTS]]
        if facts:
            body.append({"type": "FactSet", "facts": facts})
        history, logs = attached_history(job), attached_logs(job)
        if history and step != "resolve":
            body.append({"type": "TextBlock", "text": history, "isSubtle": True, "wrap": True})
        if logs and step != "resolve":
            body.append({"type": "TextBlock", "text": logs[-MAX_TEXT:], "fontType": "Monospace",
                         "wrap": True, "size": "Small"})
        return {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard", "version": CARD_VERSION, "body": body}

    def prepare(self, job: ActionJob) -> Outbound:
        """One POST of the message with the card; the URL carries the signature (credentials)."""
        url = str(job.options.get("webhook_url", ""))
        if not url:
            raise PermanentActionError("msteams: webhook_url is empty")
        message = {"type": "message", "attachments": [
            {"contentType": CARD_TYPE, "contentUrl": None, "content": self.card(job)}]}
        call = http_call("POST", url, {"Content-Type": "application/json"},
                         json.dumps(message, separators=(",", ":")).encode())
        return self.outbound(dataclasses.replace(call, credentials=True))

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Post the card once (Workflows answers 202)."""
        return f"{phase(job)} {job.rule}: card {self.post(job, outbound)}"
