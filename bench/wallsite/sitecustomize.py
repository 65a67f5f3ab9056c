"""bench/wallprobe.py --threads: each thread of the process notes `<native id> <name>` in the
file $WALLPROBE_TIDS, so the probe can name eventd's threads in /proc/PID/task."""

import os
import threading

_OUT = os.environ.get("WALLPROBE_TIDS")
if _OUT:
    _run = threading.Thread.run

    def _named_run(self: threading.Thread) -> None:
        with open(str(_OUT), "a") as f:
            f.write(f"{threading.get_native_id()} {self.name}\n")
        _run(self)

    threading.Thread.run = _named_run  # type: ignore[method-assign]
    with open(_OUT, "a") as f:
        f.write(f"{os.getpid()} main\n")
