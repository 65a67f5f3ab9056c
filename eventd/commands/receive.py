"""`eventd receive`: a local alert receiver that prints what arrives (the sample rules' default target).

The sample rules post to `ALERT_WEBHOOK_URL`, by default http://127.0.0.1:9099/alerts: in the
two-terminal emulator flow this gives them somewhere to land. The same receiver as the demo's.
Each request is one line with its whole body (JSON on one line); whatever a sender puts in it,
control characters are printed escaped (`\x1b`), never to the terminal as they are.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any, TextIO

from eventd.commands.demo.receiver import Received, WebhookReceiver
from eventd.ops.health import bind_error_reason
from eventd.ops.logconfig import escape_controls

DEFAULT_PORT = 9099


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `receive` subcommand's options."""
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}, the sample rules' default)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")


def run(args: argparse.Namespace, out: TextIO | None = None,
        stopping: threading.Event | None = None) -> int:
    """Listen and print one line per request until SIGINT/SIGTERM (or `stopping`); exit code."""
    out = out or sys.stdout
    stopping = stopping or threading.Event()
    lock = threading.Lock()

    def show(received: Received) -> None:
        line = escape_controls(f"{received.method} {received.path}  {body(received)}")
        line = f"{time.strftime('%H:%M:%S')}  {line}"
        with lock:
            print(line, file=out, flush=True)

    receiver = WebhookReceiver(args.host, args.port, on_request=show)
    try:
        receiver.start()
    except OSError as exc:
        print(f"eventd receive: cannot listen on {args.host}:{args.port}: "
              f"{bind_error_reason(exc)}", file=sys.stderr)
        return 2
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stopping.set())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"receiving on {receiver.url}/ (e.g. ALERT_WEBHOOK_URL={receiver.url}/alerts); "
              "Ctrl-C stops", file=out, flush=True)
        while not stopping.wait(0.2):
            pass
    finally:
        receiver.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def body(received: Received) -> str:
    """The whole body as one line: JSON re-encoded compactly, anything else decoded as UTF-8."""
    try:
        return json.dumps(received.json(), ensure_ascii=False)
    except ValueError:  # not JSON (or not UTF-8 JSON)
        return received.body.decode("utf-8", "replace")
