"""glibc malloc settings for a long-running, threaded daemon, applied at the start of `run`.

Three of glibc's defaults cost a threaded Python daemon memory it never gives back:
- one arena per thread that allocates (eventd runs 7 threads), each with its own free
  space: `M_ARENA_MAX` 2;
- the mmap threshold rises to the size of the largest block freed (a 400 kB de-dup
  snapshot, a 1 MB webhook body), after which such blocks come from an arena and stay
  resident: a fixed `M_MMAP_THRESHOLD` of 128 KiB keeps them mmapped and returned on free;
- the trim threshold rises with it: a fixed `M_TRIM_THRESHOLD` of 128 KiB.
Together about 3 MiB of RSS in a 300k-event run (`bench/memprobe.py`), at no measurable CPU
cost. A setting the environment already gives (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, or GLIBC_TUNABLES) is left to glibc. Off glibc, nothing is done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
SETTINGS = (
    ("MALLOC_ARENA_MAX", _M_ARENA_MAX, 2),
    ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, 128 * 1024),
    ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, 128 * 1024),
)


def tune(environ: Mapping[str, str]) -> list[str]:
    """Apply the settings the environment does not give; the names of those applied.

    Call before the daemon starts its threads (an arena is made on a thread's first malloc).
    """
    if _glibc_version() is None or environ.get("GLIBC_TUNABLES"):
        return []
    wanted = [(name, param, value) for name, param, value in SETTINGS if name not in environ]
    if not wanted:
        return []
    import ctypes  # 0.4 MiB, only here: it pays for itself several times over

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return []
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = [name for name, param, value in wanted if mallopt(param, value) == 1]
    log.debug("glibc malloc: %s", ", ".join(applied) or "nothing applied")
    return applied


def _glibc_version() -> str | None:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None
