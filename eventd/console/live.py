"""The Live page's memory: the last events, the rules each matched, what each action did.

An `Observer` of eventd.hooks: on the engine's thread each batch costs one call, kept whole
as the engine handed it over (one tuple of its entries, numbered from its first; no lock, no
JSON, no rule names: an entry is shaped only when someone looks; the oldest batch is cut to
keep `size` events), and each distinct set of matched rules in the batch one dict write per
rule (its last match). What an accepted action then did arrives
from the delivery side (`on_delivered`, `on_dead_lettered`) by job id, kept in a bounded map.
Readers page by sequence number: `since(seq)` is what the event stream sends next.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from eventd.hooks import Observer, Processed
from eventd.records import ActionJob

__all__ = ["DEFAULT_SIZE", "LiveRing"]

_now = time.time
_RULES = itemgetter(1)


def _names(rules: Sequence[Any]) -> tuple[str, ...]:
    """A kept entry's rules by name (the engine may hand over the Rules themselves)."""
    return tuple(rule if type(rule) is str else rule.name for rule in rules)

#: events kept (newest win); each holds a reference to an event the engine already made
DEFAULT_SIZE = 500
_RESULTS = 4 * DEFAULT_SIZE


class LiveRing(Observer):
    """The last `size` events with their decisions, and rules' last matches."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = max(1, size)
        #: (first seq, time, ((event, rules, decisions), ...)): each batch as the engine
        #: handed it over, shaped into entries (rules by name) only when someone reads; the
        #: newest `size` events in all (the oldest batch cut at its front)
        self._batches: deque[tuple[int, float, tuple[Processed, ...]]] = deque()
        self._held = 0  # events in _batches
        self._next = 1  # the next sequence number (one writer: the engine, batch by batch)
        self.last_match: dict[str, float] = {}
        self._results: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._results_lock = threading.Lock()

    # -- hooks (the engine's and the lanes' threads) -------------------------------------------
    def on_processed(self, event: Mapping[str, Any], rules: Sequence[str],
                     decisions: Sequence[Any]) -> None:
        """Keep the event (a reference) and its decisions; note each rule's last match."""
        self.on_processed_batch(((event, rules, decisions),))

    def on_processed_batch(self, entries: Sequence[Processed]) -> None:
        """Keep a batch's events (references), numbered in order, at one time (the batch's
        end: its events were processed within it); note each matched rule's last match.

        One call and C loops per batch, where a call per event cost ~2,500 instructions (and
        a numbered tuple per event, kept, ~300)."""
        count = len(entries)
        if not count:
            return
        now = _now()
        first = self._next
        size, batches = self.size, self._batches
        kept = tuple(entries[-size:]) if count > size else tuple(entries)
        # in this order: a reader sees a batch whole, numbered, before its events are counted
        batches.append((first + count - len(kept), now, kept))
        self._next = first + count
        held = self._held + len(kept)
        while held > size:  # drop the oldest events: whole batches, then the front of one
            start, at, oldest = batches[0]
            excess = held - size
            if excess >= len(oldest):
                batches.popleft()
                held -= len(oldest)
            else:
                batches[0] = (start + excess, at, oldest[excess:])
                held -= excess
        self._held = held
        last_match = self.last_match
        # each distinct set of matched rules once (the index hands out the same tuples)
        for rules in dict.fromkeys(map(tuple, map(_RULES, entries))):
            for rule in rules:
                last_match[rule if type(rule) is str else rule.name] = now

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
                snapshot = list(self._batches)
                break
            except RuntimeError:  # the engine appended during the copy: copy again
                continue
        out: list[tuple[int, float, Mapping[str, Any], Sequence[str], Sequence[Any]]] = []
        for first, at, batch in snapshot:
            skip = after + 1 - first  # entries of this batch at or before `after`
            if skip >= len(batch):
                continue
            skip = max(skip, 0)
            out.extend((seq, at, event, _names(rules), decisions)
                       for seq, (event, rules, decisions) in enumerate(batch[skip:], first + skip))
        return out[-self.size:]  # a reader between the engine's append and its cut

    @property
    def last(self) -> int:
        """The newest entry's sequence number (0 before the first)."""
        try:
            first, _, batch = self._batches[-1]
        except IndexError:
            return 0
        return first + len(batch) - 1

    def result(self, job_id: str) -> tuple[str, str] | None:
        """What an accepted job did since (delivered or dead-lettered), if known."""
        with self._results_lock:
            return self._results.get(job_id)
