"""The emulator's exceptions: it stands apart from the daemon and imports nothing of it."""

from __future__ import annotations

import errno


class ScenarioError(Exception):
    """An emulator scenario file that does not load; the message names file and line."""


class ListenError(OSError):
    """One of the emulator's servers cannot listen: which, where, and why in words."""

    def __init__(self, what: str, host: str, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        reasons = {errno.EADDRINUSE: "address in use",
                   errno.EACCES: "permission denied (ports below 1024 need privileges)",
                   errno.EADDRNOTAVAIL: "no such address on this machine"}
        reason = reasons.get(cause.errno or 0) or str(cause.strerror or cause).lower()
        self.message = f"cannot listen on {host}:{port} for the {what}: {reason}"

    def __str__(self) -> str:
        return self.message
