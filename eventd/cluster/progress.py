"""When each stream's last event was received and processed, so a new owner's gap starts there.

The engine reports every batch it finished (`processed`); the coordinator saves the latest
time per namespace in Redis a few times per lease period, fenced by the lease. On a graceful
release the time of the last event received counts: the engine still finishes those.

A tenure that began with a gap (`begin`: the stream taken over from where another replica left
it) stands at that gap's start until the engine has finished one of the tenure's events: the
first is the gap marker (`connected` with the gap), and until its job is accepted the gap is
announced nowhere. Saved or handed over meanwhile, the stream is left there, so that the next
holder announces the gap again, whatever this replica received since or processed in an
earlier tenure (chaos seed 11: a replica whose engine a failover held up took a stream with a
16 s gap, gave it back 2 s later saying it was left at its last event received, and was killed
with the marker still queued: 33 events lost unannounced).

An event's time here is when it was *sent* as far as eventd can tell: its own `datetime`
(whole seconds) when that is earlier than its arrival. A reader held up (a stalled spool)
reads events seconds after they were sent; the events sent after the last one it processed
but before that one's arrival are dropped with the lease, and the next holder's gap must
cover them. A `datetime` more than MAX_LAG before the arrival (a server clock behind) is not
believed further than that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from eventd.clients.dockercloud.namespaces import OWN, label
from eventd.events import Received, parse_datetime

#: the most an event's own `datetime` may date its mark before its arrival (seconds)
MAX_LAG = 60.0


def sent_at(received: Received) -> float:
    """When the event was sent, at the latest: its arrival, or its own earlier `datetime`."""
    at = received.received_at
    when = parse_datetime(received.event.get("datetime"))
    if when is not None and when < at:
        return max(when, at - MAX_LAG)
    return at


class Tracker:
    """The newest received and processed event times, per namespace label (POSIX seconds).

    An event's `namespace` key is data: only the stream tag eventd set (a configured
    namespace) names a stream here; anything else (absent, a list, another organisation's
    name) came from the user's own stream, so one hostile event cannot add a key or fail.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names = frozenset(names)
        self._received: dict[str, float] = {}
        self._processed: dict[str, float] = {}
        #: per namespace whose tenure began with a gap not yet announced: (the gap's start,
        #: when the tenure began); dropped once the engine finished an event received since
        self._unannounced: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _name(self, batch: Sequence[Received]) -> str:
        name = label(batch[-1].event.get("namespace"))
        return name if name in self._names else OWN

    def received(self, batch: Sequence[Received]) -> None:
        """A batch was handed to the engine."""
        if batch:
            last, name = batch[-1], self._name(batch)
            with self._lock:
                self._received[name] = max(sent_at(last), self._received.get(name, 0.0))

    def processed(self, batch: Sequence[Received]) -> None:
        """The engine finished a batch (every event of one batch comes from one stream)."""
        if batch:
            last, name = batch[-1], self._name(batch)
            with self._lock:
                self._processed[name] = max(sent_at(last), self._processed.get(name, 0.0))
                gap = self._unannounced.get(name)
                # Read in this tenure (the engine runs batches in order): its marker ran too
                if gap is not None and last.received_at >= gap[1]:
                    del self._unannounced[name]

    def begin(self, name: str, gap_start: float | None) -> None:
        """This replica took the stream of `name`; `gap_start`: where the previous holder
        left it (None: no gap to announce), until an event of this tenure is processed."""
        with self._lock:
            if gap_start is None:
                self._unannounced.pop(name, None)
            else:
                self._unannounced[name] = (gap_start, time.time())

    def last_processed(self, name: str) -> float | None:
        """When the last event of this namespace that the engine finished was sent (`sent_at`);
        the start of this tenure's gap while it is not yet announced."""
        with self._lock:
            gap = self._unannounced.get(name)
            return gap[0] if gap is not None else self._processed.get(name)

    def last_received(self, name: str) -> float | None:
        """When the last event of this namespace handed to the engine was sent (`sent_at`);
        the start of this tenure's gap while it is not yet announced."""
        with self._lock:
            gap = self._unannounced.get(name)
            if gap is not None:
                return gap[0]
            return self._received.get(name) or self._processed.get(name)
