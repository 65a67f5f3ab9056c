"""The `audit` action: one JSON line per event in an append-only file, rotated by size.

Not spooled: the file is the durable record, and its queue blocks the pipeline when full
instead of dropping. The file is opened once and written through a large buffer; lines reach
the OS when the queue runs empty (`flush`) and the disk per the fsync policy: after every
line (`always`) or at most every N ms (checked on write and by a background flusher).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import orjson

from eventd.actions.base import ActionContext, ActionJob
from eventd.errors import PermanentActionError, RetryableActionError
from eventd.stores.files import open_append

logger = logging.getLogger(__name__)

DEFAULT_FSYNC_MS = 1000
DEFAULT_ROTATE_BYTES = 100 * 1024 * 1024
DEFAULT_KEEP = 5
BUFFER_BYTES = 1 << 20
MAX_OPEN_FILES = 64  # distinct audit paths kept open; the least recently used is closed

_UTC = _dt.timezone.utc


def iso_ms(timestamp: float) -> str:
    """POSIX time as ISO 8601 UTC with milliseconds and a `Z`."""
    text = _dt.datetime.fromtimestamp(timestamp, _UTC).isoformat(timespec="milliseconds")
    return text[:-6] + "Z"


class AuditFile:
    """One audit file: buffered appends, fsync policy, size rotation to `path.1`..`path.<keep>`."""

    def __init__(self, path: Path, fsync: str | int = DEFAULT_FSYNC_MS,
                 rotate_bytes: int = DEFAULT_ROTATE_BYTES, keep: int = DEFAULT_KEEP,
                 clock: Any = time.monotonic) -> None:
        self.path = path
        self.always = fsync == "always" or fsync == 0
        self.interval = 0.0 if self.always else int(fsync) / 1000.0
        self.rotate_bytes = max(1, int(rotate_bytes))
        self.keep = max(0, int(keep))
        self._clock = clock
        self.lock = threading.Lock()
        self._file: BinaryIO | None = None
        self.size = 0
        self._unsynced = False  # written (maybe only to our buffer) since the last fsync
        self._last_sync = clock()
        self.lines = 0
        self.rotations = 0
        self.last_used = clock()
        self.retired = False  # closed to bound open files: writers fetch a fresh one

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open_append(self.path, buffering=BUFFER_BYTES)  # 0600, whatever the umask
        self.size = os.fstat(handle.fileno()).st_size
        self._file = handle
        return handle

    def write(self, line: bytes) -> None:
        """Append one line (ending in a newline); caller holds `lock`."""
        handle = self._file or self._open()
        if self.size and self.size + len(line) > self.rotate_bytes:
            handle = self._rotate()
        handle.write(line)
        self.size += len(line)
        self.lines += 1
        self._unsynced = True
        if self.always:
            self._sync()
        elif self._clock() - self._last_sync >= self.interval:
            self._sync()

    def flush(self, sync_due: bool = False) -> None:
        """Hand buffered lines to the OS; fsync too if due (caller holds `lock`)."""
        if self._file is None:
            return
        if sync_due and self._unsynced and self._clock() - self._last_sync >= self.interval:
            self._sync()
        else:
            self._file.flush()

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = False
        self._last_sync = self._clock()

    def _rotate(self) -> BinaryIO:
        self._sync()
        assert self._file is not None
        self._file.close()
        self._file = None
        base = str(self.path)
        if self.keep == 0:
            os.unlink(base)
        else:
            for index in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{base}.{index}"):
                    os.replace(f"{base}.{index}", f"{base}.{index + 1}")
            os.replace(base, f"{base}.1")
        _sync_dir(self.path.parent)
        self.rotations += 1
        return self._open()

    def close(self) -> None:
        """Flush, fsync and close (caller holds `lock`)."""
        if self._file is not None:
            try:
                self._sync()
            finally:
                self._file.close()
                self._file = None


def traverses(path: str) -> bool:
    """Whether a path climbs out of where it points (a `..` component)."""
    return ".." in Path(path).parts


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AuditAction:
    """Append `{"received_at", "event", "rules", "actions"}` per event to a JSONL file."""

    name: ClassVar[str] = "audit"
    durable: ClassVar[bool] = False
    per_event: ClassVar[bool] = True
    acts_on_objects: ClassVar[bool] = False
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "fsync": {"oneOf": [{"const": "always"}, {"type": "integer", "minimum": 0}]},
            "rotate_bytes": {"type": "integer", "minimum": 1},
            "keep": {"type": "integer", "minimum": 0},
        },
    }

    def __init__(self, context: ActionContext, max_open: int = MAX_OPEN_FILES) -> None:
        self.context = context
        self.max_open = max(1, max_open)
        self._files: dict[str, AuditFile] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """path given; fsync `always` or milliseconds; rotate_bytes > 0; keep >= 0."""
        problems = []
        path = options.get("path")
        if not isinstance(path, str) or not path.strip():
            problems.append("path is required")
        elif "{" not in path and traverses(path):
            problems.append("path must not hold '..' (a rendered path cannot leave its directory)")
        fsync = options.get("fsync", DEFAULT_FSYNC_MS)
        if fsync != "always" and (isinstance(fsync, bool) or not isinstance(fsync, int)
                                  or fsync < 0):
            problems.append("fsync must be 'always' or a number of milliseconds")
        rotate = options.get("rotate_bytes", DEFAULT_ROTATE_BYTES)
        if isinstance(rotate, bool) or not isinstance(rotate, int) or rotate <= 0:
            problems.append("rotate_bytes must be a positive integer")
        keep = options.get("keep", DEFAULT_KEEP)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            problems.append("keep must be an integer >= 0")
        return problems

    def target(self, options: dict[str, Any]) -> str:
        """One queue per file."""
        return f"audit:{options.get('path', '')}"

    def describe(self, job: ActionJob) -> str:
        """The file written."""
        return str(job.options.get("path", ""))

    def inactive(self, options: dict[str, Any]) -> bool:
        """A line is always written."""
        return False

    def line(self, job: ActionJob) -> bytes:
        """The JSON line for one job."""
        context = job.context
        received = context.get("received_at")
        record = {
            "received_at": iso_ms(received if isinstance(received, (int, float))
                                  else job.created_at),
            "event": job.event,
            "rules": context.get("rules", [job.rule]),
            "actions": context.get("actions", []),
        }
        return orjson.dumps(record, default=str) + b"\n"

    def run(self, job: ActionJob) -> str:
        """Append the event's line (disk errors are retryable: the pipeline waits)."""
        line = self.line(job)
        while True:
            audit = self._file(job.options)
            try:
                with audit.lock:
                    if audit.retired:
                        continue  # closed by the open-file cap meanwhile: take a fresh one
                    audit.write(line)
            except OSError as exc:
                raise RetryableActionError(f"audit {audit.path}: {exc.strerror or exc}") from exc
            audit.last_used = time.monotonic()
            return "written"

    def open_files(self) -> int:
        """How many audit files are open (bounded by `max_open`)."""
        with self._lock:
            return len(self._files)

    def flush(self) -> None:
        """Called by the dispatcher when the audit queue runs empty."""
        with self._lock:
            files = list(self._files.values())
        for audit in files:
            with audit.lock:
                try:
                    audit.flush(sync_due=True)
                except OSError as exc:
                    logger.error("audit %s: flush failed: %s", audit.path, exc)

    def close(self) -> None:
        """Fsync and close every file; stop the flusher."""
        self._closed.set()
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
        for audit in files:
            with audit.lock:
                try:
                    audit.close()
                except OSError as exc:
                    logger.error("audit %s: close failed: %s", audit.path, exc)
        if self._flusher is not None:
            self._flusher.join(timeout=5)

    def _file(self, options: dict[str, Any]) -> AuditFile:
        key = str(options.get("path", ""))
        audit = self._files.get(key)
        if audit is not None:
            return audit
        problems = self.validate(options)
        if not problems and traverses(key):
            problems = ["path must not hold '..' (a rendered path cannot leave its directory)"]
        if problems:
            raise PermanentActionError(f"audit: {'; '.join(problems)}")
        with self._lock:
            audit = self._files.get(key)
            if audit is None:
                while len(self._files) >= self.max_open:
                    self._close_least_used()
                audit = AuditFile(Path(key), options.get("fsync", DEFAULT_FSYNC_MS),
                                  options.get("rotate_bytes", DEFAULT_ROTATE_BYTES),
                                  options.get("keep", DEFAULT_KEEP))
                self._files[key] = audit
                if not audit.always and self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                     name="audit-flusher")
                    self._flusher.start()
        return audit

    def _close_least_used(self) -> None:
        """Close the file written least recently (caller holds `_lock`)."""
        path, audit = min(self._files.items(), key=lambda item: item[1].last_used)
        del self._files[path]
        with audit.lock:
            audit.retired = True
            try:
                audit.close()
            except OSError as exc:
                logger.error("audit %s: close failed: %s", audit.path, exc)
        logger.debug("audit %s closed: more than %d audit files in use", path, self.max_open)

    def _flush_loop(self) -> None:
        """Fsync lines written since the last fsync, so an idle file is on disk within N ms."""
        while not self._closed.wait(0.1):
            with self._lock:
                files = list(self._files.values())
            for audit in files:
                if audit.always or not audit._unsynced:
                    continue
                with audit.lock:
                    try:
                        audit.flush(sync_due=True)
                    except OSError as exc:
                        logger.error("audit %s: fsync failed: %s", audit.path, exc)
