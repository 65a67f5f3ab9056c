"""The checker: properties of a run read from its history, each with a verdict and the worst case.

It asserts no scenario; it reads what the servers saw (the emulator's connection log and
REST calls, the receiver's requests, Redis' commands, the store after the run) and checks:

1. single consumer: per namespace, the intervals in which a stream connection was alive never
   overlap across hosts. A connection is alive from its opening until it closed, or, when the
   emulator's keepalive ended it (no pong), until its last pong: a stopped or cut-off client
   stops answering at once, the server only notices later.
2. gaps announced: every interval without a consumer is followed by a gap event (the
   `connected` event with `gap_seconds`, forwarded to the receiver) whose announced gap
   covers it, and by a backfill (GET of the action list since no later than the gap's start);
   no gap is longer than the lease TTL + 5 s. Here a connection the keepalive ended was alive
   until its last pong or, if later, the last event its replica read off it and accepted (a
   reader held up in its sink answers no ping, then reads what the socket kept).
3. events lost only in gaps: an emitted event whose action was never accepted lies inside an
   announced gap.
4. accepted delivered: every job accepted in the spool (Redis ran its HSET on the primary
   Sentinel named, and a replica had its copy: what `spool_add`'s WAIT waits for) reached its
   server (the receiver answered 2xx with its Idempotency-Key; the emulator answered its REST
   call).
5. order: per target and namespace, first deliveries follow acceptance order: when Redis ran
   the accepting script (the spool's seq orders jobs accepted in the same second); repeats of
   a key are counted (a receiver drops them by key), not failed. Not the seq alone: a
   failover or a restart that loses the primary's last writes hands the same seq numbers out
   again, and a job accepted (and delivered) before it may carry a higher seq than one
   accepted after it (chaos seed 11, t+77: seq 6778 accepted and sent at t+65.8 on redis2,
   seq 6777 accepted at t+77.1 on redis1 after a failover). A job delivered before any
   acceptance MONITOR saw (its first write unseen as a feed went blind) is judged only where
   the bounds of its acceptance, its event and that delivery, decide.
6. no request without the lease: a write made for a namespace's job by a replica that is not
   that namespace's lease holder when the server receives it: `stale` (a newer token was
   issued: a fencing server would refuse it), `expired` (its lease ended, no newer holder) or
   `unleased` (it never held it). A request the server refused (409) for its stale fencing
   token made no write: counted as `refused`, not a violation. Who held a lease is read off
   the server Sentinel named primary then (as for acceptance): a lease written on a restarted
   old primary, before Sentinel demotes it, is nobody's.

Violations are attributed to the fault active when they happened (or that ended within the
settle time before), so figures come per fault kind.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventd.engine import job_id
from tests.chaos.history import History
from tests.chaos.reading import (
    ACTIONS_PATH,
    FORWARD,
    RESTART,
    Faults,
    Jobs,
    alive_intervals,
    find_gaps,
    gap_events,
    holder_host,
    iso_seconds,
    job_writes,
    lease_timeline,
    primary_at,
    replica_hosts,
    shown_from,
)


@dataclass
class Violation:
    """One bad thing, when it happened, the fault it is attributed to, and the evidence."""

    at: float
    what: str
    size: float = 0.0  # seconds (overlap, gap, lateness) where it applies
    fault: str = "none"

    def line(self, origin: float) -> str:
        size = f" ({self.size * 1000:.0f} ms)" if self.size else ""
        return f"t+{self.at - origin:7.2f}s [{self.fault}] {self.what}{size}"


@dataclass
class Verdict:
    """One property: held or not, its figures, its violations (worst first)."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: figures per fault kind beyond the violations' (events lost in gaps, say)
    by_fault: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def worst(self) -> Violation | None:
        return max(self.violations, key=lambda v: (v.size, -v.at), default=None)


@dataclass
class Report:
    """Every property's verdict over one history (or one window of it)."""

    verdicts: list[Verdict]
    origin: float
    per_fault: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)

    def failed(self) -> list[str]:
        return [v.name for v in self.verdicts if not v.ok]

    def format(self, limit: int = 8) -> str:
        """A verdict per property, its figures, the worst case and the first violations."""
        lines = []
        for verdict in self.verdicts:
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in verdict.figures.items())
            lines.append(f"{'PASS' if verdict.ok else 'FAIL'} {verdict.name}: {figures}")
            worst = verdict.worst()
            if worst is not None:
                lines.append(f"     worst: {worst.line(self.origin)}")
                for violation in sorted(verdict.violations, key=lambda v: v.at)[:limit]:
                    lines.append(f"     - {violation.line(self.origin)}")
                if len(verdict.violations) > limit:
                    lines.append(f"     ... {len(verdict.violations) - limit} more")
            lines.extend(f"     note: {note}" for note in verdict.notes)
        if self.per_fault:
            lines.append("per fault kind:")
            for kind, figures in sorted(self.per_fault.items()):
                lines.append(f"  {kind}: " + ", ".join(f"{k}={_fmt(v)}"
                                                        for k, v in sorted(figures.items())))
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# -- the properties -----------------------------------------------------------------------------
def check(history: History) -> Report:
    """Every property over `history` (restricted to its window, when it has one)."""
    meta = history.meta
    ttl = float(meta.get("ttl", 10.0))
    window = meta.get("window") or [meta.get("started", 0.0), meta.get("ended", float("inf"))]
    # A fault's effects can come late: Sentinel demotes a returning old primary ~10 s after.
    faults = Faults(history.faults, settle=2 * ttl + 10)
    origin = shown_from(history)
    jobs = Jobs(history)
    verdicts = [
        single_consumer(history, faults),
        gaps_announced(history, faults, ttl, window, jobs),
        events_lost(history, faults, jobs),
        accepted_delivered(history, faults, jobs, window),
        delivery_order(history, faults, jobs),
        no_request_without_lease(history, faults, ttl, jobs),
        tokens_increase(history, faults),
    ]
    per_fault: dict[str, dict[str, float]] = defaultdict(dict)
    for verdict in verdicts:
        for violation in verdict.violations:
            figures = per_fault[violation.fault]
            key = f"{verdict.name}"
            figures[key] = figures.get(key, 0) + 1
            if violation.size:
                worst = f"{verdict.name} max s"
                figures[worst] = max(figures.get(worst, 0.0), violation.size)
    for kind, figures in gap_figures(history, faults, jobs).items():
        per_fault[kind].update(figures)
    for verdict in verdicts:
        for kind, figures in verdict.by_fault.items():
            per_fault[kind].update(figures)
    return Report(verdicts, origin, dict(per_fault))


def single_consumer(history: History, faults: Faults) -> Verdict:
    verdict = Verdict("single consumer")
    longest, same_host = 0.0, 0
    for namespace, intervals in alive_intervals(history).items():
        for i, (host, _start, end) in enumerate(intervals):
            for other_host, other_start, other_end in intervals[i + 1:]:
                if other_start >= end:
                    break
                overlap = min(end, other_end) - other_start
                if overlap <= 0:
                    continue
                if other_host == host:
                    same_host += 1
                    continue
                longest = max(longest, overlap)
                zero = shown_from(history)
                verdict.violations.append(Violation(
                    other_start, f"{namespace}: {host} alive until t+{end - zero:.2f}s while "
                                 f"{other_host} consumed from t+{other_start - zero:.2f}s",
                    overlap, faults.at(other_start)))
    verdict.figures = {"longest_overlap_s": longest, "overlaps": len(verdict.violations),
                       "connections": len(history.connections)}
    if same_host:
        verdict.notes.append(f"{same_host} reconnect(s) opened while the server still counted "
                             "the same host's old connection alive (not two consumers)")
    return verdict


def gaps_announced(history: History, faults: Faults, ttl: float, window: list[float],
                   jobs: Jobs) -> Verdict:
    verdict = Verdict("gaps announced")
    announced = gap_events(history, jobs)
    backfills = [(c["at"], iso_seconds(c["query"].get("start_date__gte", "")))
                 for c in history.rest_calls
                 if c["method"] == "GET" and c["path"] == ACTIONS_PATH
                 and "start_date__gte" in c["query"]]
    # A gap's start is the last pong the server had: the client was lost within one ping
    # interval after it. The backfill's date filter has whole seconds.
    interval = float((history.meta.get("keepalive") or [0.5])[0])
    tolerance = interval + 0.1
    gaps = find_gaps(history, window, jobs)
    longest = 0.0
    for namespace, start, end in gaps:
        length = end - start
        longest = max(longest, length)
        open_ended = end >= window[1] - 1.0
        fault = faults.at(start)
        if open_ended:
            verdict.violations.append(Violation(
                start, f"{namespace}: no consumer from here to the end of the run", length, fault))
            continue
        if not any(a_from <= start + tolerance and a_to >= end for a_from, a_to
                   in announced.get(namespace, [])):
            verdict.violations.append(Violation(
                start, f"{namespace}: gap of {length:.2f} s without a gap event covering it",
                length, fault))
        if not any(at >= end - 0.5 and since is not None and since <= start + tolerance + 1.0
                   for at, since in backfills):
            verdict.violations.append(Violation(
                start, f"{namespace}: gap of {length:.2f} s never backfilled", length, fault))
        if length > ttl + 5:
            verdict.violations.append(Violation(
                start, f"{namespace}: gap of {length:.2f} s, longer than the lease TTL + 5 s",
                length, fault))
    verdict.figures = {"gaps": len(gaps), "longest_gap_s": longest,
                       "gap_events": sum(len(v) for v in announced.values()),
                       "backfills": len(backfills)}
    return verdict


def gap_figures(history: History, faults: Faults, jobs: Jobs) -> dict[str, dict[str, float]]:
    """Longest gap per fault kind."""
    window = history.meta.get("window") or [history.meta.get("started", 0.0),
                                            history.meta.get("ended", float("inf"))]
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for _namespace, start, end in find_gaps(history, window, jobs):
        kind = faults.at(start)
        out[kind]["longest gap s"] = max(out[kind].get("longest gap s", 0.0), end - start)
    return out


def events_lost(history: History, faults: Faults, jobs: Jobs) -> Verdict:
    verdict = Verdict("events lost only in gaps")
    announced = gap_events(history, jobs)
    lost = 0
    for event in history.emitted:
        forward = job_id(FORWARD, {"uuid": event["uuid"], "resource_uri": event["uri"]}, 0)
        if forward in jobs.accepted or forward in jobs.delivered:
            continue
        lost += 1
        kind = faults.at(event["at"])
        counts = verdict.by_fault.setdefault(kind, {})
        counts["events lost"] = counts.get("events lost", 0) + 1
        if not any(a_from - 0.1 <= event["at"] <= a_to + 0.1 for a_from, a_to
                   in announced.get(event["ns"], [])):
            verdict.violations.append(Violation(
                event["at"], f"{event['ns']}: event {event['uuid'][:8]} never accepted and in no "
                             "announced gap", 0.0, faults.at(event["at"])))
    verdict.figures = {"emitted": len(history.emitted), "lost_in_gaps": lost - len(verdict.violations),
                       "lost_unannounced": len(verdict.violations)}
    return verdict


def accepted_delivered(history: History, faults: Faults, jobs: Jobs, window: list[float]) -> Verdict:
    verdict = Verdict("accepted delivered")
    left = set(history.store.get("spool") or [])
    dead = history.store.get("dead") or {}
    accepted = {job: at for job, at in jobs.accepted.items() if window[0] <= at <= window[1]}
    delivered = dead_answered = 0
    for job, at in sorted(accepted.items(), key=lambda item: item[1]):
        if job in jobs.delivered:
            delivered += 1
            if job in dead:
                dead_answered += 1
            continue
        rule = jobs.rule_of.get(job, "gap or backfill")
        where = ("left in the spool" if job in left else
                 f"dead-lettered: {str(dead[job])[:120]}" if job in dead else
                 "gone from the store, never received")
        verdict.violations.append(Violation(at, f"job {job[:8]} ({rule}) accepted, not delivered: "
                                                f"{where}", 0.0, faults.at(at)))
    ghosts = sorted(job for job in left if job in jobs.delivered)
    verdict.figures = {"accepted": len(accepted), "delivered": delivered,
                       "lost": len(verdict.violations), "answered_then_dead": dead_answered,
                       "delivered_but_still_spooled": len(ghosts)}
    if ghosts:
        verdict.notes.append(f"{len(ghosts)} delivered job(s) still in the spool after the "
                             "drain (their removal was lost): the next takeover sends them again")
    if jobs.unacknowledged:
        verdict.notes.append(f"{len(jobs.unacknowledged)} job(s) written on the primary that no "
                             "replica received (WAIT never acknowledged them): not accepted")
    unnamed = jobs.unnamed - set(jobs.accepted)
    if unnamed:
        verdict.notes.append(f"{len(unnamed)} job(s) written only on a server Sentinel did not "
                             "name primary then (a restarted old primary): not accepted")
    if history.store.get("blind"):
        blind = sum(b[2] - b[1] for b in history.store["blind"])
        verdict.notes.append(f"MONITOR was blind {blind:.2f} s in all (Redis restarts): a job "
                             "accepted then is not known as accepted")
    return verdict


def delivery_order(history: History, faults: Faults, jobs: Jobs) -> Verdict:
    """First deliveries against acceptance order. A job first delivered before the first
    acceptance MONITOR saw was accepted unseen (its script ran as a feed went blind: a Redis
    killed before its last records reached the recorder) and seen again when its replica
    retried (main 7bc92d3, 10 minutes, t+96: r3's write on redis2 just before its restart,
    delivered by r1 from the restarted redis2 at t+92.8, written again on redis1 at t+94.7;
    the 57 jobs r1 accepted at t+93.3 and sent at t+96.4 were called late). Its acceptance
    is known only to lie between its event and that delivery: it is late only behind a job
    accepted after that delivery, and a job sent after it is late only if accepted before
    its event."""
    verdict = Verdict("per-target order")
    # (first delivery, acceptance at the earliest, acceptance at the latest, job)
    firsts: dict[tuple[str, str], list[tuple[float, tuple[float, int], tuple[float, int],
                                             str]]] = defaultdict(list)
    repeats = worst_repeat = unseen = 0
    for job, deliveries in jobs.delivered.items():
        if job not in jobs.judged:
            continue
        if len(deliveries) > 1:
            repeats += len(deliveries) - 1
            worst_repeat = max(worst_repeat, len(deliveries))
        seq = jobs.seq.get(job)
        event = jobs.event_of.get(job)
        if seq is None or event is None:
            continue
        first = min(deliveries, key=lambda d: d["at"])
        target = "dockercloud" if jobs.rule_of.get(job) == RESTART else "webhook"
        latest = (jobs.accepted[job], seq)
        earliest = latest
        if first["at"] < jobs.accepted[job]:
            unseen += 1
            earliest, latest = (event["at"], -1), (first["at"], seq)
        firsts[(target, event["ns"])].append((first["at"], earliest, latest, job))
    for (target, namespace), arrivals in firsts.items():
        arrivals.sort()
        highest = (float("-inf"), -1)
        for at, earliest, latest, job in arrivals:
            if latest < highest:
                verdict.violations.append(Violation(
                    at, f"{target}/{namespace}: job {job[:8]} (seq {latest[1]}, accepted "
                        f"{highest[0] - latest[0]:.3f} s before) arrived after seq "
                        f"{highest[1]}", 0.0, faults.at(at)))
            highest = max(highest, earliest)
    reaccepted = sum(n - 1 for job, n in jobs.acceptances.items() if job in jobs.judged)
    verdict.figures = {"repeated_deliveries": repeats, "most_copies_of_one_key": worst_repeat,
                       "reaccepted": reaccepted, "out_of_order": len(verdict.violations)}
    if unseen:
        verdict.notes.append(f"{unseen} job(s) delivered before the first acceptance MONITOR "
                             "saw (written as a feed went blind): ordered by what bounds it")
    if reaccepted:
        verdict.notes.append(f"{reaccepted} job(s) accepted again after they had left the "
                             "spool (a repeated spool_add): each is delivered again")
    return verdict


def no_request_without_lease(history: History, faults: Faults, ttl: float,
                             jobs: Jobs) -> Verdict:
    verdict = Verdict("no request without the lease")
    timeline = lease_timeline(history.redis, ttl, primary_at(history.primaries))
    by_pid = replica_hosts(history)
    counts = {"stale": 0, "expired": 0, "own_job": 0, "taken_over": 0, "leftover": 0,
              "refused": 0}
    writes = 0
    for request in job_writes(history, jobs):
        job, namespace, host, at = request["job"], request["ns"], request["host"], request["at"]
        if job is not None and job not in jobs.judged:
            counts["leftover"] += 1
            continue
        if request.get("refused"):  # the server fenced it off (409 to a stale token)
            counts["refused"] += 1
            continue
        writes += 1
        tenures = [t for t in timeline.get(namespace, []) if t.start <= at]
        current = next((t for t in reversed(tenures) if t.end >= at), None)
        if current is not None and holder_host(current.holder, by_pid) == host:
            continue
        mine = [t for t in tenures if holder_host(t.holder, by_pid) == host]
        kind = "stale" if current is not None else "expired"
        acceptor = jobs.acceptor.get(job or "", "?")
        cause = "own_job" if acceptor == host else "taken_over"
        counts[kind] += 1
        counts[cause] += 1
        # How late, for its own job: since its lease ended (a taken-over job has no such time).
        late = at - mine[-1].end if cause == "own_job" and mine else 0.0
        held = f"its lease (token {mine[-1].token}) ended {mine[-1].how}" if mine \
            else "it never held the lease"
        newer = (f"; token {current.token} is {holder_host(current.holder, by_pid)}'s"
                 if current is not None else "; nobody holds it")
        whose = "its own job" if cause == "own_job" else f"a job {acceptor} accepted"
        verdict.violations.append(Violation(
            at, f"{kind}: {namespace}: {host} sent {request['what']} ({whose}) after {held}"
                f"{newer}", max(0.0, late), faults.at(at)))
    verdict.figures = {"writes": writes, **counts}
    fences = history.meta.get("fences") or {}
    if fences:
        verdict.notes.append("fencing tokens seen by the servers: " + json.dumps(fences))
    return verdict


def tokens_increase(history: History, faults: Faults) -> Verdict:
    """Each new lease of a namespace gets a larger token than every lease before it (else a
    fencing token cannot tell the holders apart: a failover can hand one number out twice)."""
    verdict = Verdict("tokens increase")
    window = history.meta.get("window") or [float("-inf"), float("inf")]
    highest: dict[str, tuple[int, str]] = {}
    issued = 0
    for record in sorted(history.redis, key=lambda r: r["at"]):
        if not record["key"].startswith("cluster:lease:") or record["op"] != "SET":
            continue
        namespace = record["key"].rpartition(":")[2]
        holder, _, text = record["args"][0].rpartition(":")
        token = int(text) if text.isdigit() else -1
        before = highest.get(namespace)
        if record["at"] >= window[0]:
            issued += 1
            if before is not None and token <= before[0]:
                verdict.violations.append(Violation(
                    record["at"], f"{namespace}: token {token} given to {holder} on "
                                  f"{record['server']} after token {before[0]} ({before[1]})",
                    0.0, faults.at(record["at"])))
        if before is None or token > before[0]:
            highest[namespace] = (token, f"{holder} on {record['server']}")
    verdict.figures = {"leases_given": issued, "reused_or_lower": len(verdict.violations)}
    return verdict


def main(argv: list[str]) -> int:
    """`python -m tests.chaos.checker DIR`: check a saved history again."""
    if len(argv) != 1:
        print("usage: python -m tests.chaos.checker HISTORY_DIR", file=sys.stderr)
        return 2
    report = check(History.load(Path(argv[0])))
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
