"""The de-dup window: recently seen event uuids, and the saver that keeps it across a SIGKILL.

The window keeps a 60-bit fingerprint of each uuid, not the uuid, in flat arrays of
8-byte slots: 50k uuids as Python strings in sets were 8 MiB of small objects spread over
the heap (about 10 MiB of RSS, never given back), 50k fingerprints here are 1.4 MB in four
arrays. The fingerprint is the uuid's UTF-8 bytes read as one integer, reduced modulo the
Mersenne prime 2**61 - 1: CPython's documented, unsalted hash of an int, so it costs one
C call and is the same in every process (a saved window still matches after a restart).
Two different uuids share a fingerprint with a chance of about one in 2**60; two strings
of under 8 bytes never do.

Each generation is an open-addressing table (linear probing, at most 40% full, indexed by
the fingerprint modulo a prime) plus the list of its fingerprints in arrival order, which
is what a snapshot saves. When the current generation holds half the window, it becomes
the previous one and the one before is dropped whole. So the window remembers between
size/2 and size uuids, and memory stays flat: no per-entry eviction, no tombstones.

The window lives in the engine; the store only keeps its snapshot (opaque bytes), which
`DedupeSaver` writes every few seconds (not only at a clean stop), so an event processed
before a SIGKILL and sent again after the restart is not acted on twice.
"""

from __future__ import annotations

import logging
import mmap
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import orjson

from eventd.errors import StoreError
from eventd.events import Batch

if TYPE_CHECKING:
    from eventd.events import Received
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
    return _reduce(int.from_bytes(data, "little")) & _MASK or 1  # 0 marks an empty slot


def _modulo(value: int) -> int:
    return value % _MODULUS


#: hash() of a non-negative int is the int modulo 2**61 - 1 on every 64-bit CPython, and
#: twice as fast as `%`; elsewhere the same value is computed by `%`.
_reduce = hash if sys.hash_info.modulus == _MODULUS else _modulo
_from_bytes = int.from_bytes


#: slots a probe may run past the last home slot; an insert that would need more starts a
#: new generation early, so a probe never runs off the end (at 40% load, a run of 64 taken
#: slots has a chance of about 1e-25)
_SPILL = 64


def _prime_at_least(n: int) -> int:
    def is_prime(k: int) -> bool:
        return k > 1 and all(k % d for d in range(2, int(k ** 0.5) + 1))
    while not is_prime(n):
        n += 1
    return n


#: The slots' type: C unsigned long where it has 8 bytes, since storing an int into it
#: takes a few instructions per digit, where "Q" goes through a generic byte conversion
#: (about 350 instructions per store); snapshots are "Q" (little-endian) everywhere.
_SLOT: Literal["L", "Q"] = "L" if array("L").itemsize == 8 else "Q"


class _Generation:
    """One generation: a probe table of fingerprints (0 is an empty slot) and their order.

    The table is an anonymous mapping seen as 8-byte slots: its pages are the kernel's zero
    pages until written, so a new generation costs no resident memory at its rotation and
    grows as it fills (an array of zeros was 0.5 MiB written at once, beside the two full
    generations: the streaming peak's top)."""

    __slots__ = ("table", "order")

    def __init__(self, slots: int) -> None:
        self.table: memoryview[int] = memoryview(mmap.mmap(-1, 8 * slots)).cast(_SLOT)
        self.order = array(_SLOT)


class DedupeWindow:
    """At least the last `size // 2` uuids, at most the last `size`."""

    def __init__(self, size: int = DEFAULT_DEDUPE_WINDOW, initial: Iterable[str] = ()) -> None:
        self.size = max(2, int(size))
        self._half = self.size // 2
        self._homes = _prime_at_least(self._half * 5 // 2 + 1)  # at most 40% full
        self._last = self._homes + _SPILL - 1  # never written: every probe stops here at worst
        self._previous = _Generation(self._last + 1)
        self._current = _Generation(self._last + 1)
        self._lock = threading.Lock()  # a rotation, against the saver's snapshot
        self._rotated = 0  # additions to generations that are no longer current
        for uuid in initial:
            self.check_and_add(uuid)

    def __contains__(self, uuid: object) -> bool:
        if not isinstance(uuid, str):
            return False
        fp = fingerprint(uuid)
        return self._find(self._previous.table, fp)[0] or self._find(self._current.table, fp)[0]

    def __len__(self) -> int:
        return len(self._previous.order) + len(self._current.order)

    def check_and_add(self, uuid: str) -> bool:
        """True if `uuid` was already in the window; otherwise add it and return False.

        Called for every event, so `fingerprint` and the probes are written out inline (a
        Python call costs as much as either). Only the engine's thread adds; the lock is
        for a rotation."""
        try:
            data = uuid.encode()
        except UnicodeEncodeError:  # a lone surrogate
            data = uuid.encode("utf-8", "surrogatepass")
        fp = _reduce(_from_bytes(data, "little")) & _MASK or 1
        home = fp % self._homes
        table, i = self._previous.table, home
        while slot := table[i]:
            if slot == fp:
                return True
            i += 1
        current = self._current
        table, i = current.table, home
        while slot := table[i]:
            if slot == fp:
                return True
            i += 1
        if i >= self._last:  # never in practice (see _SPILL)
            self._insert(table, i, fp)
            return False
        table[i] = fp
        order = current.order
        order.append(fp)
        if len(order) >= self._half:
            self._rotate()
        return False

    def repeated(self, batch: Sequence[Received]) -> set[int] | None:
        """The positions of a batch's events whose uuid the window held (or an earlier
        event of the batch had), every other uuid added; None when there is none.

        check_and_add for a whole batch, in one call: eventd's own and backfilled events
        (`internal`) and events without a string uuid are left out, as the engine did."""
        events: Sequence[Any]
        if type(batch) is Batch:  # one read of a stream: its events as a list, one flag
            if batch.internal:
                return None
            events = batch.events
        else:  # an internal event stands in as None: skipped as an event without a uuid
            events = [None if received.internal else received.event for received in batch]
        repeats: set[int] | None = None
        previous, current = self._previous.table, self._current
        table, order, homes, last, half = current.table, current.order, self._homes, \
            self._last, self._half
        reduce, from_bytes, mask = _reduce, _from_bytes, _MASK
        room = half - len(order) - 1  # additions before the current generation is full
        for index, event in enumerate(events):
            try:
                uuid = event["uuid"]
                fp = reduce(from_bytes(uuid.encode(), "little")) & mask or 1
            except (KeyError, TypeError, AttributeError):  # no uuid, not a mapping (the
                continue  # engine reports it), a uuid not a string (JSON's others: no encode)
            except UnicodeEncodeError:  # a lone surrogate
                fp = fingerprint(uuid)
            if not uuid:
                continue
            i = home = fp % homes
            while slot := previous[i]:
                if slot == fp:
                    break
                i += 1
            else:
                i = home
                while slot := table[i]:
                    if slot == fp:
                        break
                    i += 1
                else:
                    if room > 0 and i < last:
                        table[i] = fp
                        order.append(fp)
                        room -= 1
                        continue
                    self._insert(table, i, fp)  # rotates: start from the new generations
                    previous, current = self._previous.table, self._current
                    table, order = current.table, current.order
                    room = half - len(order) - 1
                    continue
            if repeats is None:
                repeats = set()
            repeats.add(index)
        return repeats

    def _find(self, table: memoryview[int], fp: int) -> tuple[bool, int]:
        """(found, where the probe stopped)."""
        i = fp % self._homes
        while slot := table[i]:
            if slot == fp:
                return True, i
            i += 1
        return False, i

    def _insert(self, table: memoryview[int], i: int, fp: int) -> None:
        current = self._current
        if i >= self._last:  # never in practice (see _SPILL): start the next generation now
            self._rotate()
            current = self._current
            table = current.table
            i = self._find(table, fp)[1]
        table[i] = fp
        current.order.append(fp)
        if len(current.order) >= self._half:
            self._rotate()

    @property
    def version(self) -> int:
        """Counts additions: the saver writes only a window that changed."""
        with self._lock:  # both of one moment: a rotation moves one count into the other
            return self._rotated + len(self._current.order)

    def _rotate(self) -> None:
        fresh = _Generation(self._last + 1)
        with self._lock:
            self._rotated += len(self._current.order)
            self._previous, self._current = self._current, fresh

    def snapshot(self) -> bytes:
        """The window as bytes, older generation first (what the store keeps)."""
        return bytes(self.pieces())

    def pieces(self) -> Snapshot:
        """The snapshot of this moment, to be written piece by piece (see Snapshot)."""
        with self._lock:  # both generations of one moment
            previous, current = self._previous.order, self._current.order
            return Snapshot(previous, len(previous), current, len(current))

    @classmethod
    def restore(cls, data: bytes, size: int = DEFAULT_DEDUPE_WINDOW) -> DedupeWindow:
        """A window of `size` holding a snapshot's uuids (an older eventd's JSON list too).

        The snapshot's uuids are added oldest first, so a smaller window keeps the newest
        generation whole."""
        window = cls(size)
        for fp in _decode(data):
            fp = fp & _MASK or 1
            found, i = window._find(window._previous.table, fp)
            if not found:
                found, i = window._find(window._current.table, fp)
            if not found:
                window._insert(window._current.table, i, fp)
        window._rotated = -len(window._current.order)  # version 0: nothing new to save
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


#: fingerprints per piece of a snapshot: 64 KiB, under glibc's mmap threshold (ops/malloc.py)
_PIECE = 8192


class Snapshot:
    """A window's snapshot as pieces of at most 64 KiB, written one after another.

    The save runs every 2 s. Built whole, a 50k window's snapshot is a 400 kB block, each
    such block is a fresh mmap (ops/malloc.py), and the store copied it again (SQLite copies
    a bound blob, then the record it builds): the daemon's VmHWM kept those peaks. A piece
    is a copy of part of a generation's order, taken when it is written: the orders only
    grow at their end (the engine appends without a lock), so the first `count` entries of
    each are those of the moment the snapshot was taken. `bytes(snapshot)` joins the pieces.
    """

    __slots__ = ("_previous", "_previous_count", "_current", "_current_count")

    def __init__(self, previous: array[int], previous_count: int, current: array[int],
                 current_count: int) -> None:
        self._previous, self._previous_count = previous, previous_count
        self._current, self._current_count = current, current_count

    def __len__(self) -> int:
        return _HEADER.size + 8 * (self._previous_count + self._current_count)

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """The header, then each generation's fingerprints (uint64 LE), oldest first."""
        yield _HEADER.pack(_MAGIC, self._previous_count)
        for order, count in ((self._previous, self._previous_count),
                             (self._current, self._current_count)):
            for start in range(0, count, _PIECE):
                piece = order[start:min(start + _PIECE, count)]
                if sys.byteorder != "little" or piece.itemsize != 8:
                    piece = array("Q", piece)
                    if sys.byteorder != "little":
                        piece.byteswap()
                yield piece.tobytes()


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
            data = self.window.pieces()
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
