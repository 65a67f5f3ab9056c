"""Firing alerts and incidents: what an incident kind fired, kept until it is resolved or expires.

The incident kinds (`alertmanager`, `pagerduty`, `opsgenie`, `slack`, `msteams`: each declares
`incident = True`) share this one lifecycle: fire, repeat (the same identity firing again: no
new incident), resolve (`resolve: true`), expire. Only `alertmanager` alerts are re-sent on a
clock (Alertmanager ends an alert at its `endsAt`); the others stay open at the service until
resolved. A kind that must remember what the service answered (Slack's message `ts`) keeps it
with the alert through `note()`, so a restart still threads and resolves.

An alert's identity is its `url` and its rendered labels (`alertname` defaults to the rule).
Firing keeps it in the store and sends it with `endsAt` = now + 4 x resend; the ticker re-sends
it every `resend` seconds, as Prometheus does, so Alertmanager never resolves it on its own
while the condition holds, and does resolve it (at the last `endsAt`) if eventd dies for good.
`resolve: true` sends the same labels with `endsAt` = now and forgets the alert (a resolve of
an alert that is not firing sends nothing); `resolve_after` resolves one that has not fired
again for that long (a crash loop that has stopped crashing), with the firing rule's own
options; `expire` (default 24 h) forgets one nothing resolved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from eventd.errors import ConfigError, StoreError
from eventd.events import parse_datetime
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.settings import parse_duration
from eventd.stores.backpressure import until_stored
from eventd.stores.base import FiringAlerts

log = logging.getLogger(__name__)

R = TypeVar("R")

DEFAULT_RESEND = 60.0
DEFAULT_EXPIRE = 86400.0
#: endsAt is this many re-send intervals ahead (Prometheus' resend delay x 4)
ENDS_AFTER_RESENDS = 4
#: event fields kept with a firing alert (a re-send's job carries them; the rest is not needed)
_EVENT_FIELDS = ("type", "action", "state", "uuid", "resource_uri", "datetime")


def alert_labels(rule: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The labels an alert is sent with: `alertname` (the rule's name unless given), then the
    rendered `labels`."""
    labels = {"alertname": rule}
    labels.update({str(k): str(v) for k, v in (options.get("labels") or {}).items()})
    return labels


def alert_key(url: str, labels: Mapping[str, str]) -> str:
    """The identity of an alert: its Alertmanager (`url`) and its labels, order aside."""
    base = url.split("?", 1)[0].rstrip("/")
    basis = json.dumps([base, sorted(labels.items())], separators=(",", ":"))
    return hashlib.blake2b(basis.encode(), digest_size=16).hexdigest()


def incident_key(kind: str, destination: str, labels: Mapping[str, str]) -> str:
    """The identity of an incident of another kind than alertmanager: the kind, where it goes
    (a routing key, a channel: hashed, never stored as such in the key) and its labels."""
    basis = json.dumps([kind, destination, sorted(labels.items())], separators=(",", ":"))
    return hashlib.blake2b(basis.encode(), digest_size=16).hexdigest()


#: kind -> (rendered options -> where its incidents go: the part of its identity besides labels)
Destinations = Mapping[str, Callable[[Mapping[str, Any]], str]]


def expire_seconds(value: Any) -> float:
    """The `expire` option in seconds; the default when it is absent."""
    if value is None or value == "":
        return DEFAULT_EXPIRE
    return parse_duration(value, "expire")


class AlertBook:
    """Records what incident jobs fire and resolve, and re-sends the alerts that still fire.

    `submit` is where jobs go (the dispatcher); every accepted job passes through `submit()`
    here, which only looks at the incident kinds (`destinations`' keys, and `alertmanager`).
    """

    def __init__(self, store: FiringAlerts, submit: Callable[[ActionJob], object],
                 metrics: Metrics, *, resend: float = DEFAULT_RESEND,
                 clock: Callable[[], float] = time.time,
                 stopping: threading.Event | None = None,
                 destinations: Destinations | None = None) -> None:
        self._store = store
        self._destinations = dict(destinations or {})
        self._destinations.pop("alertmanager", None)  # its key stays url + labels
        #: set: the engine's calls wait for an unreachable store (backpressure) until it is
        self._stopping = stopping
        self._submit = submit
        self._metrics = metrics
        self.resend = resend
        self._clock = clock
        # a resolve never races a re-send of the same alert; re-entrant: a kind sending on the
        # submitting thread (tests, `eventd test`) may note what the service answered
        self._lock = threading.RLock()
        self._active = len(store.alert_list())
        metrics.alerts_active.set(self._active)

    @property
    def active(self) -> int:
        """How many alerts are firing."""
        return self._active

    def submit(self, job: ActionJob) -> object:
        """Hand a job on; an incident kind's job first fires or resolves its alert."""
        if job.kind != "alertmanager" and job.kind not in self._destinations:
            return self._submit(job)
        with self._lock:
            try:
                if not self._record(job, self._clock()):
                    return False
            except StoreError as exc:  # only while stopping: otherwise the calls wait
                log.warning("alert of rule %s not recorded: the store is unreachable while "
                            "stopping (%s)", job.rule, exc)
                return False
            return self._submit(job)

    def _stored(self, call: Callable[[], R], op: str) -> R:
        """`call()`, waiting for an unreachable store as spool_add does (when `stopping` is given)."""
        return call() if self._stopping is None else until_stored(call, self._stopping, op)

    def key(self, kind: str, options: Mapping[str, Any], labels: Mapping[str, str]) -> str:
        """The identity of the alert these options fire or resolve."""
        if kind == "alertmanager":
            return alert_key(str(options.get("url", "")), labels)
        return incident_key(kind, self._destinations[kind](options), labels)

    def note(self, key: str, notes: Mapping[str, Any]) -> bool:
        """Keep what the service answered (a message's channel and ts) with a firing alert, for
        its repeats and its resolve; False when it is no longer firing."""
        with self._lock:
            record = self._store.alert_take(key)
            if record is None:
                return False
            record["notes"] = {**(record.get("notes") or {}), **notes}
            self._store.alert_put(key, record)
            return True

    def notes(self, key: str) -> dict[str, Any]:
        """What `note()` kept for a firing alert ({} when none or not firing)."""
        with self._lock:
            for found, record in self._store.alert_list():
                if found == key:
                    return dict(record.get("notes") or {})
        return {}

    def _record(self, job: ActionJob, now: float) -> bool:
        """Fire or resolve the job's alert; False for a resolve of an alert that is not firing
        (nothing to send: eventd never fired it, or it expired and Alertmanager ends it)."""
        options = job.options
        labels = alert_labels(job.rule, options)
        key = self.key(job.kind, options, labels)
        earlier = self._stored(lambda: self._store.alert_take(key), "alert_take")
        job.context["incident_key"] = key
        if earlier is not None and earlier.get("notes"):
            job.context["notes"] = dict(earlier["notes"])
        if options.get("resolve") in (True, "true", "True"):
            if earlier is None:
                log.debug("alert %s %s is not firing: rule %s has nothing to resolve",
                          labels["alertname"], _short(labels), job.rule)
                self._metrics.actions.labels(kind=job.kind, outcome="skipped").inc()
                return False
            job.context["ends_at"] = now
            job.context["starts_at"] = earlier["starts_at"]
            log.info("alert %s %s resolved by rule %s", labels["alertname"], _short(labels),
                     job.rule)
            self._set(self._active - 1)
            return True
        try:
            expire = expire_seconds(options.get("expire"))
        except ConfigError as exc:
            log.warning("rule %s: %s; using the default %s s", job.rule, exc, DEFAULT_EXPIRE)
            expire = DEFAULT_EXPIRE
        starts = earlier["starts_at"] if earlier is not None else _event_time(job, now)
        resends = job.kind == "alertmanager"
        record: dict[str, Any] = {
            "rule": job.rule, "kind": job.kind, "options": options, "target": job.target,
            "starts_at": starts, "fired_at": now,
            "next_send": now + self.resend if resends else now + expire,
            "expires_at": now + expire,
            "event": {k: job.event[k] for k in _EVENT_FIELDS if k in job.event},
        }
        quiet = self._resolve_after(job)
        if quiet is not None:  # resolved by itself once it has not fired for this long
            record["resolve_at"] = now + quiet
            record["next_send"] = min(float(record["next_send"]), now + quiet)
        if earlier is not None and earlier.get("notes"):
            record["notes"] = earlier["notes"]
        self._stored(lambda: self._store.alert_put(key, record), "alert_put")
        job.context["starts_at"] = starts
        if earlier is not None:
            job.context["repeat"] = True
        job.context["ends_in"] = ENDS_AFTER_RESENDS * self.resend
        if earlier is None:
            log.info("alert %s %s firing (rule %s); re-sent every %.0f s until resolved or "
                     "%.0f s have passed", labels["alertname"], _short(labels), job.rule,
                     self.resend, expire)
        self._set(self._active + (earlier is None))
        return True

    def tick(self) -> int:
        """Re-send the alerts that are due and forget the expired ones; how many were sent."""
        sent = 0
        with self._lock:
            now = self._clock()
            for key, record in self._store.alert_list():
                if record.get("next_send", 0.0) > now:
                    continue
                if record.get("resolve_at", now + 1) <= now:
                    if self._store.alert_take(key) is not None:
                        self._submit(self._quiet_resolve_job(key, record, now))
                        sent += 1
                    continue
                if record.get("expires_at", now + 1) <= now:
                    self._store.alert_take(key)
                    labels = alert_labels(record["rule"], record["options"])
                    kind = str(record.get("kind", "alertmanager"))
                    log.warning("%s alert %s %s expired after %.0f s without a resolve; %s",
                                kind, labels["alertname"], _short(labels),
                                now - float(record.get("fired_at", now)),
                                "no longer re-sent (Alertmanager resolves it at its last endsAt)"
                                if kind == "alertmanager" else
                                "forgotten (it stays open at the service until someone closes it)")
                    continue
                if record.get("kind", "alertmanager") != "alertmanager":
                    record["next_send"] = min(record.get("expires_at", now + self.resend),
                                              record.get("resolve_at", float("inf")))
                    self._store.alert_put(key, record)  # not re-sent: only its expiry is due
                    continue
                record["next_send"] = min(now + self.resend,
                                          record.get("resolve_at", float("inf")))
                self._store.alert_put(key, record)
                self._submit(self._resend_job(key, record, now))
                sent += 1
            self._count()
        return sent

    @staticmethod
    def _resolve_after(job: ActionJob) -> float | None:
        """The `resolve_after` option in seconds (None: only a resolving rule resolves)."""
        value = job.options.get("resolve_after")
        if value is None or value == "":
            return None
        try:
            return parse_duration(value, "resolve_after")
        except ConfigError as exc:
            log.warning("rule %s: %s; it resolves only by a resolving rule", job.rule, exc)
            return None

    def _quiet_resolve_job(self, key: str, record: dict[str, Any], now: float) -> ActionJob:
        """The resolve of an alert that has not fired for `resolve_after`: the firing rule's
        own options (what the gate knows it can produce), resolving by its context."""
        labels = alert_labels(record["rule"], record["options"])
        log.info("%s alert %s %s resolved: it has not fired for %s (resolve_after)",
                 record.get("kind", "alertmanager"), labels["alertname"], _short(labels),
                 record["options"].get("resolve_after"))
        self._set(self._active - 1)
        ident = f"resolve\0{key}\0{record['starts_at']}"
        context: dict[str, Any] = {"starts_at": record["starts_at"], "ends_at": now,
                                   "incident_key": key, "auto_resolved": True}
        if record.get("notes"):
            context["notes"] = dict(record["notes"])
        return ActionJob(id=hashlib.blake2b(ident.encode(), digest_size=16).hexdigest(),
                         rule=record["rule"], kind=str(record.get("kind", "alertmanager")),
                         options=record["options"], event=record.get("event") or {},
                         target=record["target"], created_at=now, context=context)

    def _resend_job(self, key: str, record: dict[str, Any], now: float) -> ActionJob:
        # One id per alert: a re-send still waiting in the spool (Alertmanager down) is not
        # queued a second time.
        return ActionJob(id=hashlib.blake2b(f"resend\0{key}".encode(), digest_size=16).hexdigest(),
                         rule=record["rule"], kind="alertmanager", options=record["options"],
                         event=record.get("event") or {}, target=record["target"], created_at=now,
                         context={"starts_at": record["starts_at"],
                                  "ends_in": ENDS_AFTER_RESENDS * self.resend, "resend": True})

    def _count(self) -> None:
        """Count from the store (another process sharing it may have fired or resolved)."""
        self._set(len(self._store.alert_list()))

    def _set(self, active: int) -> None:
        self._active = max(0, active)
        self._metrics.alerts_active.set(self._active)


def _event_time(job: ActionJob, default: float) -> float:
    when = parse_datetime(job.event.get("datetime"))
    return when if when is not None else default


def _short(labels: Mapping[str, str]) -> str:
    """The labels other than alertname, for a log line."""
    rest = {k: v for k, v in labels.items() if k != "alertname"}
    return json.dumps(rest, sort_keys=True) if rest else "{}"
