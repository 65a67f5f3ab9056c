"""The `/_emulator/...` control endpoint: recordings, events and faults over HTTP.

It needs no credentials, so it answers only clients on the loopback interface (even when the
REST API listens on 0.0.0.0), takes POST bodies only as `Content-Type: application/json` (a
web page cannot send that cross-origin without a preflight), and lists recorded credentials
redacted unless `?reveal=1` asks for them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eventd.emulator.api import Reply, error

if TYPE_CHECKING:
    from eventd.emulator.core import Emulator


def _faults(emulator: Emulator, body: Any) -> Reply:
    if not isinstance(body, dict):
        return error(400, "send a JSON object such as {\"drop\": true}")
    faults = emulator.faults

    def spec(value: Any) -> dict[str, Any]:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"status": value}
        if not isinstance(value, dict) or "status" not in value:
            raise ValueError("needs {\"status\": N, \"count\": N, \"retry_after\": S}")
        return {k: value[k] for k in ("status", "count", "retry_after", "location") if k in value}

    actions: dict[str, Callable[[Any], None]] = {
        "clear": lambda v: faults.clear() if v else None,
        "drop": lambda v: faults.drop_connections() if v else None,
        "silent": lambda v: faults.set_silent(bool(v)),
        "reject_auth": lambda v: faults.reject_auth(bool(v)),
        "fail_handshake": lambda v: faults.fail_handshake(**spec(v)),
        "fail_rest": lambda v: faults.fail_rest(**spec(v)),
        "delay": lambda v: faults.set_delay(**{k: float(v[k]) for k in ("handshake", "rest")
                                               if k in v}),
        "fail_actions": lambda v: faults.fail_actions(int(v)),
        "ignore_date_filters": lambda v: faults.ignore_date_filters(bool(v)),
        "restart_stream": lambda v: emulator.restart_stream() if v else None,
    }
    unknown = sorted(set(body) - set(actions))
    if unknown:
        return error(400, f"unknown fault(s): {', '.join(unknown)}; "
                          f"known: {', '.join(actions)}")
    # `clear` first, so {"clear": true, "silent": true} means "only silent".
    for key in sorted(body, key=lambda k: k != "clear"):
        try:
            actions[key](body[key])
        except (TypeError, ValueError, AttributeError) as exc:
            return error(400, f"bad value for {key!r}: {exc}")
    return Reply(200, faults.snapshot())


def _events(emulator: Emulator, body: Any) -> Reply:
    items = body if isinstance(body, list) else [body]
    sent: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            event = emulator.complete_event(item)
            emulator.emit(event)
            sent.append(event)
        elif isinstance(item, str):
            emulator.emit(item)
            sent.append(item)
        else:
            return error(400, "each event must be a JSON object (or a raw string frame)")
    return Reply(200, {"sent": sent})


def handle_control(emulator: Emulator, method: str, path: str, raw: bytes,
                   query: dict[str, str] | None = None, content_type: str = "",
                   client: str = "127.0.0.1") -> Reply:
    """Answer one control call."""
    if not _loopback(client):
        return error(403, "the /_emulator control endpoint answers only clients on 127.0.0.1")
    if method == "POST" and content_type != "application/json":
        return error(415, "send the body as Content-Type: application/json")
    reveal = (query or {}).get("reveal", "").lower() in ("1", "true", "yes")
    route = path.rstrip("/")
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, "the body is not valid JSON")
    if route == "/_emulator/calls":
        if method == "GET":
            return Reply(200, [call.to_json(reveal) for call in emulator.rest_calls()])
        if method == "DELETE":
            emulator.clear_rest_calls()
            return Reply(200, {"cleared": True})
    elif route == "/_emulator/handshakes":
        if method == "GET":
            return Reply(200, [h.to_json(reveal) for h in emulator.handshakes()])
        if method == "DELETE":
            emulator.clear_handshakes()
            return Reply(200, {"cleared": True})
    elif route == "/_emulator/connections":
        if method == "GET":
            return Reply(200, [c.to_json() for c in emulator.stream_connections()])
    elif route == "/_emulator/events":
        if method == "GET":
            return Reply(200, emulator.sent_events())
        if method == "POST":
            return _events(emulator, body)
    elif route == "/_emulator/faults":
        if method == "GET":
            return Reply(200, emulator.faults.snapshot())
        if method == "POST":
            return _faults(emulator, body)
    elif route == "/_emulator/state":
        if method == "GET":
            return Reply(200, emulator.state())
    else:
        return error(404, f"no control endpoint {path}")
    return error(405, f"{method} is not allowed on {route}")


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
