"""The de-dup window: recently seen event uuids, and the saver that keeps it across a SIGKILL.

The window keeps a 60-bit fingerprint of each uuid, not the uuid: a small int is 32 bytes
where a 36-character str is 88, and a snapshot is a packed array (8 bytes a uuid) instead
of a JSON list. The fingerprint is the uuid's UTF-8 bytes read as one integer, reduced
modulo the Mersenne prime 2**61 - 1: CPython's documented, unsalted hash of an int, so it
costs one C call and is the same in every process (a saved window still matches after a
restart). Two different uuids share a fingerprint with a chance of about one in 2**60; two
strings of under 8 bytes never do.

New fingerprints go into the current set; when it holds half the window, it becomes the
previous generation and the one before is dropped whole. So the window remembers between
size/2 and size uuids, and memory stays flat: no per-entry eviction, hence no hash-table
churn (a set with deletions rebuilds its table as deleted slots pile up).

The window lives in the engine; the store only keeps its snapshot (opaque bytes), which
`DedupeSaver` writes every few seconds (not only at a clean stop), so an event processed
before a SIGKILL and sent again after the restart is not acted on twice.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING

import orjson

from eventd.errors import StoreError

if TYPE_CHECKING:
    from eventd.stores.base import DedupeSnapshots

log = logging.getLogger(__name__)

DEFAULT_DEDUPE_WINDOW = 50_000  # remembers the last 25k to 50k event uuids
DEFAULT_SAVE_INTERVAL = 2.0  # seconds between two saves of a changed window

_MODULUS = (1 << 61) - 1
_MASK = (1 << 60) - 1  # ints under 2**60 are the 32-byte size class
#: b"EDW1", the previous generation's length (uint32 LE), then every fingerprint (uint64 LE),
#: the previous generation first
_MAGIC = b"EDW1"
_HEADER = struct.Struct("<4sI")


def fingerprint(uuid: str) -> int:
    """The uuid's fingerprint (what the window keeps and a snapshot holds)."""
    try:
        data = uuid.encode()
    except UnicodeEncodeError:  # a lone surrogate
        data = uuid.encode("utf-8", "surrogatepass")
    return _reduce(int.from_bytes(data, "little")) & _MASK


def _modulo(value: int) -> int:
    return value % _MODULUS


#: hash() of a non-negative int is the int modulo 2**61 - 1 on every 64-bit CPython, and
#: twice as fast as `%`; elsewhere the same value is computed by `%`.
_reduce = hash if sys.hash_info.modulus == _MODULUS else _modulo
_from_bytes = int.from_bytes


class DedupeWindow:
    """At least the last `size // 2` uuids, at most the last `size`."""

    def __init__(self, size: int = DEFAULT_DEDUPE_WINDOW, initial: Iterable[str] = ()) -> None:
        self.size = max(2, int(size))
        self._half = self.size // 2
        self._previous: frozenset[int] = frozenset()
        self._current: set[int] = set()
        self._lock = threading.Lock()  # a rotation, against the saver's snapshot
        self.version = 0  # counts additions: the saver writes only a window that changed
        for uuid in initial:
            self.check_and_add(uuid)

    def __contains__(self, uuid: object) -> bool:
        if not isinstance(uuid, str):
            return False
        fp = fingerprint(uuid)
        return fp in self._current or fp in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def check_and_add(self, uuid: str) -> bool:
        """True if `uuid` was already in the window; otherwise add it and return False.

        Called for every event: `fingerprint` is inlined (a call costs as much as the rest).
        Only the engine's thread adds, so only a rotation needs the lock."""
        try:
            data = uuid.encode()
        except UnicodeEncodeError:
            data = uuid.encode("utf-8", "surrogatepass")
        fp = _reduce(_from_bytes(data, "little")) & _MASK
        current = self._current
        if fp in current or fp in self._previous:
            return True
        self._add(current, fp)
        return False

    def _add(self, current: set[int], fp: int) -> None:
        current.add(fp)
        self.version += 1
        if len(current) >= self._half:
            # A frozenset copy is sized for what it holds: half the table of a set grown
            # one add at a time.
            previous = frozenset(current)
            with self._lock:
                self._previous, self._current = previous, set()

    def snapshot(self) -> bytes:
        """The window as bytes, older generation first (what the store keeps).

        Built in one array, header included, so a save holds two copies at most."""
        entries = array("Q", [0])
        with self._lock:  # both generations of one moment (array reads a set in one C call)
            entries.extend(self._previous)
            entries[0] = int.from_bytes(_HEADER.pack(_MAGIC, len(entries) - 1), "little")
            entries.extend(self._current)
        if sys.byteorder != "little":
            entries.byteswap()
        return entries.tobytes()

    @classmethod
    def restore(cls, data: bytes, size: int = DEFAULT_DEDUPE_WINDOW) -> DedupeWindow:
        """A window of `size` holding a snapshot's uuids (an older eventd's JSON list too).

        The snapshot's uuids are added oldest first, so a smaller window keeps the newest."""
        window = cls(size)
        for fp in _decode(data):
            if fp not in window._current and fp not in window._previous:
                window._add(window._current, fp)
        window.version = 0
        return window


def _decode(data: bytes) -> Iterable[int]:
    """The fingerprints of a snapshot, oldest first; none from bytes that are not one."""
    if data[:1] == b"[":  # an earlier eventd saved the uuids themselves, as JSON
        try:
            uuids = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        return [fingerprint(u) for u in uuids if isinstance(u, str)] if isinstance(uuids, list) else []
    if len(data) < _HEADER.size or data[:4] != _MAGIC or (len(data) - _HEADER.size) % 8:
        return []
    entries = array("Q", data[_HEADER.size:])
    if sys.byteorder != "little":
        entries.byteswap()
    return entries


class DedupeSaver:
    """Saves a window's snapshot to the store every `interval` seconds when it changed, and
    once more at close. A failed save is logged and tried again at the next round."""

    def __init__(self, window: DedupeWindow, snapshots: DedupeSnapshots,
                 interval: float = DEFAULT_SAVE_INTERVAL) -> None:
        self.window = window
        self._snapshots = snapshots
        self.interval = interval
        self._saved_version = window.version
        self._stop = threading.Event()
        self._save_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.saves = 0

    @classmethod
    def load(cls, snapshots: DedupeSnapshots, size: int = DEFAULT_DEDUPE_WINDOW,
             interval: float = DEFAULT_SAVE_INTERVAL) -> DedupeSaver:
        """A saver over a window filled from the store's last snapshot."""
        return cls(DedupeWindow.restore(snapshots.dedupe_load(), size), snapshots, interval)

    def start(self) -> None:
        """Start saving in the background."""
        if self._thread is None and self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="dedupe-saver", daemon=True)
            self._thread.start()

    def save(self) -> bool:
        """Save now if the window changed since the last save; False if the store failed."""
        with self._save_lock:
            version = self.window.version
            if version == self._saved_version:
                return True
            data = self.window.snapshot()
            try:
                self._snapshots.dedupe_save(data)
            except StoreError as exc:
                if not self._failing:
                    log.warning("could not save the de-dup window (%s); trying again in %.0f s",
                                exc, self.interval)
                self._failing = True
                return False
            if self._failing:
                log.info("de-dup window saved again")
            self._failing = False
            self._saved_version = version
            self.saves += 1
            return True

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the background saves and save a last time (call before closing the store)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.save()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.save()
