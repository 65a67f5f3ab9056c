"""A lean buffered reader of RFC 6455 frames from a connected websocket's socket.

websocket-client's `recv()` makes three `socket.recv` calls per frame (header, length,
payload), which is most of the cost of a busy stream. This reader pulls large chunks with
`recv_into` and cuts every complete frame out of the buffer per read, allocating only the
payload. Control frames are handled here: pings are answered through `on_ping`, pongs are
counted, a close frame ends the stream. eventd negotiates no extension, so a frame with a
reserved bit set (RSV1-3) breaks the protocol (RFC 6455 5.2): FramingError, as for a bad opcode.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: One read's worth: ~180 events of the bench's mix, parsed into one batch. A batch waits whole
#: in the reader while the hand-off queue is full, so 256 KiB reads (700 events) kept ~1 MiB more
#: alive than 64 KiB ones, for no measurable CPU per event (bench/memprobe.py, issue 10).
DEFAULT_CHUNK = 64 * 1024
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
_MIN_FREE = 4096  # compact or grow the buffer before reading into less than this
#: a frame's first two bytes, and the 16-bit length that follows when the second is 126
_HEAD = struct.Struct(">HH")


def _usual_frames() -> bytes:
    """By a frame's first two bytes: 1 for a whole unmasked text or binary message under
    126 bytes, 2 for one with a 16-bit length, 0 for every other frame."""
    table = bytearray(65536)
    for b0 in (0x81, 0x82):
        for b1 in range(126):
            table[b0 << 8 | b1] = 1
        table[b0 << 8 | 126] = 2
    return bytes(table)


_USUAL = _usual_frames()


#: RSV1, RSV2 and RSV3 of a frame's first byte: meaningful only with a negotiated extension
_RESERVED = 0x70


class FramingError(Exception):
    """The peer broke RFC 6455 (reserved bits, bad opcode, oversized or interleaved message);
    drop the link."""


class ConnectionEnded(Exception):
    """The peer closed the TCP connection without a close frame."""


class FrameReader:
    """Reads whole data messages (text or binary payloads) from a socket, many per `read()`."""

    def __init__(self, sock: socket.socket, on_ping: Callable[[bytes], object] | None = None,
                 chunk_size: int = DEFAULT_CHUNK,
                 max_message: int = DEFAULT_MAX_MESSAGE, views: bool = False) -> None:
        """`views`: `read()` returns the usual messages as memoryviews into the buffer, valid
        only until the next `read()` (the stream decodes them at once): no copy each."""
        self._sock = sock
        self._views = views
        self._on_ping = on_ping
        self._max_message = max_message
        self._chunk = chunk_size
        self._buf = bytearray(chunk_size)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte
        self._end = 0  # one past the last received byte
        self._fragments: list[bytes] | None = None  # parts of a fragmented message
        self._fragments_size = 0
        #: pong frames received so far (the consumer compares it with the count it last saw)
        self.pongs = 0
        #: set once a close frame arrived: (code, reason); reading stops there
        self.close_frame: tuple[int | None, str] | None = None
        #: the protocol violation that ends the stream, once found (every later read raises it)
        self.broken: FramingError | None = None
        #: the last read filled all the room it offered: the socket may hold more (a read of
        #: data already waiting, however long the scheduler kept it, waited for nothing)
        self.filled = False

    def read(self) -> list[bytes | memoryview]:
        """Receive once (blocking up to the socket's timeout) and return every complete message
        (bytes, or with `views` memoryviews valid until the next read).

        May return an empty list (only control frames or a partial frame arrived). Raises the
        socket's TimeoutError when nothing arrived, ConnectionEnded on EOF, FramingError on a
        protocol violation (after the messages that came whole before it, if any).
        """
        if self.broken is not None:
            raise self.broken
        if self.close_frame is not None:
            return []
        end = self._end
        if len(self._buf) - end < _MIN_FREE:
            self._make_room()
            end = self._end
        room = self._view[end:]
        count = self._sock.recv_into(room)
        if not count:
            raise ConnectionEnded("connection closed by peer")
        self.filled = count == len(room)
        self._end = end + count
        messages: list[bytes | memoryview] = []
        try:
            self._parse(messages)
        except FramingError as exc:
            # Raised by every later read too (whoever reads next: the stream's read-ahead may
            # be the one that finds it); first the messages that came whole before it.
            self.broken = exc
            if not messages:
                raise
        return messages if self._views else list(map(bytes, messages))

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed (a partial frame)."""
        return self._end - self._start

    def _make_room(self) -> None:
        """Move a partial frame to the front, or grow the buffer for a frame bigger than it."""
        start, end = self._start, self._end
        pending = end - start
        need = self._pending_frame_size() or 0
        if need > self._max_message + 14:
            raise FramingError(f"frame larger than {self._max_message} bytes")
        capacity = len(self._buf)
        if start > 0 and need + _MIN_FREE <= capacity and pending + _MIN_FREE <= capacity:
            self._view[0:pending] = self._view[start:end]
        else:
            size = max(capacity * 2, need + self._chunk)
            grown = bytearray(size)
            grown[0:pending] = self._view[start:end]
            self._view.release()
            self._buf = grown
            self._view = memoryview(grown)
        self._start = 0
        self._end = pending

    def _pending_frame_size(self) -> int | None:
        """Total size (header + payload) of the frame at the buffer's start, if its header is in."""
        buf, pos, avail = self._buf, self._start, self._end - self._start
        if avail < 2:
            return None
        length = buf[pos + 1] & 0x7F
        header = 2
        if length == 126:
            if avail < 4:
                return None
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            header = 4
        elif length == 127:
            if avail < 10:
                return None
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            header = 10
        if buf[pos + 1] & 0x80:
            header += 4
        return header + length

    def _parse(self, messages: list[bytes | memoryview]) -> None:
        """Cut every complete frame out of the buffer into `messages`; keep a trailing partial
        frame.

        The usual frame (a whole, unmasked text or binary message under 64 KiB) is cut here
        in a few steps, as a view into the buffer (read() copies it unless `views`); every
        other frame goes through `_frame`.
        """
        buf = self._buf
        view = self._view
        pos = self._start
        end = self._end
        append = messages.append
        head, usual = _HEAD.unpack_from, _USUAL
        while True:
            if self._fragments is None:  # no fragmented message in progress
                last = end - 4  # where the last 4-byte header (the usual one) can start
                while pos <= last:
                    first, long_length = head(buf, pos)
                    how = usual[first]
                    if how == 2:  # 16-bit length: the bulk of a busy stream
                        pos += 4
                        stop = pos + long_length
                        if stop > end:
                            pos -= 4
                            break
                        append(view[pos:stop])
                    elif how:
                        pos += 2
                        stop = pos + (first & 0x7F)
                        if stop > end:
                            pos -= 2
                            break
                        append(view[pos:stop])
                    else:
                        break
                    pos = stop
            if end - pos < 2:
                break
            stop = self._frame(pos, end, append)
            if stop < 0:
                break
            pos = stop
            if self.close_frame is not None:
                break
        if pos == end:
            self._start = self._end = 0
        else:
            self._start = pos

    def _frame(self, pos: int, end: int, append: Callable[[bytes], None]) -> int:
        """Handle the frame at `pos`: where the next one starts, or -1 if it is incomplete."""
        buf, view = self._buf, self._view
        b0 = buf[pos]
        b1 = buf[pos + 1]
        length = b1 & 0x7F
        if length < 126:
            header = 2
        elif length == 126:
            if end - pos < 4:
                return -1
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            header = 4
        else:
            if end - pos < 10:
                return -1
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            header = 10
            if length > self._max_message:
                raise FramingError(f"frame of {length} bytes is larger than {self._max_message}")
        if b1 & 0x80:  # servers must not mask, but tolerate it
            header += 4
        stop = pos + header + length
        if stop > end:
            return -1
        opcode = b0 & 0x0F
        if b1 & 0x80:
            payload = _unmask(bytes(view[pos + header - 4:pos + header]),
                              bytes(view[pos + header:stop]))
        else:
            payload = view[pos + header:stop].tobytes()
        if b0 == 0x81 or b0 == 0x82:  # a whole text or binary message
            if self._fragments is not None:
                raise FramingError("new message inside a fragmented one")
            append(payload)
        elif b0 & _RESERVED:  # checked per header, off the usual case's path
            raise FramingError(f"reserved bits {(b0 & _RESERVED) >> 4:03b} set in a frame "
                               "header, and no extension was negotiated")
        elif opcode >= OP_CLOSE:
            if not b0 & 0x80 or length > 125:
                raise FramingError("fragmented or oversized control frame")
            if opcode == OP_PING:
                if self._on_ping is not None:
                    self._on_ping(payload)
            elif opcode == OP_PONG:
                self.pongs += 1
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.close_frame = (code, payload[2:].decode("utf-8", "replace"))
            else:
                raise FramingError(f"unknown control opcode {opcode:#x}")
        else:
            self._fragment(opcode, bool(b0 & 0x80), payload, append)
        return stop

    def _fragment(self, opcode: int, fin: bool, payload: bytes,
                  append: Callable[[bytes], None]) -> None:
        """Collect the parts of a fragmented message; emit it whole on its final frame."""
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise FramingError("new message inside a fragmented one")
            self._fragments = [payload]
            self._fragments_size = len(payload)
        elif opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise FramingError("continuation frame without a message to continue")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
        else:
            raise FramingError(f"unknown data opcode {opcode:#x}")
        if self._fragments_size > self._max_message:
            raise FramingError(f"message larger than {self._max_message} bytes")
        if fin:
            parts = self._fragments
            self._fragments = None
            self._fragments_size = 0
            append(b"".join(parts))


def _unmask(key: bytes, data: bytes) -> bytes:
    """XOR a masked payload with its 4-byte key (rare: only misbehaving servers mask)."""
    if not data:
        return data
    repeated = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    """Build one frame (used for tests and for the close/pong frames a client sends)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 65536:
        head.append(mask_bit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(mask_bit | 127)
        head += n.to_bytes(8, "big")
    if mask is not None:
        head += mask
        payload = _unmask(mask, payload)
    return bytes(head) + payload
