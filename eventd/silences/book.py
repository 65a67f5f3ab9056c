"""The silences in force, read from the store, and the one check the engine makes per action.

The engine tests `watch` for each action of a matched rule: with no silence pending or active
it is an empty tuple, and that test is the whole cost. Otherwise it asks
`muted(rule, kind, event, options)`, which tries the silences in turn against the clock, so
one starts and ends on the second it says, whatever the refresh. A thread reads the store
every `refresh` seconds, so silences added by the CLI, by another replica or by the console
of another replica take effect here within that; one added through this process's book takes
effect at once.

A `resolve: true` action of an alert kind (alertmanager, pagerduty, opsgenie, slack, msteams) is
never muted: a silence stops notifications, it never keeps a resolved alert or incident open.
Nor does it resolve one: alerts already firing when it began are re-sent by the alert ticker
(eventd.alerts) as before, so Alertmanager keeps them active.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from eventd.errors import StoreError
from eventd.ops.metrics import Metrics
from eventd.silences.model import ALERT_KINDS, RETENTION, BadSilence, Silence, silence_from_record
from eventd.stores.base import Silences

log = logging.getLogger(__name__)

#: seconds between two reads of the store
DEFAULT_REFRESH = 1.0
#: refreshes between two prunings of silences ended more than RETENTION ago
_PRUNE_EVERY = 600


class SilenceBook:
    """This process's view of the store's silences; `muted` is the engine's Muter."""

    def __init__(self, store: Silences, metrics: Metrics | None = None, *,
                 refresh: float = DEFAULT_REFRESH, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._metrics = metrics
        self._refresh_every = refresh
        self._clock = clock
        #: pending or active silences, soonest end first: the engine tests this tuple before
        #: it calls `muted` (read without a lock: swapped whole)
        self.watch: tuple[Silence, ...] = ()
        self._known: tuple[Silence, ...] = ()
        self._bad: set[str] = set()  # records already reported as unusable
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshes = 0
        self._unreachable = False

    # -- the engine's check ------------------------------------------------------------------
    def muted(self, rule: str, kind: str, event: Mapping[str, Any],
              options: Mapping[str, Any]) -> Silence | None:
        """The silence that mutes this action now, or None."""
        watch = self.watch
        if not watch:
            return None
        return self._find(watch, rule, kind, event, options)

    def _find(self, watch: tuple[Silence, ...], rule: str, kind: str,
              event: Mapping[str, Any], options: Mapping[str, Any]) -> Silence | None:
        if kind in ALERT_KINDS and options.get("resolve") is True:
            return None
        now = self._clock()
        for silence in watch:
            if silence.starts_at <= now < silence.ends_at \
                    and silence.mutes(rule, kind, event, options):
                return silence
        return None

    # -- reading and changing ------------------------------------------------------------------
    def silences(self) -> list[Silence]:
        """Every silence known at the last refresh (ended ones too, until pruned), newest first."""
        return sorted(self._known, key=lambda s: (s.created_at, s.id), reverse=True)

    def get(self, ident: str) -> Silence | None:
        """The silence `ident` as last read (None if unknown)."""
        return next((s for s in self._known if s.id == ident), None)

    def add(self, silence: Silence) -> Silence:
        """Keep a new silence in the store; in force here at once (StoreError if unreachable)."""
        self._store.silence_put(silence.to_record())
        log.info("silence %s added by %s until %s: %s", silence.id, silence.created_by,
                 _utc(silence.ends_at), silence.describe())
        self.refresh()
        return silence

    def expire(self, ident: str) -> Silence | None:
        """End the silence `ident` now (None if the store has no such silence)."""
        self.refresh()
        found = self.get(ident)
        if found is None:
            return None
        ended = found.expired_at(self._clock())
        if ended is not found:
            self._store.silence_put(ended.to_record())
            log.info("silence %s expired: %s", ended.id, ended.describe())
            self.refresh()
        return ended

    def refresh(self) -> None:
        """Read every silence from the store (StoreError if unreachable: the last view stays)."""
        records = self._store.silence_list()
        now = self._clock()
        known = []
        for record in records:
            try:
                known.append(silence_from_record(record))
            except BadSilence as exc:
                self._unusable(record, exc)
        with self._lock:
            self._known = tuple(known)
            self.watch = tuple(sorted((s for s in known if s.ends_at > now),
                                       key=lambda s: s.ends_at))
        if self._metrics is not None:
            self._metrics.silences_active.set(sum(1 for s in known if s.state(now) == "active"))

    def _unusable(self, record: Any, exc: BadSilence) -> None:
        ident = record.get("id") if isinstance(record, Mapping) else None
        key = ident if isinstance(ident, str) else repr(record)[:64]
        if key in self._bad:
            return
        if len(self._bad) < 10_000:
            self._bad.add(key)
        if self._metrics is not None:
            self._metrics.silences_invalid.inc()
        log.warning("silence record %.64r in the store is not usable (%s); skipped", key, exc)

    # -- the refresh thread --------------------------------------------------------------------
    def start(self) -> None:
        """Read the store now (if it answers) and every `refresh` seconds on a thread."""
        try:
            self.refresh()
        except StoreError as exc:
            self._went_unreachable(exc)
        self._thread = threading.Thread(target=self._run, name="silences", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the refresh thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stopping.wait(self._refresh_every):
            try:
                self.refresh()
                self._refreshes += 1
                if self._refreshes % _PRUNE_EVERY == 0:
                    self._store.silence_prune(self._clock() - RETENTION)
            except StoreError as exc:
                self._went_unreachable(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a bad surprise
                from eventd.ops.internal import report_internal_error

                report_internal_error("silences", exc, self._metrics)
                continue
            if self._unreachable:
                self._unreachable = False
                log.info("silences read from the store again")

    def _went_unreachable(self, exc: StoreError) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("silences cannot be read from the store (%s); the %d known stay in "
                        "force, read again every %.0f s", exc, len(self.watch),
                        self._refresh_every)


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
