"""The `audit` action: one JSON line per event in an append-only file, rotated by size, or
one row per event in a PostgreSQL table (`postgres: DSN`); either way a hash chain
(eventd.actions.chain) that `eventd audit verify` walks.

A file is not spooled: the file is the durable record, and its queue blocks the pipeline when
full instead of dropping. A table is spooled like a webhook (the database may be down).
The file is opened once and written through a large buffer; lines reach the OS when the queue
runs empty (`flush`) and the disk per the fsync policy: after every line (`always`) or at most
every N ms (checked on write and by a background flusher).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from eventd.actions import chain
from eventd.actions.audit_table import AuditTable
from eventd.actions.base import ActionContext
from eventd.actions.chain import Head, Heads
from eventd.actions.pglinks import Links, dsn_problems, preflight, table_problems
from eventd.actions.pgtables import AUDIT_COLUMNS, AUDIT_TABLE
from eventd.errors import ActionError, PermanentActionError, RetryableActionError
from eventd.files import NotRegularFile, open_append, private_parents
from eventd.outbound import Address, Call, Outbound
from eventd.records import ActionJob

logger = logging.getLogger(__name__)

DEFAULT_FSYNC_MS = 1000
DEFAULT_ROTATE_BYTES = 100 * 1024 * 1024
DEFAULT_KEEP = 5
TABLE_BATCH = 256  # records in one transaction of a table trail
SAVE_INTERVAL = 0.5  # seconds between saves of a file's chain head (at fsync, rotation, close)
BUFFER_BYTES = 1 << 20
MAX_OPEN_FILES = 64  # distinct audit paths kept open; the least recently used is closed

_UTC = _dt.timezone.utc


def iso_ms(timestamp: float) -> str:
    """POSIX time as ISO 8601 UTC with milliseconds and a `Z` (as datetime.isoformat writes
    it: microseconds rounded half to even, then cut to milliseconds).

    Every audited event asks, most within the same second as the one before: the date and
    time of a second are formatted once (datetime's own formatting cost ~4,000 instructions).
    """
    global _last_second
    if timestamp < 0 or timestamp != timestamp or timestamp >= _YEAR_10000:
        return _iso_ms_slow(timestamp)
    seconds = int(timestamp)
    micros = round((timestamp - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds += 1
        micros -= 1_000_000
    cached = _last_second  # one read: another audit file's thread may replace it
    if cached[0] != seconds:
        cached = _last_second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{micros // 1000:03d}Z"


def _iso_ms_slow(timestamp: float) -> str:
    text = _dt.datetime.fromtimestamp(timestamp, _UTC).isoformat(timespec="milliseconds")
    return text[:-6] + "Z"


_YEAR_10000 = 253_402_300_800.0  # datetime's range ends before it
_last_second: tuple[int, str] = (-1, "")


class AuditFile:
    """One audit file: buffered appends, fsync policy, size rotation to `path.1`..`path.<keep>`,
    every line a link of the trail's hash chain (eventd.actions.chain)."""

    def __init__(self, path: Path, fsync: str | int = DEFAULT_FSYNC_MS,
                 rotate_bytes: int = DEFAULT_ROTATE_BYTES, keep: int = DEFAULT_KEEP,
                 clock: Any = time.monotonic, heads: Heads | None = None,
                 head: Head | None = None, on_repair: Any = None) -> None:
        self.path = path
        self.trail = str(path)
        self.heads = heads if heads is not None else Heads(None)
        #: the last record written (None until the file is opened and its end read)
        self.head = head
        self._on_repair = on_repair or (lambda reason: None)
        self._saved_at = 0.0
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
        private_parents(self.path)  # the directories it creates: 0700
        # 0600 whatever the umask; never through a symlink, only a regular file
        handle = open_append(self.path, buffering=BUFFER_BYTES)
        stat = os.fstat(handle.fileno())
        self.size = stat.st_size
        self.inode = stat.st_ino
        self._file = handle
        if self.head is None:
            self._recover(handle)
        return handle

    def _recover(self, handle: BinaryIO) -> None:
        """Continue the chain where this file (or the state) says it ends; close a torn line."""
        head, fragment = recover_head(self.path, self.size, self.inode,
                                      self.heads.get(self.trail), self._repaired)
        if fragment:
            record = chain.parse(fragment)
            if record is not None and record["seq"] == head.seq + 1 \
                    and record["prev"] == head.hash and chain.canonical(record) == fragment:
                extra, head = b"\n", head.next(fragment)  # whole but for its newline
            else:
                line, head = chain.chained(head, {"received_at": iso_ms(time.time()),
                                                  **chain.torn_record(fragment)})
                extra = b"\n" + line + b"\n"
                self._repaired("torn", f"audit {self.path}: its last line was torn ({len(fragment)} "
                                       "bytes, eventd was killed during a write); marked with a "
                                       f"torn-line record, seq {head.seq}")
            handle.write(extra)
            self.size += len(extra)
        self.head = head

    def _repaired(self, reason: str, message: str) -> None:
        logger.error("%s", message)
        self._on_repair(reason)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record, chained to the one before; caller holds `lock`."""
        handle = self._file or self._open()
        assert self.head is not None
        line, head = chain.chained(self.head, record)
        line += b"\n"
        if self.size and self.size + len(line) > self.rotate_bytes:
            handle = self._rotate()
        handle.write(line)
        self.head = head
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

    def _sync(self, save: bool = False) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = False
        self._last_sync = now = self._clock()
        if save or now - self._saved_at >= SAVE_INTERVAL:
            self._save_head()

    def _save_head(self) -> None:
        """Keep the head in the state, now that the lines it covers are on disk."""
        if self.head is None:
            return
        self._saved_at = self._clock()
        try:
            self.heads.save(self.trail, self.head, inode=self.inode, offset=self.size)
        except OSError as exc:
            logger.error("audit %s: the chain head cannot be saved: %s", self.path, exc)

    def _rotate(self) -> BinaryIO:
        self._sync(save=True)
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
        handle = self._open()  # the new file continues the chain: its first `prev` is the
        self._save_head()      # old file's last hash; a restart reads it from the state
        return handle

    def close(self) -> None:
        """Flush, fsync and close (caller holds `lock`)."""
        if self._file is not None:
            try:
                self._sync(save=True)
            finally:
                self._file.close()
                self._file = None


def recover_head(path: Path, size: int, inode: int, saved: dict[str, Any] | None,
                 repaired: Any) -> tuple[Head, bytes]:
    """Where a file's chain continues, and a torn last line to close (b"" if none).

    The file is the truth of what was written, and the state's head (saved only once its
    lines were on disk) must be in it: a file that ends before it, or holds another record
    there, was cut or edited while eventd was stopped; the chain then continues from the
    saved head, so that `eventd audit verify` names the gap instead of eventd hiding it.
    """
    whole_end, fragment = chain.torn_tail(path) if size else (0, b"")
    found = chain.last_line(path, whole_end)
    file_head = chain.head_of_line(found[0]) if found is not None else None
    saved_head = Head(saved["seq"], saved["hash"]) if saved is not None \
        and isinstance(saved.get("seq"), int) and isinstance(saved.get("hash"), str) else None
    if saved_head is None:
        return file_head or Head(), fragment
    offset = saved.get("offset") if saved is not None else None
    if saved is not None and saved.get("inode") == inode and isinstance(offset, int):
        if whole_end < offset:
            repaired("cut", f"audit {path}: the file ends before the record eventd last "
                            f"wrote (seq {saved_head.seq}): cut while eventd was stopped; the "
                            "chain continues from that record, so the gap stays visible")
            return saved_head, fragment
        there = chain.last_line(path, offset) if offset else None
        if there is not None and chain.digest(there[0]) != saved_head.hash:
            repaired("changed", f"audit {path}: record {saved_head.seq} is not the one eventd "
                                "wrote: changed while eventd was stopped")
            if file_head is None or file_head.seq <= saved_head.seq:
                return saved_head, fragment
        return file_head or saved_head, fragment
    if file_head is not None:
        return file_head, fragment
    rotated = Path(f"{path}.1")
    try:
        rotated_inode = os.stat(rotated).st_ino
    except OSError:
        rotated_inode = None
    if saved is not None and rotated_inode is not None and saved.get("inode") == rotated_inode:
        # killed between the rotation's rename and saving the new file's head
        end, _ = chain.torn_tail(rotated)
        last = chain.last_line(rotated, end)
        if last is not None:
            return chain.head_of_line(last[0]), fragment
    return saved_head, fragment


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
        "anyOf": [{"required": ["path"]}, {"required": ["postgres"]}],
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "postgres": {"type": "string", "minLength": 1,
                         "description": "a postgresql://... DSN: the trail goes to a table "
                                        "there instead of a file (spooled like a webhook)"},
            "table": {"type": "string", "default": AUDIT_TABLE},
            "password_file": {"type": "string",
                              "description": "read the DSN's password from this file "
                                             "(empty: none)"},
            "fsync": {"oneOf": [{"const": "always"}, {"type": "integer", "minimum": 0}]},
            "rotate_bytes": {"type": "integer", "minimum": 1},
            "keep": {"type": "integer", "minimum": 0},
        },
    }

    def __init__(self, context: ActionContext, max_open: int = MAX_OPEN_FILES) -> None:
        self.context = context
        self.max_open = max(1, max_open)
        self._files: dict[str, AuditFile] = {}
        self._outbounds: dict[str, Outbound] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()
        self.heads = Heads(context.state_dir)
        self._heads: dict[str, Head] = {}  # of files closed by the open-file cap
        self.links = Links()
        self.table = AuditTable(self.links, self.heads, self._repaired)

    def _repaired(self, reason: str) -> None:
        self.context.metrics.audit_chain_repairs.labels(reason=reason).inc()

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """path (or postgres) given; fsync `always` or milliseconds; rotate_bytes > 0;
        keep >= 0; a postgres DSN that parses and a plain table name."""
        problems = []
        path = options.get("path")
        if "postgres" in options:
            if "path" in options:
                return ["give either path or postgres, not both"]
            problems = dsn_problems(options, "postgres")
            problems += table_problems(options.get("table", AUDIT_TABLE))
            file_only = [key for key in ("fsync", "rotate_bytes", "keep") if key in options]
            if file_only:
                problems.append(f"{', '.join(file_only)}: for an audit file only")
            return problems
        if "table" in options or "password_file" in options:
            problems.append("table and password_file go with postgres")
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
        """One queue per file, or per database table."""
        if "postgres" in options:
            try:
                where = self.links.dsn(options, "postgres").where()
            except PermanentActionError:
                where = "invalid"
            return f"audit:postgres:{where}/{options.get('table', AUDIT_TABLE)}"
        return f"audit:{options.get('path', '')}"

    def describe(self, job: ActionJob) -> str:
        """The file written, or host:port/database/table."""
        if "postgres" in job.options:
            return self.target(job.options).split(":", 2)[2]
        return str(job.options.get("path", ""))

    def durable_for(self, options: dict[str, Any]) -> bool:
        """A table trail goes through the spool (the database may be down); a file does not
        (the file is the durable record, and the pipeline waits for the disk)."""
        return "postgres" in options

    def batch_size(self, options: dict[str, Any]) -> int:
        """A table takes a queue's waiting records in one transaction; a file one at a time
        (its lines are buffered anyway)."""
        return TABLE_BATCH if "postgres" in options else 1

    def preflight(self, options_list: list[dict[str, Any]]) -> None:
        """At start: every audit table exists with eventd's columns (ConfigError if not)."""
        preflight(self.links, ((options, str(options.get("table", AUDIT_TABLE)), AUDIT_COLUMNS)
                               for options in options_list if "postgres" in options),
                  key="postgres")

    def inactive(self, options: dict[str, Any]) -> bool:
        """A line is always written."""
        return False

    def record(self, job: ActionJob) -> dict[str, Any]:
        """The record for one job (its place in the chain is added when it is written)."""
        context = job.context
        received = context.get("received_at")
        return {
            "received_at": iso_ms(received if isinstance(received, (int, float))
                                  else job.created_at),
            "event": job.event,
            "rules": context.get("rules", [job.rule]),
            "actions": context.get("actions", []),
        }

    def prepare(self, job: ActionJob) -> Outbound:
        """A line appended to the file the options name (the gate's `local` policy), or a
        row in a table (`postgres`: its host against --allow-host)."""
        if "postgres" in job.options:
            table = str(job.options.get("table", AUDIT_TABLE))
            problems = table_problems(table)
            if problems:
                raise PermanentActionError(f"audit: {problems[0]}")
            return self.links.outbound(self.name, self.links.dsn(job.options, "postgres"),
                                       table, "insert")
        path = str(job.options.get("path", ""))
        outbound = self._outbounds.get(path)
        if outbound is None:  # one per file: 100,000 lines a second pass through here
            outbound = Outbound(kind=self.name, policy="local",
                                calls=(Call("append", Address("file", path=path)),))
            if len(self._outbounds) < MAX_OPEN_FILES:
                self._outbounds[path] = outbound
        return outbound

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Append the event's line (disk errors are retryable: the pipeline waits)."""
        if "postgres" in job.options:
            result = self.send_batch([(job, outbound)])[0]
            if isinstance(result, BaseException):
                raise result
            return result
        record = self.record(job)
        while True:
            audit = self._file(job.options)
            try:
                with audit.lock:
                    if audit.retired:
                        continue  # closed by the open-file cap meanwhile: take a fresh one
                    audit.write(record)
            except NotRegularFile as exc:  # a planted link: not a disk that may come back
                raise PermanentActionError(f"audit {audit.path}: {exc.strerror}") from exc
            except OSError as exc:
                raise RetryableActionError(f"audit {audit.path}: {exc.strerror or exc}") from exc
            audit.last_used = time.monotonic()
            return "written"

    def send_batch(self, items: list[tuple[ActionJob, Outbound]]) -> list[str | ActionError]:
        """Records of one table's queue, chained and inserted in one transaction."""
        import psycopg

        job, outbound = items[0]
        address = outbound.calls[0].address
        dsn = self.links.dsn(job.options, "postgres")
        table = address.path.split("/", 2)[2]
        try:
            return list(self.table.write(job.target, dsn, address, table,
                                         [(job.id, self.record(job)) for job, _ in items]))
        except psycopg.Error as exc:
            raise self.links.failed(job.target, dsn, exc) from None

    def open_files(self) -> int:
        """How many audit files are open (bounded by `max_open`)."""
        with self._lock:
            return len(self._files)

    def flush(self) -> None:
        """Called by the dispatcher when the audit queue runs empty."""
        self.table.save_heads()
        with self._lock:
            files = list(self._files.values())
        for audit in files:
            with audit.lock:
                try:
                    audit.flush(sync_due=True)
                except OSError as exc:
                    logger.error("audit %s: flush failed: %s", audit.path, exc)

    def close(self) -> None:
        """Fsync and close every file and table connection; stop the flusher."""
        self._closed.set()
        self.table.save_heads()
        self.links.close()
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
                                  options.get("keep", DEFAULT_KEEP), heads=self.heads,
                                  head=self._heads.get(key), on_repair=self._repaired)
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
            if audit.head is not None:  # a reopened file continues from here, unread
                self._heads[path] = audit.head
                while len(self._heads) > 4 * self.max_open:
                    self._heads.pop(next(iter(self._heads)))
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
