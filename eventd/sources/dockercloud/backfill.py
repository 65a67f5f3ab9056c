"""Backfiller: after a stream gap, recover the missed actions over REST as events.

The stream has no replay (reference 1.2), so what happened while eventd was disconnected
is read from `/api/audit/v1/action/?start_date__gte=<gap start>` and sent to the sink as
backfilled action events. The reference does not document the date format of that filter,
and a server that ignores it returns every action in history: so the dates are checked here
too, and only actions that started or ended inside the gap (1 s slack) are kept.
Duplicates with events that did arrive are removed downstream (by action uuid and state).
A server error is retried a few times by the one backoff policy (`eventd.backoff`, here
without jitter: one replica backfills a gap), and a stop cuts the retries short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tenacity import RetryCallState

from eventd.backoff import Backoff
from eventd.clients.dockercloud.rest import RestClient
from eventd.errors import PermanentActionError, RetryableActionError
from eventd.events import Received, backfilled_action_event, iso_utc, parse_datetime
from eventd.hooks import hooks
from eventd.ops.metrics import Metrics

if TYPE_CHECKING:
    from eventd.settings import Settings

logger = logging.getLogger(__name__)

ACTIONS_PATH = "/api/audit/v1/action/"
#: how far outside the gap a date may be and still count (the filter has whole seconds)
SLACK = 1.0

Sink = Callable[[Sequence[Received]], None]
#: a backfill's retries: the backoff policy's steps without jitter (1 s, 2 s)
BACKOFF = Backoff(jitter=False)


def backfill_backoff(settings: Settings) -> Backoff:
    """The daemon's backoff (--backoff-max...), without jitter, for a backfill's retries."""
    return Backoff(settings.backoff_initial, settings.backoff_max, jitter=False)


class _Stopped(Exception):
    """Stop was asked for during a wait between attempts: no further attempt."""


class Backfiller:
    """Callable as `backfill(gap_start)`: lists actions since the gap and emits them."""

    def __init__(self, rest: RestClient, sink: Sink, metrics: Metrics, *,
                 attempts: int = 3, backoff: Backoff = BACKOFF,
                 stopping: threading.Event | None = None,
                 sleep: Callable[[float], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._rest = rest
        self._sink = sink
        self._metrics = metrics
        self._attempts = max(1, attempts)
        self.backoff = backoff
        self._stopping = stopping if stopping is not None else threading.Event()
        self._sleep = sleep
        self._clock = clock if clock is not None else time.time
        self._outside_logged = False

    def _missed_actions(self, since: str) -> list[Any]:
        """Actions started during the gap, then those that started before it but ended in it."""
        found: dict[str, Any] = {}
        for params in ({"start_date__gte": since}, {"end_date__gte": since}):
            for action in self._rest.list_objects(ACTIONS_PATH, params):
                if isinstance(action, dict):
                    found.setdefault(str(action.get("resource_uri") or id(action)), action)
        return list(found.values())

    def _inside(self, actions: list[Any], gap_start: float, gap_end: float, since: str
                ) -> list[dict[str, Any]]:
        """Keep the actions that started or ended inside the gap; count and report the rest."""
        low, high = gap_start - SLACK, gap_end + SLACK
        kept: list[dict[str, Any]] = []
        outside: list[Any] = []
        for action in actions:
            if isinstance(action, dict) and any(
                    moment is not None and low <= moment <= high
                    for moment in (parse_datetime(action.get("start_date")),
                                   parse_datetime(action.get("end_date")))):
                kept.append(action)
            else:
                outside.append(action)
        if outside:
            self._metrics.stream_backfill_outside_gap.inc(len(outside))
            level = logging.DEBUG if self._outside_logged else logging.WARNING
            self._outside_logged = True
            logger.log(level, "backfill since %s: the server returned %d action(s) that neither "
                       "started nor ended in the gap (it may ignore the date filter); discarded, "
                       "further ones are only counted", since, len(outside))
        return kept

    def _attempt(self, since: str) -> list[Any]:
        if self._stopping.is_set():  # woken from the wait by a stop: no further attempt
            raise _Stopped
        return self._missed_actions(since)

    def __call__(self, gap_start: float) -> int:
        """Emit the actions started since `gap_start` (POSIX time); return how many."""
        since = iso_utc(gap_start)  # whole seconds, rounded down: never later than the gap

        def retrying_in(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning("backfill since %s failed (%s); retrying in %.1f s", since, failure,
                           wait)

        retrying = self.backoff.retrying(attempts=self._attempts, stopping=self._stopping,
                                         retry_on=RetryableActionError, sleep=self._sleep,
                                         before_sleep=retrying_in)
        try:
            actions = retrying(self._attempt, since)
        except _Stopped:
            logger.warning("backfill since %s stopped; events of the gap may be missing", since)
            return 0
        # ValueError: a body that is not JSON
        except (RetryableActionError, PermanentActionError, ValueError) as exc:
            logger.warning("backfill since %s failed (%s); giving up, events of the gap "
                           "may be missing", since, exc)
            return 0
        now = self._clock()
        batch = [Received(backfilled_action_event(action), now, None, True)
                 for action in self._inside(actions, gap_start, now, since)]
        if batch:
            self._sink(batch)
            self._metrics.stream_backfilled.inc(len(batch))
        logger.info("backfill since %s: %d action event(s) recovered", since, len(batch))
        hooks.on_backfilled(since, len(batch))
        return len(batch)
