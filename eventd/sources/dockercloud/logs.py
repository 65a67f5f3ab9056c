"""A Docker Cloud container's last log lines, for `enrich: logs` with the Docker Cloud source.

The Stream API serves a container's logs as a websocket at
`<stream host>api/app/v1/[<namespace>/]container/<uuid>/logs/?tail=N&follow=false` (docker/docs'
"Container logs" page; it is not in the reference eventd follows for events, so this follows
the old SDKs' shape): one JSON text frame per output line, `{"type": "log", "log": "...",
"streamType": "stdout"|"stderr", "timestamp": ...}`. With `follow=false` the server closes
after the last line. eventd reads at most `max_bytes` within the budget, then closes.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import websocket

from eventd.events import object_ref

__all__ = ["ContainerLogs"]

#: a container's resource URI, with its namespace when it has one (data: checked strictly)
_NAMESPACED = re.compile(r"^/api/app/v1/(?:([a-z0-9][a-z0-9_.-]{0,63})/)?container/"
                         r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/$")


class ContainerLogs:
    """Reads containers' last lines from the Stream API with the stream's credentials."""

    def __init__(self, stream_host: str, header: str,
                 sslopt: dict[str, Any] | None = None) -> None:
        self._host = stream_host if stream_host.endswith("/") else stream_host + "/"
        self._header = header  # the Authorization header's value: never logged
        self._sslopt = sslopt or {}

    def logs(self, event: dict[str, Any], lines: int, max_bytes: int,
             budget: float) -> list[str] | None:
        """The container's last `lines`; None when the event is not about a container."""
        uri = event.get("resource_uri")
        ref = object_ref(uri)
        found_ns = _NAMESPACED.match(uri) if isinstance(uri, str) else None
        if ref is None or ref.type != "container" or found_ns is None:
            return None
        ns = f"{found_ns.group(1)}/" if found_ns.group(1) else ""
        url = f"{self._host}api/app/v1/{ns}container/{ref.uuid}/logs/?tail={lines}&follow=false"
        deadline = time.monotonic() + budget
        ws = websocket.WebSocket(sslopt=self._sslopt)
        found: list[str] = []
        size = 0
        try:
            ws.connect(url, timeout=budget,  # type: ignore[no-untyped-call]
                       header=[f"Authorization: {self._header}"], redirect_limit=0)
            while size < max_bytes and time.monotonic() < deadline:
                ws.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    frame = ws.recv()
                except websocket.WebSocketConnectionClosedException:
                    break
                if not frame:
                    break
                text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
                line = _line(text[:max_bytes - size])
                size += len(text)
                if line is not None:
                    found.append(line)
        finally:
            try:
                if ws.connected:
                    ws.close(timeout=0.2)
            except (websocket.WebSocketException, OSError):
                pass
            ws.shutdown()  # type: ignore[no-untyped-call]  # the socket, whatever the close left
        return found[-lines:]


def _line(text: str) -> str | None:
    """The `log` of one message (its trailing newline dropped); None for anything else."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "log":
        return None
    log = message.get("log")
    return log.rstrip("\r\n") if isinstance(log, str) else None
