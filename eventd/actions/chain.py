"""The audit trail's hash chain: canonical records, the head kept in the state, and the walk.

Every audit record carries `seq` (its place, from 1) and `prev`, the SHA-256 (hex) of the
record before it; a record's hash is taken over its canonical JSON (keys sorted, no spaces,
UTF-8: `canonical`), which is also exactly the line written or the `record` column stored, so
the bytes on disk are the bytes hashed. Editing, removing or inserting a record breaks the
chain at the next record; `Walker` names the first place where it breaks.

The head (the last record's seq and hash) is kept in `<state dir>/audit-chain.json`, saved
only after the records it covers reached the disk (file) or were committed (table), so after
a SIGKILL the saved head is never ahead of the trail: a trail that ends before it, or holds
another record at its seq, was cut or changed while eventd was stopped, and eventd then
continues from the saved head, so that the gap stays visible to `eventd audit verify`.

A record torn by a kill in the middle of a write (a last line without its newline) is closed
with a newline and followed by a `torn` record naming its length and hash; the walk accepts
an unreadable line only there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, NamedTuple

import orjson

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
STATE_FILE = "audit-chain.json"
_SORTED = orjson.OPT_SORT_KEYS


def canonical(record: dict[str, Any]) -> bytes:
    """The record's canonical JSON: what is written, stored and hashed."""
    return orjson.dumps(record, option=_SORTED, default=str)


def digest(line: bytes) -> str:
    """SHA-256 (hex) of a record's canonical bytes."""
    return hashlib.sha256(line).hexdigest()


class Head(NamedTuple):
    """The last record of a trail: its seq (0: none yet) and its hash (a tuple: one is made
    per record written)."""

    seq: int = 0
    hash: str = GENESIS

    def next(self, line: bytes) -> Head:
        """The head once `line` (the record of seq `self.seq + 1`) is written."""
        return Head(self.seq + 1, digest(line))


def chained(head: Head, record: dict[str, Any]) -> tuple[bytes, Head]:
    """The record with its place in the chain, as canonical bytes, and the new head."""
    seq = head[0] + 1
    record["seq"] = seq
    record["prev"] = head[1]
    line = orjson.dumps(record, option=_SORTED, default=str)
    return line, Head(seq, sha256(line).hexdigest())


def parse(line: bytes) -> dict[str, Any] | None:
    """A chain record read back, or None if the line is not one (not JSON, no seq or prev)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int) \
            or not isinstance(record.get("prev"), str):
        return None
    return record


class Heads:
    """Chain heads by trail (a file's path, `postgres:host:port/db/table`) in the state
    directory; without one (tests, `eventd test`) they are kept in memory only."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / STATE_FILE if state_dir is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.error("audit chain heads in %s cannot be read (%s); each trail continues "
                         "from its own last record", self.path, exc)
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict)} \
            if isinstance(data, dict) else {}

    def get(self, trail: str) -> dict[str, Any] | None:
        """What was saved for `trail`: seq, hash, and for a file its inode and offset."""
        with self._lock:
            entry = self._entries.get(trail)
            return dict(entry) if entry is not None else None

    def head(self, trail: str) -> Head | None:
        """The saved head of `trail`, if any."""
        entry = self.get(trail)
        if entry is None or not isinstance(entry.get("seq"), int) \
                or not isinstance(entry.get("hash"), str):
            return None
        return Head(entry["seq"], entry["hash"])

    def save(self, trail: str, head: Head, **where: Any) -> None:
        """Keep `trail`'s head (written to a temporary file, synced, renamed over)."""
        with self._lock:
            self._entries[trail] = {"seq": head.seq, "hash": head.hash, **where}
            if self.path is None:
                return
            data = json.dumps(self._entries, sort_keys=True).encode()
            temporary = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)


# -- a file's last records ---------------------------------------------------------------------
def last_line(path: Path, end: int, chunk: int = 64 * 1024) -> tuple[bytes, int] | None:
    """The line whose newline is the byte before `end`, and where it starts; None if `end`
    is 0 (the caller knows a newline is there: `torn_tail` said where whole lines end)."""
    if end <= 0:
        return None
    with open(path, "rb") as handle:
        position = end - 1  # the line without its newline
        buffer = b""
        while position > 0:
            step = min(chunk, position)
            position -= step
            handle.seek(position)
            buffer = handle.read(step) + buffer
            cut = buffer.rfind(b"\n")
            if cut >= 0:
                return buffer[cut + 1:], position + cut + 1
        return buffer, 0


def torn_tail(path: Path) -> tuple[int, bytes]:
    """Where the file's whole lines end, and what follows them (b"": nothing torn)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        position = size
        tail = b""
        while position > 0:
            step = min(64 * 1024, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
            cut = tail.rfind(b"\n")
            if cut >= 0:
                return position + cut + 1, tail[cut + 1:]
        return 0, tail


def head_of_line(line: bytes) -> Head:
    """The head a line leaves: its seq and hash, or (0, its hash) for a line written before
    eventd kept a chain (the first chained record then points at it)."""
    record = parse(line)
    return Head(record["seq"] if record is not None else 0, digest(line))


def torn_record(fragment: bytes) -> dict[str, Any]:
    """The record that marks a torn last line: its length and hash."""
    return {"torn": {"bytes": len(fragment), "sha256": digest(fragment)}}


# -- the walk --------------------------------------------------------------------------------
@dataclass
class Finding:
    """The first place the chain breaks: where (`file:line` or `table seq N`) and what."""

    where: str
    what: str


@dataclass
class Walk:
    """What a walk found: records, the last hash, where the chain began, the first break."""

    records: int = 0
    head: Head = Head()
    first_prev: str | None = None
    first_seq: int | None = None
    unchained: int = 0  # lines before the first chained record (written before the chain)
    torn: int = 0
    notes: list[str] | None = None
    finding: Finding | None = None


class Walker:
    """Walks records in order and stops at the first change, removal or insertion."""

    def __init__(self, saved: Head | None = None) -> None:
        self.walk = Walk(notes=[])
        self.saved = saved if saved is not None and saved.seq > 0 else None
        self._before: tuple[str, Head] | None = None  # the record before the last, and where
        self._last_where = ""
        self._torn: tuple[str, bytes] | None = None
        self._previous_line: bytes | None = None  # an unchained line right before the chain

    @property
    def done(self) -> bool:
        return self.walk.finding is not None

    def _fail(self, where: str, what: str) -> None:
        if self.walk.finding is None:
            self.walk.finding = Finding(where, what)

    def feed(self, where: str, line: bytes) -> None:
        """One line (without its newline) or one stored record, at `where`."""
        if self.done:
            return
        walk = self.walk
        if self._torn is not None:
            torn_where, fragment = self._torn
            record = parse(line)
            marker = record.get("torn") if record is not None else None
            if not (isinstance(marker, dict) and marker.get("bytes") == len(fragment)
                    and marker.get("sha256") == digest(fragment)):
                return self._fail(torn_where, "changed: not a record (and no torn-line record "
                                              "follows it)")
            self._torn = None
            walk.torn += 1
        record = parse(line)
        if record is None:
            if walk.records == 0:  # before the chain began (an audit file of an older eventd)
                walk.unchained += 1
                self._previous_line = line
                return
            self._torn = (where, line)
            return
        if canonical(record) != line:
            return self._fail(where, "changed: the record is not in its canonical form (edited "
                                     "by hand or by another program)")
        seq, prev = record["seq"], record["prev"]
        if walk.records == 0:
            walk.first_prev, walk.first_seq = prev, seq
            if self._previous_line is not None and prev != digest(self._previous_line):
                return self._fail(where, "changed: the chain's first record does not point at "
                                         "the line before it")
        else:
            last = walk.head
            if prev != last.hash:
                if self._before is not None and prev == self._before[1].hash:
                    return self._fail(self._last_where,
                                      "inserted: the next record points past it, at the one "
                                      "before it")
                if seq == last.seq + 1:
                    return self._fail(self._last_where,
                                      f"changed: record {last.seq} is not the one record "
                                      f"{seq} was chained to")
                if seq > last.seq + 1:
                    missing = seq - last.seq - 1
                    span = f"{last.seq + 1}" if missing == 1 else f"{last.seq + 1}-{seq - 1}"
                    return self._fail(where, f"removed: {missing} record(s) before this one "
                                             f"(seq {span})")
                return self._fail(where, f"changed: seq {seq} after {last.seq}, and it does "
                                         "not point at the record before it")
            if seq != last.seq + 1:
                return self._fail(where, f"changed: seq {seq} where {last.seq + 1} was next")
            self._before = (self._last_where, last)
        walk.records += 1
        walk.head = Head(seq, digest(line))
        self._last_where = where
        saved = self.saved
        if saved is not None and seq == saved.seq and walk.head.hash != saved.hash:
            self._fail(where, f"changed: record {seq} is not the one eventd wrote (the head "
                              "eventd saved differs)")

    def finish(self, at: str = "") -> Walk:
        """The walk's result; the head eventd saved must be in the trail."""
        walk = self.walk
        if self._torn is not None and not self.done:
            assert walk.notes is not None
            walk.notes.append(f"{self._torn[0]}: a torn last line ({len(self._torn[1])} bytes, "
                              "a kill during a write; marked when eventd next writes)")
        saved = self.saved
        if saved is not None and not self.done and walk.head.seq < saved.seq:
            self._fail(at or self._last_where or "the end",
                       f"removed: the trail ends at seq {walk.head.seq}, but eventd had "
                       f"written seq {saved.seq}")
        return walk


def walk_lines(lines: Iterable[tuple[str, bytes]], saved: Head | None = None) -> Walk:
    """Walk (where, line) pairs in order."""
    walker = Walker(saved)
    for where, line in lines:
        walker.feed(where, line)
        if walker.done:
            break
    return walker.finish()


def trail_files(path: Path) -> list[Path]:
    """A file trail oldest first: `path.N` ... `path.1`, then `path` (rotation's names)."""
    rotated = []
    for sibling in path.parent.glob(path.name + ".*"):
        suffix = sibling.name[len(path.name) + 1:]
        if suffix.isdigit() and sibling.is_file():
            rotated.append((int(suffix), sibling))
    files = [p for _, p in sorted(rotated, reverse=True)]
    return files + ([path] if path.is_file() else [])


def file_lines(files: Iterable[Path]) -> Iterable[tuple[str, bytes]]:
    """(`file:line`, line) for every line of the files in order, read a chunk at a time; a
    last line without its newline is given as it is (the walk judges it torn)."""
    for path in files:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                yield f"{path}:{number}", line[:-1] if line.endswith(b"\n") else line
