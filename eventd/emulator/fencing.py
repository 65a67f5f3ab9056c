"""Fencing tokens as a server checks them: a request with a stale token is refused and counted.

A client that holds a lease sends `Eventd-Fencing-Token: <scope>:<token>` (scope: the
cluster and the namespace, `prod/acme`; token: the lease's number, which grows with every new
holder). The server keeps the highest token seen per scope and refuses any lower one (HTTP
409), as Kleppmann's fenced storage does: a holder whose lease passed to another can no
longer act, however late its request arrives. A request without the header is let through
(and counted), so a client that does not fence yet still works. The header is data from the
network: anything that is not exactly that shape is `malformed`, refused, never raised.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

HEADER = "Eventd-Fencing-Token"
#: a scope is the cluster name and the namespace label (`(own)` included), a token 1-18 digits
_VALUE = re.compile(r"(?P<scope>[A-Za-z0-9._()-]{1,64}/[A-Za-z0-9._()-]{1,255}):(?P<token>[0-9]{1,18})")
VERDICTS = ("absent", "current", "newer", "stale", "malformed")
REFUSED = frozenset({"stale", "malformed"})


@dataclass(frozen=True)
class Token:
    """A parsed header: the lease's scope and its number."""

    scope: str
    token: int


def parse(value: str | None) -> Token | None:
    """The token in a header value; None if absent or not exactly `<cluster>/<ns>:<digits>`."""
    if value is None:
        return None
    match = _VALUE.fullmatch(value.strip())
    if match is None:
        return None
    return Token(match["scope"], int(match["token"]))


class Fences:
    """The highest token seen per scope, and how many requests got each verdict."""

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)

    def check(self, value: str | None) -> str:
        """The verdict on one request's header (`stale`/`malformed` ones are to be refused)."""
        if value is None:
            verdict = "absent"
        else:
            token = parse(value)
            if token is None:
                verdict = "malformed"
            else:
                with self._lock:
                    highest = self._highest.get(token.scope)
                    if highest is None or token.token > highest:
                        self._highest[token.scope] = token.token
                        verdict = "newer"
                    elif token.token == highest:
                        verdict = "current"
                    else:
                        verdict = "stale"
        with self._lock:
            self.counts[verdict] += 1
        return verdict

    def refuses(self, value: str | None) -> bool:
        """Check one request's header: True if it must be refused (stale or malformed)."""
        return self.check(value) in REFUSED

    def highest(self) -> dict[str, int]:
        """The highest token seen per scope."""
        with self._lock:
            return dict(self._highest)

    def snapshot(self) -> dict[str, int]:
        """How many requests got each verdict so far."""
        with self._lock:
            return dict(self.counts)
