"""Private state on disk: the state directory 0700, every file eventd writes 0600, whatever the umask.

The spool holds rendered webhook URLs and headers (tokens), the record and audit files hold
events: none of them is anybody else's business on a shared machine.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from eventd.errors import StateDirError

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as a directory only its owner can enter; an existing one
    is kept as it is. StateDirError if it names something other than a directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StateDirError(f"state directory {path} is not a directory", path=path)
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        if not path.is_dir():  # a file appeared meanwhile, or a parent is a file
            raise StateDirError(f"state directory {path} is not a directory", path=path) from None
        return path
    except NotADirectoryError:
        raise StateDirError(f"state directory {path}: a parent is not a directory",
                            path=path) from None
    except OSError as exc:
        raise StateDirError(f"state directory {path}: {exc.strerror or exc}", path=path) from None
    os.chmod(path, DIR_MODE)  # mkdir's mode went through the umask
    return path


def private_file(path: Path) -> None:
    """Create `path` if missing, and make it 0600 if it is our regular file with more."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        restrict(fd)
    finally:
        os.close(fd)


def restrict(fd: int) -> None:
    """Drop group and other permissions of an open file (if it is ours and regular)."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077 and info.st_uid == os.geteuid():
        os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~0o077 | FILE_MODE)


class NotRegularFile(OSError):
    """A path eventd would write to is a symbolic link, a FIFO, a device: never written."""


def open_append(path: Path, buffering: int = -1) -> BinaryIO:
    """Open `path` for appending, created 0600 (and made private if it was not).

    Never through a symbolic link (O_NOFOLLOW: a link planted in a writable directory must
    not make a root eventd append to, or chmod, another file), and only a regular file (a
    FIFO or a device is refused, without blocking on it): NotRegularFile otherwise."""
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "is a symbolic link (not followed)",
                                 str(path)) from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads, opened without blocking
            raise NotRegularFile(errno.ENXIO, "not a regular file", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        restrict(fd)
        return os.fdopen(fd, "ab", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def private_parents(path: Path) -> None:
    """Create the missing directories above `path` 0700 (whatever the umask); directories
    that exist are kept as they are."""
    missing: list[Path] = []
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs as it is
        os.chmod(directory, DIR_MODE)
