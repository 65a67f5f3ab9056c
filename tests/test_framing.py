"""The buffered frame reader against a tiny hand-written websocket server on a real socket."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from collections.abc import Iterator, Sequence

import pytest
import websocket

from eventd.clients.dockercloud.auth import Credentials
from eventd.events import Received
from eventd.ops.metrics import Metrics
from eventd.sources.dockercloud.framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionEnded,
    FrameReader,
    FramingError,
    encode_frame,
)
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions
from tests.waiting import wait_until

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RawServer:
    """Accepts a websocket client, then sends exactly the bytes a test scripts, in pieces.

    `later`: the bytes each further connection gets with its handshake answer (a client that
    reconnects), one entry per connection; those connections stay open until close().
    """

    def __init__(self, first: bytes = b"", later: Sequence[bytes] = ()) -> None:
        self._first = first  # sent in the same TCP write as the handshake answer
        self._later = list(later)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.received = bytearray()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        for number in range(1 + len(self._later)):
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.connections.append(conn)
            if number == 0:
                self.conn = conn  # before answering: once answered, the test may close()
            self._answer(conn, self._first if number == 0 else self._later[number - 1])
            if number == 0:
                self._ready.set()
                threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket, data: bytes) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(1)  # byte by byte: leave nothing unread
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                     + data)

    def _drain(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += data

    def send(self, data: bytes, piece: int | None = None) -> None:
        """Send bytes, optionally in pieces of `piece` bytes (each its own TCP write)."""
        assert self._ready.wait(5)
        assert self.conn is not None
        if piece is None:
            self.conn.sendall(data)
        else:
            for i in range(0, len(data), piece):
                self.conn.sendall(data[i:i + piece])

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self._listener.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


@pytest.fixture
def client(server: RawServer) -> Iterator[websocket.WebSocket]:
    ws = websocket.create_connection(server.url, timeout=5, skip_utf8_validation=True,
                                     enable_multithread=True)
    yield ws
    ws.shutdown()


def read_messages(reader: FrameReader, count: int) -> list[bytes]:
    """Read until `count` messages arrived (fails the test if the socket times out)."""
    got: list[bytes] = []
    while len(got) < count:
        got.extend(reader.read())
    return got


def test_many_frames_in_one_read_are_all_returned(server, client):
    frames = [f'{{"type":"container","n":{i}}}'.encode() for i in range(500)]
    server.send(b"".join(encode_frame(OP_TEXT, f) for f in frames))
    reader = FrameReader(client.sock)
    got = read_messages(reader, 500)
    assert got == frames
    assert reader.buffered == 0


def test_views_are_the_messages_until_the_next_read_and_read_gives_bytes(server, client):
    """With `views` (the stream's reader) the usual messages are views into the buffer, each
    equal to its frame's payload when read; without, every message is bytes."""
    frames = [b"x" * 10, b"y" * 200, b"z" * 70000, b"{}"] * 3  # 7-, 16- and 64-bit lengths
    server.send(b"".join(encode_frame(OP_TEXT, f) for f in frames), piece=777)
    viewing = FrameReader(client.sock, chunk_size=4096, views=True)
    got: list[bytes] = []
    kinds: set[type] = set()
    while len(got) < len(frames):
        messages = viewing.read()
        kinds.update(map(type, messages))
        got.extend(map(bytes, messages))  # copied before the next read reuses the buffer
    assert got == frames and memoryview in kinds
    server.send(b"".join(encode_frame(OP_TEXT, f) for f in frames))
    copying = FrameReader(client.sock)
    assert read_messages(copying, len(frames)) == frames
    server.send(encode_frame(OP_TEXT, b"{}"))
    assert all(type(m) is bytes for m in copying.read())


def test_frames_split_across_reads_at_every_byte(server, client):
    frames = [b"x" * 10, b"y" * 200, b"z" * 70000, b"{}"]  # 7-bit, 16-bit and 64-bit lengths
    server.send(b"".join(encode_frame(OP_TEXT, f) for f in frames), piece=1)
    reader = FrameReader(client.sock, chunk_size=8192)
    assert read_messages(reader, 4) == frames


def test_a_read_says_whether_it_filled_its_room(server, client):
    """`filled`: the socket may hold more (the stream dates such a read as found waiting,
    however long the scheduler kept it); a read that took less than its room drained it."""
    frames = [b"e" * 100] * 400
    data = b"".join(encode_frame(OP_TEXT, f) for f in frames)  # ~41 KiB: several 8 KiB reads
    server.send(data)
    wait_until(lambda: len(client.sock.recv(len(data), socket.MSG_PEEK)) == len(data), 5,
               message="all of it in the socket")
    reader = FrameReader(client.sock, chunk_size=8192)
    got = reader.read()
    assert reader.filled
    filled = [True]
    while len(got) < len(frames):
        got += reader.read()
        filled.append(reader.filled)
    assert got == frames
    assert filled[-1] is False and all(filled[:-1])  # the last read drained the socket


def test_message_larger_than_the_buffer_grows_it(server, client):
    big = b'{"type":"x","pad":"' + b"a" * 1_000_000 + b'"}'
    server.send(encode_frame(OP_TEXT, big) + encode_frame(OP_TEXT, b"after"))
    reader = FrameReader(client.sock, chunk_size=16384)
    assert read_messages(reader, 2) == [big, b"after"]


def test_fragmented_message_with_interleaved_ping_is_reassembled_and_ping_answered(server, client):
    pings: list[bytes] = []
    reader = FrameReader(client.sock, on_ping=pings.append)
    server.send(encode_frame(OP_TEXT, b'{"type":', fin=False)
                + encode_frame(OP_PING, b"hello")
                + encode_frame(OP_CONTINUATION, b'"ser', fin=False)
                + encode_frame(OP_CONTINUATION, b'vice"}', fin=True)
                + encode_frame(OP_BINARY, b"bin"))
    assert read_messages(reader, 2) == [b'{"type":"service"}', b"bin"]
    assert pings == [b"hello"]


def test_ping_reply_through_websocket_client_reaches_server_as_masked_pong(server, client):
    reader = FrameReader(client.sock, on_ping=client.pong)
    server.send(encode_frame(OP_PING, b"abc") + encode_frame(OP_TEXT, b"m"))
    assert read_messages(reader, 1) == [b"m"]
    wait_until(lambda: len(server.received) >= 2 + 4 + 3)
    data = bytes(server.received)
    assert data[0] == 0x80 | OP_PONG and data[1] == 0x80 | 3
    key, masked = data[2:6], data[6:9]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(masked)) == b"abc"


def test_pong_is_counted(server, client):
    reader = FrameReader(client.sock)
    server.send(encode_frame(OP_PONG, b"") + encode_frame(OP_PONG, b"1"))
    wait_until(lambda: reader.read() == [] and reader.pongs == 2, timeout=5)


def test_close_frame_ends_reading_and_keeps_code(server, client):
    reader = FrameReader(client.sock)
    server.send(encode_frame(OP_TEXT, b"last") + encode_frame(OP_CLOSE, (1001).to_bytes(2, "big") + b"bye")
                + encode_frame(OP_TEXT, b"never"))
    assert read_messages(reader, 1) == [b"last"]
    assert reader.close_frame == (1001, "bye")
    assert reader.read() == []


def test_eof_raises_connection_ended(server, client):
    reader = FrameReader(client.sock)
    server.send(encode_frame(OP_TEXT, b"one"))
    assert read_messages(reader, 1) == [b"one"]
    assert server.conn is not None
    server.conn.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionEnded):
        reader.read()


def test_timeout_propagates_so_the_caller_can_do_housekeeping(server, client):
    client.sock.settimeout(0.05)
    reader = FrameReader(client.sock)
    with pytest.raises(TimeoutError):
        reader.read()


def test_masked_frame_from_a_misbehaving_server_is_unmasked(server, client):
    server.send(encode_frame(OP_TEXT, b'{"type":"node"}', mask=b"\x01\x02\x03\x04"))
    assert read_messages(FrameReader(client.sock), 1) == [b'{"type":"node"}']


@pytest.mark.parametrize("data", [
    encode_frame(0x3, b"x"),  # reserved data opcode
    encode_frame(OP_CONTINUATION, b"x"),  # continuation with nothing to continue
    encode_frame(OP_TEXT, b"a", fin=False) + encode_frame(OP_TEXT, b"b"),  # interleaved messages
    encode_frame(OP_PING, b"p", fin=False),  # fragmented control frame
])
def test_protocol_violations_raise_framing_error(server, client, data):
    server.send(data)
    reader = FrameReader(client.sock)
    with pytest.raises(FramingError):
        read_messages(reader, 1)


#: RFC 6455 5.2: with no extension negotiated, a frame with RSV1-3 set fails the connection
RESERVED_BITS = b"\xc1\x02hi" + b"\xf1\x02yo"


def test_reserved_bits_without_an_extension_fail_the_connection(server, client):
    server.send(RESERVED_BITS)
    reader = FrameReader(client.sock)
    with pytest.raises(FramingError, match="reserved bits 100"):
        read_messages(reader, 1)


@pytest.mark.parametrize("bits", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_CONTINUATION, OP_PING, OP_PONG, OP_CLOSE])
def test_any_reserved_bit_on_any_frame_is_a_violation(server, client, bits, opcode):
    frame = bytearray(encode_frame(opcode, b"x"))
    frame[0] |= bits
    server.send(bytes(frame))
    with pytest.raises(FramingError):
        read_messages(FrameReader(client.sock), 1)


def test_messages_before_a_violation_are_returned_first(server, client):
    server.send(encode_frame(OP_TEXT, b"whole") + RESERVED_BITS)
    reader = FrameReader(client.sock)
    assert read_messages(reader, 1) == [b"whole"]
    with pytest.raises(FramingError):
        reader.read()


def test_a_violation_is_raised_again_by_every_later_read_without_waiting_for_data(server,
                                                                                  client):
    # Whoever reads after the violation (the stream's read-ahead may have found it while the
    # sink held the consumer up) learns it at once, not after a socket read that may wait.
    server.send(RESERVED_BITS)
    reader = FrameReader(client.sock)
    client.sock.settimeout(5.0)
    with pytest.raises(FramingError) as first:
        read_messages(reader, 1)
    for _ in range(2):
        with pytest.raises(FramingError) as again:
            reader.read()  # before: another recv, waiting up to the 5 s timeout for data
        assert again.value is first.value


def test_the_stream_drops_a_connection_that_sets_reserved_bits_counts_it_and_reconnects():
    """A real raw-socket server sends the RFC's bad frames (an event with RSV1 set first), then
    serves a good event on the next connection."""
    bad_event = b'{"type":"service","action":"update","uuid":"bad-1","resource_uri":"/x/"}'
    good_event = b'{"type":"service","action":"update","uuid":"good-1","resource_uri":"/y/"}'
    frame = bytearray(encode_frame(OP_TEXT, bad_event))
    frame[0] |= 0x40
    srv = RawServer(first=bytes(frame) + RESERVED_BITS, later=[encode_frame(OP_TEXT, good_event)])
    metrics = Metrics()
    batches: list[list[Received]] = []
    stopping = threading.Event()
    consumer = StreamConsumer(srv.url, Credentials(header="Basic dTpr", source="test"),
                              batches.append, metrics, stopping,
                              options=StreamOptions(backoff_initial=0.01, backoff_max=0.02))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: any(r.event.get("uuid") == "good-1" for b in batches for r in b))
    finally:
        stopping.set()
        thread.join(5)
        srv.close()
    uuids = [r.event.get("uuid") for b in batches for r in b if r.event.get("type") != "eventd"]
    assert uuids == ["good-1"]
    assert metrics.registry.get_sample_value("eventd_stream_reconnects_total",
                                             {"reason": "protocol_error"}) == 1
    assert len(srv.connections) == 2


def test_oversized_frame_is_refused_before_buffering_it(server, client):
    server.send(bytes([0x81, 127]) + (1 << 40).to_bytes(8, "big"))
    reader = FrameReader(client.sock, max_message=1 << 20)
    with pytest.raises(FramingError):
        read_messages(reader, 1)


def test_frame_sent_with_the_handshake_answer_is_not_lost():
    """websocket-client reads the handshake byte by byte, so nothing stays in its buffers."""
    srv = RawServer(first=encode_frame(OP_TEXT, b"first") + encode_frame(OP_TEXT, b"second"))
    ws = websocket.create_connection(srv.url, timeout=5, skip_utf8_validation=True)
    try:
        assert read_messages(FrameReader(ws.sock), 2) == [b"first", b"second"]
    finally:
        ws.shutdown()
        srv.close()
