"""The soak's verdict: what should have arrived, what did, and which promise broke.

Expectation: one webhook per (target, event) for every event the stream sent whose type and
state match that target's rules. Sends that eventd cannot have accepted are not required:
those on a connection in its last 2 s before eventd was SIGKILLed (read, maybe, but not yet
in the spool); if such an event arrives anyway, fine. The promises:
- nothing lost: every required webhook got a 2xx;
- nothing repeated under a new key: one `Idempotency-Key` per (target, event) among the 2xx
  (repeats under the same key are allowed and counted);
- on time: each webhook's first 2xx came no later than 65 s plus the length of every fault that
  touched its target (receiver faults of that target, eventd down) during its wait.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from soak_receiver import Hit
from soak_stream import Send

GRACE = 65.0
KILL_WINDOW = 2.0


@dataclass
class Fault:
    """One injected fault: its kind, the target it hit (None: the daemon or stream), when."""

    kind: str
    target: str | None
    start: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: For scripted answers: how long they last against a client that does what the issue
    #: asks (waits exactly Retry-After; probes 1 s, 2 s, 4 s ... 60 s apart). A client that
    #: takes longer to use them up does not get the extra time as an excuse.
    nominal: float | None = None

    def length(self, now: float) -> float:
        return (self.end if self.end is not None else now) - self.start

    def excuse(self, now: float) -> float:
        """The seconds this fault may delay a delivery (beyond the 65 s grace)."""
        length = self.length(now)
        return length if self.nominal is None else min(length, self.nominal)


def target_a(kind: str, state: str) -> bool:
    """Rules soak-a-*: every container event, and actions that failed."""
    return kind == "container" or (kind == "action" and state == "Failed")


def target_b(kind: str, state: str) -> bool:
    """Rule soak-b: services and actions."""
    return kind in ("service", "action")


MATCHERS: dict[str, Callable[[str, str], bool]] = {"a": target_a, "b": target_b}


def required_sends(sends: Iterable[Send], kills: list[tuple[float, int | None]]
                   ) -> tuple[dict[str, Send], set[str]]:
    """First certain send per uuid, and uuids only ever sent where a SIGKILL could eat them."""
    doomed = {conn: t for t, conn in kills if conn is not None}
    certain: dict[str, Send] = {}
    uncertain: set[str] = set()
    for s in sends:
        kill_t = doomed.get(s.conn)
        if kill_t is not None and s.t >= kill_t - KILL_WINDOW:
            uncertain.add(s.uuid)
        elif s.uuid not in certain:
            certain[s.uuid] = s
    return certain, uncertain - set(certain)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))]


def check(sends: list[Send], hits: dict[str, list[Hit]], faults: list[Fault],
          kills: list[tuple[float, int | None]], now: float) -> dict[str, Any]:
    """Every figure of the summary, and `broken`: the promises that did not hold."""
    certain, uncertain = required_sends(sends, kills)
    kinds = {s.uuid: (s.kind, s.state) for s in sends}
    out: dict[str, Any] = {"events_sent": len(kinds), "sends": len(sends),
                           "events_uncertain_at_kill": len(uncertain), "targets": {}}
    broken: list[str] = []
    for name, hit_list in sorted(hits.items()):
        match = MATCHERS[name]
        first: dict[str, Hit] = {}
        keys: dict[str, set[str]] = {}
        repeats = 0
        statuses: dict[int, int] = {}
        for h in hit_list:
            statuses[h.status] = statuses.get(h.status, 0) + 1
            if h.status >= 300:
                continue
            seen = keys.setdefault(h.uuid, set())
            if h.key in seen:
                repeats += 1
            seen.add(h.key)
            first.setdefault(h.uuid, h)
        expected = [s for s in certain.values() if match(s.kind, s.state)]
        lost = [s for s in expected if s.uuid not in first]
        new_keys = sorted(u for u, k in keys.items() if len(k) > 1)
        unexpected = [u for u in first if u not in kinds or not match(*kinds[u])]
        relevant = [f for f in faults if f.target in (None, name) and f.kind in
                    ("sigkill", "down", "503", "429")]
        late = []
        latencies = []
        for s in expected:
            h = first.get(s.uuid)
            if h is None:
                continue
            wait = h.t - s.t
            latencies.append(wait)
            allowed = GRACE + sum(f.excuse(now) for f in relevant
                                  if f.start <= h.t and (f.end or now) >= s.t)
            if wait > allowed:
                late.append({"uuid": s.uuid, "sent": s.t, "waited": round(wait, 1),
                             "allowed": round(allowed, 1)})
        arrivals = sorted(h.t for h in first.values())
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        out["targets"][name] = {
            "expected": len(expected), "delivered": len(expected) - len(lost),
            "lost": len(lost), "lost_examples": [s.uuid for s in lost[:5]],
            "requests": len(hit_list), "statuses": statuses,
            "repeats_same_key": repeats, "new_key_repeats": len(new_keys),
            "unexpected": len(unexpected), "unexpected_examples": unexpected[:5],
            "late": len(late), "late_examples": late[:5],
            "latency_p50_s": pct(latencies, 50), "latency_p99_s": pct(latencies, 99),
            "latency_max_s": max(latencies) if latencies else None,
            "max_gap_s": max(gaps) if gaps else None,
            "late_uncertain_delivered": sum(1 for u in uncertain
                                            if u in first and match(*kinds[u])),
        }
        if lost:
            broken.append(f"{name}: {len(lost)} of {len(expected)} webhooks lost")
        if new_keys:
            broken.append(f"{name}: {len(new_keys)} events delivered under more than one key")
        if late:
            broken.append(f"{name}: {len(late)} webhooks later than their faults + {GRACE:.0f} s "
                          f"(worst waited {max(x['waited'] for x in late)} s)")
    out["broken"] = broken
    return out


def healthy_p99_during_outages(hits: dict[str, list[Hit]], sends: list[Send],
                               faults: list[Fault], now: float) -> list[dict[str, Any]]:
    """For each receiver down for 60 s or more: the other target's p99 latency meanwhile."""
    sent: dict[str, float] = {}
    for s in sends:
        sent.setdefault(s.uuid, s.t)
    rows = []
    for f in faults:
        if f.kind != "down" or f.length(now) < 60:
            continue
        end = f.end or now
        for name, hit_list in hits.items():
            if name == f.target:
                continue
            waits = [h.t - sent[h.uuid] for h in hit_list
                     if h.status < 300 and f.start <= h.t <= end and h.uuid in sent]
            rows.append({"down": f.target, "seconds": round(f.length(now)), "other": name,
                         "webhooks": len(waits), "p99_s": pct(waits, 99),
                         "median_s": statistics.median(waits) if waits else None})
    return rows
