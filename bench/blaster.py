"""A Docker Cloud stream server that out-runs every client: pre-encoded frames in 1 MiB writes.

Run as a process (`python bench/blaster.py --events N ...`) so it never shares a GIL with the
client or the bench. It prints one JSON object per line on stdout: `listening` (port), then
for each connection `accept`, `blast_start` (time.time() just before the first byte is
written), `blast_end`, `drop`, `closed`. The first connection gets the blast (or its first
segment with --drop-after); later connections get the next segments, and once the stream is
all sent, any further connection is held open idle. Client pings are answered with pongs from
a reader thread, so eventd's 10 s ping/pong never trips.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import hashlib
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

from streamgen import CLOSE_FRAME, LiveEvents, Stream, build_stream

CHUNK = 1 << 20
PATHS = ("/api/audit/v1/events/", "/api/audit/v1/events")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_print_lock = threading.Lock()


def report(kind: str, **fields: Any) -> None:
    """One JSON line on stdout for the bench to read."""
    with _print_lock:
        sys.stdout.write(json.dumps({"event": kind, **fields}) + "\n")
        sys.stdout.flush()


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def handshake(conn: socket.socket) -> bool:
    """Read the upgrade request and answer 101 (any Authorization), or 404/400 and False."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(4096)
        if not data:
            return False
        buf += data
        if len(buf) > 65536:
            return False
    head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = head[0].split(" ")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
    if path not in PATHS:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return False
    key = headers.get("sec-websocket-key")
    if not key or headers.get("upgrade", "").lower() != "websocket":
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return False
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                  % accept_key(key)).encode())
    return True


class Connection:
    """One client: a locked writer, and a reader thread that answers pings and closes."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, name=f"reader-{number}", daemon=True)

    def send(self, data: bytes | memoryview) -> None:
        """Write under the lock so a pong never lands inside a frame."""
        with self.lock:
            self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            data = self.sock.recv(n - len(out))
            if not data:
                raise ConnectionError("client closed")
            out += data
        return out

    def _read(self) -> None:
        try:
            while not self.closed.is_set():
                b0, b1 = self._read_exact(2)
                length = b1 & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._read_exact(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._read_exact(8))[0]
                mask = self._read_exact(4) if b1 & 0x80 else b"\0\0\0\0"
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(self._read_exact(length)))
                opcode = b0 & 0x0F
                if opcode == 0x9:  # ping -> pong with the same payload
                    self.send(bytes((0x8A, len(payload))) + payload)
                elif opcode == 0x8:  # close -> echo the close, then hang up
                    try:
                        self.send(bytes((0x88, len(payload))) + payload)
                    except OSError:
                        pass
                    break
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()

    def hang_up(self, abrupt: bool) -> None:
        """Close the socket; abrupt sends a RST (no close frame, no FIN).

        shutdown() first: a plain close() would not reach the kernel while our reader thread
        sits in recv() on the same socket, and the RST would wait for the client's next ping.
        """
        self.closed.set()
        try:
            if abrupt:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.sock.shutdown(socket.SHUT_RD)  # wakes the reader; sends nothing
            else:
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.reader.is_alive() and self.reader is not threading.current_thread():
            self.reader.join(2)
        self.sock.close()


class Blaster:
    """Serves a pre-built stream (in segments, if drops are asked for) or a steady rate."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stream: Stream | None = None
        self.segments: list[tuple[int, int]] = []
        if args.rate <= 0:
            self.stream = build_stream(args.events, args.seed)
            step = args.drop_after if args.drop_after > 0 else args.events
            start = 0
            for _ in range(args.drops):
                end = min(start + step, args.events)
                self.segments.append((start, end))
                start = end
            self.segments.append((start, args.events))
        self.next_segment = 0
        self.served = threading.Lock()
        self.server = socket.create_server((args.host, args.port), backlog=64)

    def serve_forever(self) -> None:
        report("listening", port=self.server.getsockname()[1], events=self.args.events,
               bytes=len(self.stream.data) if self.stream else None)
        number = 0
        while True:
            conn, _ = self.server.accept()
            number += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._handle, args=(conn, number), daemon=True).start()

    def _handle(self, sock: socket.socket, number: int) -> None:
        accepted = time.time()
        try:
            if not handshake(sock):
                sock.close()
                return
        except OSError:
            sock.close()
            return
        conn = Connection(sock, number)
        conn.reader.start()
        with self.served:
            segment = self.next_segment
            self.next_segment += 1
        report("accept", conn=number, t=accepted, segment=segment)
        try:
            if self.args.rate > 0 and segment == 0:
                self._steady(conn)
            elif self.stream is not None and segment < len(self.segments):
                self._blast(conn, segment)
            # Otherwise: hold the connection open, idle; the reader answers pings.
        except OSError as exc:
            report("error", conn=number, error=repr(exc))
        conn.closed.wait()

    def _blast(self, conn: Connection, segment: int) -> None:
        assert self.stream is not None
        first, last = self.segments[segment]
        data = memoryview(self.stream.data)
        cuts = self._chunk_ends(first, last)
        report("blast_start", conn=conn.number, t=time.time(), first=first, last=last)
        start = time.time()
        pos = self.stream.offset(first)
        for cut in cuts:
            conn.send(data[pos:cut])
            pos = cut
        end = time.time()
        report("blast_end", conn=conn.number, t=end, t_start=start, events=last - first,
               bytes=pos - self.stream.offset(first))
        if segment < len(self.segments) - 1:
            conn.closed.wait(self.args.drop_delay)
            t = time.time()
            conn.hang_up(abrupt=True)
            report("drop", conn=conn.number, t=t, after=last)
        else:
            conn.send(CLOSE_FRAME)
            conn.closed.wait(2.0)  # let the client answer the close
            conn.hang_up(abrupt=False)
            report("closed", conn=conn.number, t=time.time())

    def _chunk_ends(self, first: int, last: int) -> list[int]:
        """Byte offsets that cut events [first, last) into ~1 MiB writes on frame boundaries.

        A pong may only go out between two writes, so a write must never end inside a frame.
        """
        assert self.stream is not None
        ends = self.stream.ends
        cuts = []
        pos = self.stream.offset(first)
        stop = self.stream.offset(last)
        while pos < stop:
            i = bisect.bisect_left(ends, pos + CHUNK, first, last)
            cut = ends[i] if i < last else stop
            cuts.append(cut)
            pos = cut
        return cuts

    def _steady(self, conn: Connection) -> None:
        live = LiveEvents(self.args.seed)
        interval = 1.0 / self.args.rate
        start = time.monotonic()
        types: dict[str, int] = {}
        late = 0.0
        report("blast_start", conn=conn.number, t=time.time(), first=0, last=self.args.events)
        for i in range(self.args.events):
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late = max(late, -delay)
            frame, kind = live.frame()
            conn.send(frame)
            types[kind] = types.get(kind, 0) + 1
        report("blast_end", conn=conn.number, t=time.time(), events=self.args.events, types=types,
               max_late=late)
        conn.send(CLOSE_FRAME)
        conn.closed.wait(2.0)
        conn.hang_up(abrupt=False)
        report("closed", conn=conn.number, t=time.time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events", type=int, default=200_000, help="events to send in all")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="steady events/s, each stamped with bench_sent (0: blast)")
    parser.add_argument("--drop-after", type=int, default=0,
                        help="drop the connection (RST) after this many events, then continue "
                             "on the next connection")
    parser.add_argument("--drops", type=int, default=1, help="how many drops with --drop-after")
    parser.add_argument("--drop-delay", type=float, default=1.0,
                        help="seconds to wait after a segment is written before dropping")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.drop_after <= 0:
        args.drops = 0
    try:
        Blaster(args).serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
