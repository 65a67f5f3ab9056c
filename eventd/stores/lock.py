"""One delivering process per state directory: an OS lock on `<state dir>/eventd.lock`.

Two daemons on one spool would both deliver it (every action twice). `flock` belongs to the
open file, so the kernel releases it when the holder dies, SIGKILL included: no stale lock
to clean up. The file holds the holder's pid, so the refusal can say who it is.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from eventd.errors import StateDirError
from eventd.files import FILE_MODE, restrict

log = logging.getLogger(__name__)

LOCK_NAME = "eventd.lock"


class DirLock:
    """An exclusive lock on a state directory, held from `acquire()` to `release()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise StateDirError naming the process that holds it."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise StateDirError(f"state directory {self.directory}: cannot open {self.path.name}: "
                                f"{exc.strerror or exc}", path=self.directory) from None
        try:
            restrict(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = _read_pid(fd)
                os.close(fd)
                who = f"process {pid}" if pid is not None else "another process"
                raise StateDirError(
                    f"state directory {self.directory} is in use by eventd ({who}); stop it "
                    f"first, or give this one another --state-dir", path=self.directory,
                    pid=pid) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                # A filesystem without locks (some NFS): run, but say nothing protects the spool.
                log.warning("state directory %s does not support file locks (%s); make sure no "
                            "other eventd uses it", self.directory, exc.strerror)
                os.close(fd)
                return
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays: unlinking it would race a new holder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
