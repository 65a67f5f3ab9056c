"""Recorder: appends the raw frames of valid stream events to a JSON-lines file (`--record`).

The file replays exactly what the server sent, one event per line, so `eventd replay` can
feed it back. Frames holding line breaks (pretty-printed JSON) are compacted to one line.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import orjson

from eventd.files import open_append


class Recorder:
    """Thread-safe appender of one JSON object per line, flushed after every batch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open_append(self.path)  # 0600: events can hold what others must not read
        self._lock = threading.Lock()

    def write(self, raw: bytes) -> None:
        """Append one frame as one line."""
        self.write_batch((raw,))

    def write_batch(self, raws: Iterable[bytes]) -> None:
        """Append frames as lines and flush once (one read's worth of events)."""
        data = b"".join(_line(raw) for raw in raws)
        if not data:
            return
        with self._lock:
            if self._file.closed:
                raise ValueError(f"recorder {self.path} is closed")
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file; later writes raise ValueError."""
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line(raw: bytes) -> bytes:
    """The frame as one line; JSON needs no raw line breaks, so compacting loses nothing."""
    if b"\n" in raw or b"\r" in raw:
        raw = orjson.dumps(orjson.loads(raw))
    return raw + b"\n"
