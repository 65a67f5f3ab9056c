"""The reference clients, each its own process: the websocket-client baseline and a raw drain.

`baseline` is the bare loop every throughput figure is a ratio to: create_connection, then
recv() until the server closes. `drain` proves the blaster is not the bottleneck: a raw
socket reads the same stream with recv_into and only counts bytes. Each prints one JSON line:
`t_done` is time.time() when the N-th event (or the last byte) arrived.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
import time
from urllib.parse import urlsplit

AUTH = "Authorization: Basic " + base64.b64encode(b"bench:bench").decode()


def baseline(url: str, events: int, skip_utf8: bool = False) -> dict[str, object]:
    """Count text frames with websocket-client's recv() until N arrive, then until the close.

    websocket-client checks UTF-8 in pure Python unless wsaccel is installed (`make bench`
    installs it from requirements/bench.txt); `skip_utf8` measures the loop without the check,
    as eventd reads: the honest baseline.
    """
    import websocket  # the installed websocket-client, as eventd uses it

    ws = websocket.create_connection(url, header=[AUTH], skip_utf8_validation=skip_utf8)
    count = 0
    t_first = t_done = None
    try:
        while True:
            message = ws.recv()
            if not message:  # the close frame: recv() answers it and returns ""
                break
            count += 1
            if count == 1:
                t_first = time.time()
            if count == events:
                t_done = time.time()
    except websocket.WebSocketConnectionClosedException:
        pass
    finally:
        ws.close()
    return {"client": "baseline", "skip_utf8": skip_utf8, "events": count, "t_first": t_first,
            "t_done": t_done, "websocket_client": websocket.__version__, "wsaccel": _wsaccel()}


def _wsaccel() -> str | None:
    """wsaccel's version if installed (websocket-client then masks and validates UTF-8 in C)."""
    try:
        from importlib.metadata import version

        return version("wsaccel")
    except Exception:  # noqa: BLE001 - not installed
        return None


def drain(url: str, expected_bytes: int) -> dict[str, object]:
    """Handshake by hand, then recv_into a 1 MiB buffer until `expected_bytes` have arrived."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{AUTH}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise SystemExit("drain: server closed during the handshake")
        head += data
    status, _, rest = head.partition(b"\r\n\r\n")
    if b" 101 " not in status.split(b"\r\n")[0] + b" ":
        raise SystemExit(f"drain: handshake refused: {status[:80]!r}")
    total = len(rest)
    buf = bytearray(1 << 20)
    t_first = time.time() if total else None
    while total < expected_bytes:
        n = sock.recv_into(buf)
        if n == 0:
            break
        if t_first is None:
            t_first = time.time()
        total += n
    t_done = time.time()
    # A masked close frame (code 1000) so the server can hang up at once.
    mask = os.urandom(4)
    payload = (1000).to_bytes(2, "big")
    sock.sendall(bytes((0x88, 0x82)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    sock.close()
    return {"client": "drain", "bytes": total, "t_first": t_first, "t_done": t_done}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=("baseline", "drain"))
    parser.add_argument("url")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--skip-utf8", action="store_true",
                        help="baseline: create_connection(..., skip_utf8_validation=True)")
    args = parser.parse_args(argv)
    if args.client == "baseline":
        result = baseline(args.url, args.events, args.skip_utf8)
    else:
        result = drain(args.url, args.bytes)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
