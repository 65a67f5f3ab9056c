"""The Live page's memory: the last events, the rules each matched, what each action did.

An `Observer` of eventd.hooks: on the engine's thread each event costs one tuple appended to a
bounded deque (no lock, no copy, no JSON: an entry is shaped only when someone looks), and
each matched rule one dict write (its last match). What an accepted action then did arrives
from the delivery side (`on_delivered`, `on_dead_lettered`) by job id, kept in a bounded map.
Readers page by sequence number: `since(seq)` is what the event stream sends next.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from eventd.hooks import Observer
from eventd.records import ActionJob

__all__ = ["DEFAULT_SIZE", "LiveRing"]

_now = time.time

#: events kept (newest win); each holds a reference to an event the engine already made
DEFAULT_SIZE = 500
_RESULTS = 4 * DEFAULT_SIZE


class LiveRing(Observer):
    """The last `size` events with their decisions, and rules' last matches."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._ring: deque[tuple[int, float, Mapping[str, Any], Sequence[str], Sequence[Any]]] = \
            deque(maxlen=size)
        self._seq = itertools.count(1)
        self.last_match: dict[str, float] = {}
        self._results: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._results_lock = threading.Lock()

    # -- hooks (the engine's and the lanes' threads) -------------------------------------------
    def on_processed(self, event: Mapping[str, Any], rules: Sequence[str],
                     decisions: Sequence[Any]) -> None:
        """Keep the event (a reference) and its decisions; note each rule's last match."""
        now = _now()
        self._ring.append((next(self._seq), now, event, rules, decisions))
        if rules:
            last_match = self.last_match
            for rule in rules:
                last_match[rule] = now

    def on_delivered(self, job: ActionJob, result: str) -> None:
        """An accepted action ran: shown beside its decision."""
        self._result(job.id, "delivered", result)

    def on_dead_lettered(self, job: ActionJob, reason: str) -> None:
        """An accepted action gave up: shown beside its decision."""
        self._result(job.id, "deadletter", reason)

    def _result(self, job_id: str, status: str, detail: str) -> None:
        with self._results_lock:
            self._results[job_id] = (status, detail)
            self._results.move_to_end(job_id)
            while len(self._results) > _RESULTS:
                self._results.popitem(last=False)

    # -- readers (the console's request threads) -------------------------------------------------
    def entries(self, after: int = 0) -> list[tuple[int, float, Mapping[str, Any],
                                                    Sequence[str], Sequence[Any]]]:
        """The kept events with a sequence number above `after`, oldest first."""
        while True:
            try:
                snapshot = list(self._ring)
                break
            except RuntimeError:  # the engine appended during the copy: copy again
                continue
        return [entry for entry in snapshot if entry[0] > after]

    @property
    def last(self) -> int:
        """The newest entry's sequence number (0 before the first)."""
        try:
            return self._ring[-1][0]
        except IndexError:
            return 0

    def result(self, job_id: str) -> tuple[str, str] | None:
        """What an accepted job did since (delivered or dead-lettered), if known."""
        with self._results_lock:
            return self._results.get(job_id)
