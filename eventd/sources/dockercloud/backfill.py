"""Backfiller: after a stream gap, recover the missed actions over REST as events.

The stream has no replay (reference 1.2), so what happened while eventd was disconnected
is read from `/api/audit/v1/action/?start_date__gte=<gap start>` and sent to the sink as
backfilled action events. The reference does not document the date format of that filter,
and a server that ignores it returns every action in history: so the dates are checked here
too, and only actions that started or ended inside the gap (1 s slack) are kept.
Duplicates with events that did arrive are removed downstream (by action uuid and state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from eventd.errors import PermanentActionError, RetryableActionError
from eventd.events import Received, backfilled_action_event, iso_utc, parse_datetime
from eventd.hooks import hooks
from eventd.ops.metrics import Metrics
from eventd.sources.dockercloud.rest import RestClient

logger = logging.getLogger(__name__)

ACTIONS_PATH = "/api/audit/v1/action/"
#: how far outside the gap a date may be and still count (the filter has whole seconds)
SLACK = 1.0

Sink = Callable[[list[Received]], None]


class Backfiller:
    """Callable as `backfill(gap_start)`: lists actions since the gap and emits them."""

    def __init__(self, rest: RestClient, sink: Sink, metrics: Metrics, *,
                 attempts: int = 3, retry_wait: float = 1.0,
                 stopping: threading.Event | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._rest = rest
        self._sink = sink
        self._metrics = metrics
        self._attempts = max(1, attempts)
        self._retry_wait = retry_wait
        self._stopping = stopping if stopping is not None else threading.Event()
        self._sleep: Callable[[float], object] = sleep if sleep is not None \
            else self._stopping.wait
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

    def __call__(self, gap_start: float) -> int:
        """Emit the actions started since `gap_start` (POSIX time); return how many."""
        since = iso_utc(gap_start)  # whole seconds, rounded down: never later than the gap
        for attempt in range(1, self._attempts + 1):
            try:
                actions = self._missed_actions(since)
            except RetryableActionError as exc:
                if attempt < self._attempts and not self._stopping.is_set():
                    wait = self._retry_wait * 2 ** (attempt - 1)
                    logger.warning("backfill since %s failed (%s); retrying in %.1f s",
                                   since, exc, wait)
                    self._sleep(wait)
                    if not self._stopping.is_set():
                        continue
                logger.warning("backfill since %s failed (%s); giving up, events of the gap "
                               "may be missing", since, exc)
                return 0
            except (PermanentActionError, ValueError) as exc:  # ValueError: a body that is not JSON
                logger.warning("backfill since %s failed (%s); giving up, events of the gap "
                               "may be missing", since, exc)
                return 0
            break
        now = self._clock()
        batch = [Received(backfilled_action_event(action), now, None, True)
                 for action in self._inside(actions, gap_start, now, since)]
        if batch:
            self._sink(batch)
            self._metrics.stream_backfilled.inc(len(batch))
        logger.info("backfill since %s: %d action event(s) recovered", since, len(batch))
        hooks.on_backfilled(since, len(batch))
        return len(batch)
