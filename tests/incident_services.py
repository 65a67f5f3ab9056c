"""Local fakes of the incident services, written from their public API references.

Real HTTP servers on 127.0.0.1:0. Each validates the request shapes its reference gives,
answers with the reference's status codes and bodies, keeps the state a person would see
(open incidents, messages and threads), records every request, and can be scripted to answer
the next requests with a rate limit (`limit(count, retry_after)`).

- PagerDuty Events API v2 (developer.pagerduty.com, "Send an Alert Event" / "Events API v2
  Overview"): POST /v2/enqueue; 202 `{"status": "success", "message": "Event processed",
  "dedup_key"}`; 400 `{"status": "invalid event", "message": "Event object is invalid",
  "errors": [...]}`; 429 when rate limited (the reference gives no Retry-After; the fake sends
  none unless told).
- Slack Web API (api.slack.com/methods/chat.postMessage, chat.update, "Rate limits", "Block Kit"
  reference): POST /api/chat.postMessage and /api/chat.update with `Authorization: Bearer
  xoxb-...` and a JSON body; HTTP 200 with `{"ok": true, "channel", "ts", "message"}` or
  `{"ok": false, "error": "invalid_auth" | "channel_not_found" | "message_not_found" |
  "no_text" | "invalid_blocks" | "msg_too_long"}`; HTTP 429 with `Retry-After: <seconds>`
  when rate limited. Blocks: at most 50, each of a known type, a section's text at most 3000
  characters, a header's plain text at most 150. Where the reference is silent the fake
  guesses: a `thread_ts` naming no message is accepted (the reply starts a thread nobody
  sees, as far as the fake knows).
- Slack incoming webhooks (api.slack.com/messaging/webhooks): POST JSON `{text, blocks}`;
  200 `ok` (text/html); 400 `invalid_payload` / `no_text`; 404 `no_service`; 429 rate limited.
- Opsgenie Alert API v2 (docs.opsgenie.com, "Alert API": Create Alert, Close Alert, "API
  Rate Limiting", "Response"): POST /v2/alerts and /v2/alerts/{id}/close?identifierType=alias
  with `Authorization: GenieKey <key>`; 202 `{"result": "Request will be processed", "took",
  "requestId"}`; 422 `{"message": ..., "took", "requestId"}` for an invalid request; 401 for a
  bad key; 429 when rate limited. Limits: message 130 characters, alias 512, description
  15000, at most 20 tags of 50 characters, priority P1-P5, source 100. A create whose alias
  is open raises the open alert's count (de-duplication). The fake processes at once, where
  Opsgenie processes asynchronously (a close of an unknown alias is 202 there and fails
  later; here it is 202 and does nothing).
- Microsoft Teams Workflows webhooks (learn.microsoft.com, "Create incoming webhooks with
  Workflows for Microsoft Teams", "Adaptive Card schema" adaptivecards.io): POST `{"type":
  "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
  "content": <AdaptiveCard>}]}` to a URL signed with `sig=`; 202 with no body; 400 for a
  payload the flow cannot parse; 401 for a wrong signature; 429 with Retry-After when
  throttled. The fake checks the card's `type`, `version` and body elements (TextBlock with
  text, FactSet with title/value facts) and the 28 KB message limit Teams documents; what a
  flow does with the card afterwards (post it in a channel) it guesses: it keeps the cards.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request a fake received, and its answer's status."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float = 0.0  # time.monotonic() when it was answered

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


Answer = tuple[int, dict[str, str], Any]


@dataclass
class _Script:
    count: int = 0
    status: int = 429
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class FakeService:
    """The HTTP plumbing: subclasses implement `answer(method, path, headers, body)`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._script = _Script()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                status, extra, payload = fake._answer(self.command, self.path, headers, body)
                data = b"" if payload is None else (
                    payload if isinstance(payload, bytes) else json.dumps(payload).encode())
                self.send_response(status)
                if payload is not None and not isinstance(payload, bytes):
                    self.send_header("Content-Type", "application/json")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:  # silent
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def limit(self, count: int, retry_after: str | None = None, status: int = 429,
              body: Any = None) -> None:
        """Answer the next `count` requests with `status` (a rate limit), Retry-After if given."""
        with self.lock:
            self._script = _Script(count, status, {"Retry-After": retry_after} if retry_after
                                   else {}, body)

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            if self._script.count > 0:
                self._script.count -= 1
                answer: Answer = (self._script.status, dict(self._script.headers),
                                  self._script.body)
            else:
                answer = self.answer(method, path, headers, body)
            self.requests.append(Request(method, path, headers, body, answer[0], time.monotonic()))
            return answer

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        raise NotImplementedError


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# -- PagerDuty Events API v2 -------------------------------------------------------------------
PD_SEVERITIES = ("critical", "error", "warning", "info")
PD_ACTIONS = ("trigger", "acknowledge", "resolve")


@dataclass
class PagerDutyIncident:
    """An incident as a responder sees it: its dedup_key, status, the alerts added to it."""

    dedup_key: str
    status: str
    events: list[dict[str, Any]] = field(default_factory=list)


class PagerDutyFake(FakeService):
    """POST /v2/enqueue. `routing_keys` are the integrations that exist (others: 400)."""

    def __init__(self, routing_keys: tuple[str, ...] = ("R" * 32,)) -> None:
        super().__init__()
        self.routing_keys = routing_keys
        #: every incident ever opened, oldest first (a trigger after a resolve opens another)
        self.incidents: list[PagerDutyIncident] = []

    def open(self, dedup_key: str) -> PagerDutyIncident | None:
        return next((i for i in reversed(self.incidents)
                     if i.dedup_key == dedup_key and i.status != "resolved"), None)

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if (method, path) != ("POST", "/v2/enqueue"):
            return 404, {}, {"status": "not found"}
        event = _json_object(body)
        errors = pagerduty_errors(event, self.routing_keys)
        if errors or event is None:
            return 400, {}, {"status": "invalid event", "message": "Event object is invalid",
                             "errors": errors}
        action = event["event_action"]
        dedup_key = str(event.get("dedup_key") or f"generated-{len(self.incidents)}")
        incident = self.open(dedup_key)
        if action == "trigger":
            if incident is None:
                incident = PagerDutyIncident(dedup_key, "triggered")
                self.incidents.append(incident)
            incident.events.append(event)
        elif incident is not None:  # acknowledge or resolve; of nothing open: accepted, no-op
            incident.status = "resolved" if action == "resolve" else "acknowledged"
            incident.events.append(event)
        return 202, {}, {"status": "success", "message": "Event processed", "dedup_key": dedup_key}


def pagerduty_errors(event: dict[str, Any] | None, routing_keys: tuple[str, ...]) -> list[str]:
    """What the Events API v2 reference says makes an event invalid."""
    if event is None:
        return ["Body must be a JSON object"]
    errors = []
    if event.get("routing_key") not in routing_keys:
        errors.append("'routing_key' is invalid")
    action = event.get("event_action")
    if action not in PD_ACTIONS:
        errors.append("'event_action' must be one of trigger, acknowledge, resolve")
    dedup_key = event.get("dedup_key")
    if dedup_key is not None and (not isinstance(dedup_key, str) or len(dedup_key) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup_key:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return errors + ["'payload' is required for trigger"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) > 1024:
            errors.append("'payload.summary' is required (at most 1024 characters)")
        if not isinstance(payload.get("source"), str) or not payload.get("source"):
            errors.append("'payload.source' is required")
        if payload.get("severity") not in PD_SEVERITIES:
            errors.append("'payload.severity' must be one of critical, error, warning, info")
        if "timestamp" in payload:
            try:
                datetime.fromisoformat(str(payload["timestamp"]).replace("Z", "+00:00"))
            except ValueError:
                errors.append("'payload.timestamp' must be ISO 8601")
        for name in ("component", "group", "class"):
            if name in payload and not isinstance(payload[name], str):
                errors.append(f"'payload.{name}' must be a string")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            errors.append("'payload.custom_details' must be an object")
        links = event.get("links", [])
        if not isinstance(links, list) or any(
                not isinstance(link, dict) or not isinstance(link.get("href"), str)
                for link in links):
            errors.append("'links' must be a list of objects with an 'href'")
    unknown = set(event) - {"routing_key", "event_action", "dedup_key", "payload", "images",
                            "links", "client", "client_url"}
    if unknown:
        errors.append(f"unknown fields: {', '.join(sorted(unknown))}")
    return errors


def running(fake: FakeService) -> Iterator[FakeService]:
    """Start a fake, yield it, always stop it (for fixtures)."""
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


# -- Slack --------------------------------------------------------------------------------------
SLACK_BLOCK_TYPES = ("section", "header", "context", "divider", "actions", "image", "rich_text")


@dataclass
class SlackMessage:
    """A message in a channel as people see it: its text, blocks, replies and edits."""

    channel: str
    ts: str
    text: str
    blocks: list[Any]
    thread_ts: str | None = None
    replies: list[SlackMessage] = field(default_factory=list)
    edits: int = 0


def slack_block_errors(blocks: Any) -> list[str]:
    """What the Block Kit reference says makes `blocks` invalid."""
    if not isinstance(blocks, list) or len(blocks) > 50:
        return ["blocks must be a list of at most 50"]
    errors = []
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") not in SLACK_BLOCK_TYPES:
            errors.append("unknown block type")
            continue
        text = block.get("text")
        if block["type"] == "header":
            if not isinstance(text, dict) or text.get("type") != "plain_text" \
                    or len(str(text.get("text", ""))) > 150:
                errors.append("a header's text is plain_text of at most 150 characters")
        elif block["type"] == "section":
            fields = block.get("fields")
            if text is None and not fields:
                errors.append("a section needs text or fields")
            if isinstance(text, dict) and (text.get("type") not in ("mrkdwn", "plain_text")
                                           or not 0 < len(str(text.get("text", ""))) <= 3000):
                errors.append("a section's text is 1 to 3000 characters")
            if fields is not None and (not isinstance(fields, list) or len(fields) > 10):
                errors.append("a section has at most 10 fields")
    return errors


class SlackFake(FakeService):
    """The Web API's chat.postMessage and chat.update for one bot token, and incoming webhooks
    at /services/T000/B000/<secret>."""

    def __init__(self, token: str = "xoxb-1-2-fake", channels: dict[str, str] | None = None,
                 webhook_secret: str = "W" * 24) -> None:
        super().__init__()
        self.token = token
        #: channel name -> ID
        self.channels = channels or {"ops": "C0OPS0001"}
        self.webhook_path = f"/services/T000/B000/{webhook_secret}"
        self.messages: list[SlackMessage] = []  # top-level messages, oldest first
        self.webhook_posts: list[dict[str, Any]] = []
        self._clock = 1_700_000_000

    def _ts(self) -> str:
        self._clock += 1
        return f"{self._clock}.{len(self.requests):06d}"

    def find(self, channel: str, ts: str) -> SlackMessage | None:
        return next((m for m in self.messages if (m.channel, m.ts) == (channel, ts)), None)

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if method == "POST" and path == self.webhook_path:
            return self._webhook(body)
        if method != "POST" or path not in ("/api/chat.postMessage", "/api/chat.update"):
            return 404, {}, {"ok": False, "error": "unknown_method"}
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if not auth:
            return 200, {}, {"ok": False, "error": "not_authed"}
        if auth != f"Bearer {self.token}":
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        data = _json_object(body)
        if data is None:
            return 200, {}, {"ok": False, "error": "invalid_json"}
        if path == "/api/chat.postMessage":
            return self._post(data)
        return self._update(data)

    def _channel(self, name: object) -> str | None:
        text = str(name or "")
        if text in self.channels.values():
            return text
        return self.channels.get(text.lstrip("#"))

    def _content(self, data: dict[str, Any]) -> str | None:
        """The error of a message's text and blocks, or None."""
        if not data.get("text") and not data.get("blocks"):
            return "no_text"
        if "blocks" in data and slack_block_errors(data["blocks"]):
            return "invalid_blocks"
        if len(str(data.get("text", ""))) > 40000:
            return "msg_too_long"
        return None

    def _post(self, data: dict[str, Any]) -> Answer:
        channel = self._channel(data.get("channel"))
        if channel is None:
            return 200, {}, {"ok": False, "error": "channel_not_found"}
        error = self._content(data)
        if error:
            return 200, {}, {"ok": False, "error": error}
        message = SlackMessage(channel, self._ts(), str(data.get("text", "")),
                               list(data.get("blocks") or []), data.get("thread_ts"))
        parent = self.find(channel, str(message.thread_ts)) if message.thread_ts else None
        if parent is not None:
            parent.replies.append(message)
        elif message.thread_ts is None:
            self.messages.append(message)
        return 200, {}, {"ok": True, "channel": channel, "ts": message.ts,
                         "message": {"type": "message", "text": message.text, "ts": message.ts}}

    def _update(self, data: dict[str, Any]) -> Answer:
        channel = str(data.get("channel", ""))
        if channel not in self.channels.values():  # chat.update takes an ID, not a #name
            return 200, {}, {"ok": False, "error": "channel_not_found"}
        message = self.find(channel, str(data.get("ts", "")))
        if message is None:
            return 200, {}, {"ok": False, "error": "message_not_found"}
        error = self._content(data)
        if error:
            return 200, {}, {"ok": False, "error": error}
        message.text, message.blocks = str(data.get("text", "")), list(data.get("blocks") or [])
        message.edits += 1
        return 200, {}, {"ok": True, "channel": channel, "ts": message.ts, "text": message.text}

    def _webhook(self, body: bytes) -> Answer:
        data = _json_object(body)
        if data is None:
            return 400, {"Content-Type": "text/html"}, b"invalid_payload"
        if not data.get("text") and not data.get("blocks"):
            return 400, {"Content-Type": "text/html"}, b"no_text"
        if "blocks" in data and slack_block_errors(data["blocks"]):
            return 400, {"Content-Type": "text/html"}, b"invalid_blocks"
        self.webhook_posts.append(data)
        return 200, {"Content-Type": "text/html"}, b"ok"


# -- Opsgenie -----------------------------------------------------------------------------------
@dataclass
class OpsgenieAlert:
    """An alert as a responder sees it: status open or closed, how often it came in."""

    alias: str
    status: str
    count: int
    body: dict[str, Any]
    closed_with: dict[str, Any] | None = None


def opsgenie_errors(body: dict[str, Any] | None) -> list[str]:
    """What the Create Alert reference says makes a request invalid."""
    if body is None:
        return ["Request body is not a JSON object"]
    errors = []
    message = body.get("message")
    if not isinstance(message, str) or not message.strip() or len(message) > 130:
        errors.append("Message can not be empty and has a limit of 130 characters")
    if len(str(body.get("alias", ""))) > 512:
        errors.append("Alias has a limit of 512 characters")
    if len(str(body.get("description", ""))) > 15000:
        errors.append("Description has a limit of 15000 characters")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or len(tags) > 20 or any(
            not isinstance(t, str) or len(t) > 50 for t in tags):
        errors.append("Tags: at most 20, each at most 50 characters")
    if body.get("priority", "P3") not in ("P1", "P2", "P3", "P4", "P5"):
        errors.append("Priority should be one of [P1, P2, P3, P4, P5]")
    details = body.get("details", {})
    if not isinstance(details, dict) or any(not isinstance(v, str) for v in details.values()):
        errors.append("Details must be a map of strings")
    if len(str(body.get("source", ""))) > 100:
        errors.append("Source has a limit of 100 characters")
    return errors


class OpsgenieFake(FakeService):
    """Create Alert and Close Alert (by alias) for one API key."""

    def __init__(self, key: str = "00000000-0000-4000-8000-00000000cafe") -> None:
        super().__init__()
        self.key = key
        self.alerts: list[OpsgenieAlert] = []

    def open(self, alias: str) -> OpsgenieAlert | None:
        return next((a for a in self.alerts if a.alias == alias and a.status == "open"), None)

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        request_id = f"req-{len(self.requests)}"
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if auth != f"GenieKey {self.key}":
            return 401, {}, {"message": "Could not authenticate", "took": 0.0,
                             "requestId": request_id}
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(path)
        data = _json_object(body)
        accepted = {"result": "Request will be processed", "took": 0.01, "requestId": request_id}
        if method == "POST" and parts.path == "/v2/alerts":
            errors = opsgenie_errors(data)
            if errors or data is None:
                return 422, {}, {"message": "; ".join(errors), "took": 0.0,
                                 "requestId": request_id}
            alias = str(data.get("alias") or data["message"])
            found = self.open(alias)
            if found is not None:
                found.count += 1
            else:
                self.alerts.append(OpsgenieAlert(alias, "open", 1, data))
            return 202, {}, accepted
        segments = parts.path.split("/")
        if method == "POST" and len(segments) == 5 and segments[1:3] == ["v2", "alerts"] \
                and segments[4] == "close":
            kind = parse_qs(parts.query).get("identifierType", ["id"])[0]
            if kind not in ("id", "tiny", "alias"):
                return 422, {}, {"message": "Invalid identifierType", "took": 0.0,
                                 "requestId": request_id}
            if data is None and body:
                return 422, {}, {"message": "Request body is not a JSON object", "took": 0.0,
                                 "requestId": request_id}
            found = self.open(unquote(segments[3])) if kind == "alias" else None
            if found is not None:
                found.status, found.closed_with = "closed", data or {}
            return 202, {}, accepted
        return 404, {}, {"message": "Not found", "took": 0.0, "requestId": request_id}


# -- Microsoft Teams (Workflows) ----------------------------------------------------------------
TEAMS_ELEMENTS = ("TextBlock", "FactSet", "Container", "ColumnSet", "Image", "RichTextBlock")


def teams_errors(message: dict[str, Any] | None, size: int) -> list[str]:
    """What makes a Workflows webhook refuse a message with an Adaptive Card."""
    if message is None:
        return ["the body is not a JSON object"]
    if size > 28 * 1024:
        return ["the message is larger than 28 KB"]
    attachments = message.get("attachments")
    if message.get("type") != "message" or not isinstance(attachments, list) \
            or len(attachments) != 1:
        return ["a message with one attachment is expected"]
    attachment = attachments[0]
    card = attachment.get("content") if isinstance(attachment, dict) else None
    if not isinstance(attachment, dict) or \
            attachment.get("contentType") != "application/vnd.microsoft.card.adaptive" \
            or not isinstance(card, dict):
        return ["the attachment is not an Adaptive Card"]
    errors = []
    if card.get("type") != "AdaptiveCard" or not isinstance(card.get("version"), str):
        errors.append("the card needs type AdaptiveCard and a version")
    body = card.get("body")
    if not isinstance(body, list) or not body:
        return errors + ["the card has no body"]
    for element in body:
        kind = element.get("type") if isinstance(element, dict) else None
        if kind not in TEAMS_ELEMENTS:
            errors.append(f"unknown element {kind!r}")
        elif kind == "TextBlock" and not isinstance(element.get("text"), str):
            errors.append("a TextBlock needs text")
        elif kind == "FactSet" and any(
                not isinstance(f, dict) or not {"title", "value"} <= set(f)
                for f in element.get("facts") or [None]):
            errors.append("a FactSet's facts need title and value")
    return errors


class TeamsFake(FakeService):
    """A Workflows webhook at /workflows/<id>/triggers/manual/paths/invoke?...&sig=<secret>."""

    def __init__(self, sig: str = "S1gnatureS1gnatureS1gnature") -> None:
        super().__init__()
        self.sig = sig
        self.cards: list[dict[str, Any]] = []

    @property
    def webhook(self) -> str:
        return (f"{self.url}/workflows/0a1b2c/triggers/manual/paths/invoke"
                f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self.sig}")

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(path)
        if method != "POST" or not parts.path.endswith("/triggers/manual/paths/invoke"):
            return 404, {}, {"error": {"code": "NotFound"}}
        if parse_qs(parts.query).get("sig") != [self.sig]:
            return 401, {}, {"error": {"code": "DirectApiAuthorizationRequired"}}
        message = _json_object(body)
        errors = teams_errors(message, len(body))
        if errors or message is None:
            return 400, {}, {"error": {"code": "InvalidRequestContent",
                                       "message": "; ".join(errors)}}
        self.cards.append(message["attachments"][0]["content"])
        return 202, {}, None
