"""The `slack` action: an incident as a Slack message that threads its repeats and says when
it is resolved.

Bot mode (`token`, `channel`): the first firing posts `chat.postMessage` (text and blocks);
the channel and `ts` Slack answers are kept with the incident (eventd.alerts.firing's
notes, in the store), so a repeat is a reply in that message's thread and the resolve edits
the message (`chat.update`) to say so, after a restart too. Incoming-webhook mode
(`webhook_url`): one message per fire, repeat and resolve; a webhook can neither thread nor
edit. Slack answers 429 with Retry-After when it rate-limits (the delivery waits that long);
the Web API's other errors come as HTTP 200 with `{"ok": false, "error": ...}`: `ratelimited`
is retried, the rest (invalid_auth, channel_not_found...) are dead letters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, ClassVar

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
from eventd.actions.webhook import DEFAULT_TIMEOUT, check_url, http_call, loggable, origin
from eventd.clients.http import send_call
from eventd.errors import PermanentActionError, RetryableActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

log = logging.getLogger(__name__)

DEFAULT_API = "https://slack.com"
POST_PATH = "/api/chat.postMessage"
UPDATE_PATH = "/api/chat.update"
#: Slack's limits: a section's text at most 3000 characters, a header's 150, 50 blocks
MAX_SECTION = 3000
MAX_HEADER = 150
#: Web API errors worth another try (the others will not change by waiting)
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error",
                              "service_unavailable", "request_timeout"})


class SlackAction(IncidentAction):
    """chat.postMessage / a thread reply / chat.update, or an incoming webhook."""

    name: ClassVar[str] = "slack"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "properties": {
            "token": {"type": "string",
                      "description": "a bot token (xoxb-...): a secret, e.g. ${SLACK_BOT_TOKEN}"},
            "channel": {"type": "string", "description": "a channel ID or #name (bot mode)"},
            "webhook_url": {"type": "string",
                            "description": "an incoming webhook (no threads, no edits): a "
                                           "secret, e.g. ${SLACK_WEBHOOK_URL}"},
            "url": {"type": "string", "description": f"the Web API's base, default {DEFAULT_API}"},
            "text": {"type": "string", "description": "the message (Slack mrkdwn)"},
            "title": {"type": "string", "description": "the header block (plain text)"},
            "fields": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "name: value pairs shown under the text"},
            **LIFECYCLE_OPTIONS,
        },
    }

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """Either token and channel (bot) or webhook_url, never both; the lifecycle options."""
        problems = check_lifecycle(options) + check_optional_url(options)
        bot = "token" in options or "channel" in options
        if bot and "webhook_url" in options:
            problems.append("give token and channel, or webhook_url, not both")
        elif bot and not ("token" in options and "channel" in options):
            problems.append("bot mode needs both token and channel")
        elif not bot and "webhook_url" not in options:
            problems.append("give token and channel (bot mode) or webhook_url")
        elif "webhook_url" in options and options["webhook_url"] != "":
            problems.extend(check_url(options["webhook_url"], "webhook_url"))
        return problems

    def inactive(self, options: dict[str, Any]) -> bool:
        """An empty token or webhook_url (an unset `${VAR:-}`): nothing to send."""
        return options.get("token") == "" or options.get("webhook_url") == ""

    @staticmethod
    def _bot(options: dict[str, Any]) -> bool:
        return "webhook_url" not in options

    def _base(self, options: dict[str, Any]) -> str:
        return str(options.get("url") or DEFAULT_API).rstrip("/")

    def target(self, options: dict[str, Any]) -> str:
        """One queue per Slack host."""
        where = self._base(options) if self._bot(options) else str(options.get("webhook_url", ""))
        return f"slack:{origin(where)}"

    def describe(self, job: ActionJob) -> str:
        """The channel (bot mode) or the webhook with its token masked."""
        options = job.options
        if self._bot(options):
            return f"{origin(self._base(options))} {str(options.get('channel', ''))[:80]}"
        return loggable(str(options.get("webhook_url", "")))

    def incident_destination(self, options: dict[str, Any]) -> str:
        """The workspace (its token, digested) and channel, or the webhook (digested)."""
        if self._bot(options):
            return f"{secret_digest(options.get('token', ''))} {options.get('channel', '')}"
        return secret_digest(options.get("webhook_url", ""))

    def message(self, job: ActionJob, *, resolved: bool = False) -> dict[str, Any]:
        """`text` and `blocks` for this job: header, text, fields, logs and history."""
        options = job.options
        text = str(options.get("text") or job.rule)
        if resolved:
            text = f":white_check_mark: Resolved: {text}"
        blocks: list[dict[str, Any]] = []
        title = options.get("title")
        if title:
            blocks.append({"type": "header", "text": {
                "type": "plain_text", "text": (("Resolved: " if resolved else "") + str(title))
                [:MAX_HEADER]}})
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_SECTION]}})
        fields = options.get("fields") or {}
        if fields:
            blocks.append({"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{value}"[:2000]}
                for name, value in list(fields.items())[:10]]})
        history = attached_history(job)
        if history and not resolved:
            blocks.append({"type": "context", "elements": [
                {"type": "mrkdwn", "text": history[:MAX_SECTION]}]})
        logs = attached_logs(job)
        if logs and not resolved:
            # a code block; ``` inside the logs would end it early
            body = logs.replace("```", "'''")[-(MAX_SECTION - 8):]
            blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                       "text": f"```{body}```"}})
        return {"text": text[:MAX_SECTION], "blocks": blocks}

    def _notes(self, job: ActionJob) -> dict[str, Any]:
        """The channel and ts of the incident's first message: from the job, else the book."""
        notes = dict(job.context.get("notes") or {})
        key = job.context.get("incident_key")
        if not notes.get("ts") and key and self.context.incidents is not None \
                and phase(job) == "repeat":
            notes = self.context.incidents.notes(str(key))
        return notes if isinstance(notes.get("ts"), str) and notes.get("channel") else {}

    def prepare(self, job: ActionJob) -> Outbound:
        """Bot: postMessage (a reply when the incident has a message) or chat.update; webhook:
        one POST. The token goes as a Bearer header, never in the body."""
        options = job.options
        step = phase(job)
        if not self._bot(options):
            body = self.message(job, resolved=step == "resolve")
            call = http_call("POST", str(options.get("webhook_url", "")),
                             {"Content-Type": "application/json"},
                             json.dumps(body, separators=(",", ":")).encode())
            return self.outbound(dataclasses.replace(call, credentials=True))
        if not options.get("token"):
            raise PermanentActionError("slack: token is empty")
        notes = self._notes(job)
        body = self.message(job, resolved=step == "resolve")
        path = POST_PATH
        if step == "resolve" and notes:
            body.update(channel=notes["channel"], ts=notes["ts"])
            path = UPDATE_PATH
        else:
            body["channel"] = str(options.get("channel", ""))
            if step == "repeat" and notes:
                body.update(channel=notes["channel"], thread_ts=notes["ts"])
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Authorization": f"Bearer {options['token']}"}
        call = http_call("POST", self._base(options) + path, headers,
                         json.dumps(body, separators=(",", ":")).encode())
        return self.outbound(call)

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Send the one call; in bot mode read Slack's `ok`, and keep a new message's ts."""
        call = outbound.calls[0]
        where = call.address.origin
        response = send_call(self._sessions.get(), call, f"slack {where}",
                             timeout=float(job.options.get("timeout") or DEFAULT_TIMEOUT))
        step = phase(job)
        if not self._bot(job.options):
            return f"{step} {job.rule}: webhook {where}: HTTP {response.status_code}"
        method = call.address.path.rsplit("/", 1)[-1]
        answer = _answer(response, method, where)
        sent = json.loads(call.body or b"{}")
        if method == "chat.postMessage" and "thread_ts" not in sent:
            self._keep(job, answer)
        what = "reply in thread" if "thread_ts" in sent else \
            "message edited" if method == "chat.update" else "message"
        return f"{step} {job.rule}: {what} ({method} {where}: ok)"

    def _keep(self, job: ActionJob, answer: dict[str, Any]) -> None:
        """Keep where the incident's message is, for its repeats and its resolve."""
        key = job.context.get("incident_key")
        channel, ts = answer.get("channel"), answer.get("ts")
        if not key or self.context.incidents is None or not isinstance(ts, str) \
                or not isinstance(channel, str) or phase(job) == "resolve":
            return
        if not self.context.incidents.note(str(key), {"channel": channel, "ts": ts}):
            log.info("slack: rule %s's incident was resolved before its message was sent; "
                     "its repeats and resolve will not find the message", job.rule)


def _answer(response: Any, method: str, where: str) -> dict[str, Any]:
    """Slack's JSON answer; `ok: false` as a Retryable or Permanent ActionError."""
    try:
        answer = response.json()
    except ValueError:
        raise RetryableActionError(f"slack {where}: {method} answered something not JSON",
                                   status_code=response.status_code) from None
    if not isinstance(answer, dict):
        raise RetryableActionError(f"slack {where}: {method} answered something not an object")
    if answer.get("ok") is True:
        return answer
    error = str(answer.get("error") or "unknown")[:80]
    message = f"slack {where}: {method}: {error}"
    if error in RETRYABLE_ERRORS:
        raise RetryableActionError(message, status_code=response.status_code, detail=error)
    raise PermanentActionError(message, status_code=response.status_code, detail=error)
