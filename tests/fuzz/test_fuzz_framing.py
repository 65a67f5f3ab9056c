"""The frame reader on a real socket pair: any split of valid frames gives the same messages,
and any bytes at all end in FramingError or ConnectionEnded, nothing else."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.sources.dockercloud.framing import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionEnded,
    FrameReader,
    FramingError,
    encode_frame,
)

# small payloads, and a few over 65535 bytes (the 8-byte length form), cheap to generate
payloads = st.binary(max_size=300) | st.builds(lambda n, b: bytes([b]) * n,
                                               st.integers(65536, 66000), st.integers(0, 255))
masks = st.none() | st.binary(min_size=4, max_size=4)
chunk_sizes = st.sampled_from([1, 16, 4096, 256 * 1024])


@st.composite
def frame_sequences(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], int, bytes]:
    """(messages, pings, pongs, wire bytes): data messages, some fragmented, controls between."""
    messages: list[bytes] = []
    pings: list[bytes] = []
    pongs = 0
    wire = bytearray()

    def controls() -> None:
        nonlocal pongs
        for opcode, payload in draw(st.lists(st.tuples(st.sampled_from([OP_PING, OP_PONG]),
                                                       st.binary(max_size=125)), max_size=2)):
            wire.extend(encode_frame(opcode, payload, mask=draw(masks)))
            if opcode == OP_PING:
                pings.append(payload)
            else:
                pongs += 1

    for payload in draw(st.lists(payloads, max_size=6)):
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        controls()
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, part in enumerate(parts):
            if i:
                controls()
            wire.extend(encode_frame(opcode if i == 0 else OP_CONTINUATION, part,
                                     fin=i == len(parts) - 1, mask=draw(masks)))
        messages.append(payload)
    controls()
    return messages, pings, pongs, bytes(wire)


@contextmanager
def reader_on_socket(chunk_size: int, pings: list[bytes]
                     ) -> Iterator[tuple[socket.socket, socket.socket, FrameReader]]:
    """A FrameReader on one end of a real socket pair; the test writes to the other end."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    try:
        yield theirs, ours, FrameReader(ours, on_ping=pings.append, chunk_size=chunk_size)
    finally:
        ours.close()
        theirs.close()


def read_all(reader: FrameReader) -> list[bytes]:
    """Read until the peer's EOF (the sender closed its end)."""
    received: list[bytes] = []
    while True:
        try:
            received.extend(reader.read())
        except ConnectionEnded:
            return received


@given(frame_sequences(), st.data(), chunk_sizes)
def test_any_split_of_valid_frames_gives_the_same_messages(sequence, data, chunk_size) -> None:
    messages, pings, pongs, wire = sequence
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(wire)), max_size=12))))
    seen_pings: list[bytes] = []
    received: list[bytes] = []
    with reader_on_socket(chunk_size, seen_pings) as (peer, reader_socket, reader):
        for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            for start in range(a, b, 16384):  # each send fits the socket's buffer
                peer.sendall(wire[start:min(b, start + 16384)])
                while select.select([reader_socket], [], [], 0)[0]:  # read all that was sent
                    received.extend(reader.read())
        peer.shutdown(socket.SHUT_WR)
        received.extend(read_all(reader))
        assert received == messages
        assert seen_pings == pings
        assert reader.pongs == pongs
        assert reader.buffered == 0


@given(st.binary(max_size=2000), chunk_sizes)
def test_any_bytes_end_in_framing_error_or_connection_ended(wire: bytes, chunk_size: int) -> None:
    with reader_on_socket(chunk_size, []) as (peer, _, reader):
        peer.sendall(wire)  # at most 2,000 bytes: fits the socket's buffer
        peer.shutdown(socket.SHUT_WR)
        try:
            while reader.close_frame is None:
                reader.read()
        except (FramingError, ConnectionEnded):
            pass



@given(frame_sequences(), st.integers(1, 7), st.sampled_from([OP_TEXT, OP_BINARY, OP_PING]),
       chunk_sizes)
def test_a_reserved_bit_ends_the_stream_after_the_messages_before_it(sequence, bits, opcode,
                                                                    chunk_size) -> None:
    """RFC 6455 5.2: no extension is negotiated, so RSV1-3 set on any frame fails the
    connection; what came whole before it is still returned, the frame itself never."""
    messages, _, _, wire = sequence
    bad = bytearray(encode_frame(opcode, b"never-delivered"))
    bad[0] |= bits << 4
    received: list[bytes] = []
    with reader_on_socket(chunk_size, []) as (peer, _, reader):

        def send() -> None:  # from a thread: the whole wire may not fit the socket's buffer
            try:
                peer.sendall(wire + bytes(bad) + encode_frame(OP_TEXT, b"after"))
                peer.shutdown(socket.SHUT_WR)
            except OSError:  # the reader stopped reading and closed: fine
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        with pytest.raises(FramingError):
            while True:
                received.extend(reader.read())
    sender.join(5)
    assert received == messages
