"""Facts the checker reads off a history: lease tenures, alive connections, gaps, the jobs.

Everything here is derived from what the servers recorded (see `history`): which replica held
which namespace's lease when (from Redis' own commands), when a stream connection was alive
(the keepalive's pongs), which job each request or REST call was for and who accepted it.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from eventd.engine import job_id
from tests.chaos.history import History

#: the rules the run loads (tests/chaos/run.py writes them): name -> what its jobs are
FORWARD, RESTART, GAP = "forward", "restart", "gap"
ACTIONS_PATH = "/api/audit/v1/action/"
#: how much later than its client the emulator may date a stream connection's opening: its
#: handler runs once the handshake is answered, when its event loop gets to it, and the client
#: may have made and accepted its gap event by then (chaos seed 1, 10 minutes, t+395.86: r1
#: accepted umbrella's gap event 10 ms before the emulator dated the connection it announced,
#: and the gap was taken for the previous connection's, 98 events lost "unannounced")
OPENED_LATE = 0.5
#: how long after a spool write its copy may reach a replica: a replica's MONITOR blind then
#: may have missed it (eventd's WAIT gives up after 1 s; a late copy still counts)
UNSEEN_COPY = 5.0


@dataclass
class Tenure:
    """One holder's lease on a namespace's stream as Redis saw it."""

    holder: str  # replica id
    token: int
    start: float
    end: float  # expiry, release, or the next holder's SET, whichever came first
    how: str = "expired"


def lease_timeline(redis_records: list[dict[str, Any]], default_ttl: float = 10.0,
                   named: Callable[[float], set[str]] | None = None,
                   ) -> dict[str, list[Tenure]]:
    """Per namespace, the tenures in order, from the lease scripts' SET/PEXPIRE/DEL. With
    `named` (`primary_at`), only the writes on a server Sentinel named primary then: a
    restarted old primary is a second one until Sentinel demotes it, and a lease set or
    renewed there is one no replica can see on the named primary (nor will keep: the resync
    flushes it), as the acceptance of a job (`Jobs`) is judged."""
    timeline: dict[str, list[Tenure]] = defaultdict(list)
    for record in sorted(redis_records, key=lambda r: r["at"]):
        key = record["key"]
        if not key.startswith("cluster:lease:"):
            continue
        if named is not None and "server" in record \
                and record["server"] not in (named(record["at"]) or {record["server"]}):
            continue
        namespace, at, op, args = key.rpartition(":")[2], record["at"], record["op"], record["args"]
        tenures = timeline[namespace]
        current = tenures[-1] if tenures and tenures[-1].end > at else None
        if op == "SET" and args:
            holder, _, token = args[0].rpartition(":")
            ttl = float(args[1]) / 1000 if len(args) > 1 and args[1].isdigit() else default_ttl
            if current is not None:
                current.end, current.how = at, "replaced"
            tenures.append(Tenure(holder, int(token) if token.isdigit() else -1, at,
                                  at + ttl))
        elif op == "PEXPIRE" and args and tenures and tenures[-1].how == "expired":
            # The lease scripts PEXPIRE only a key that still holds the caller's own value
            # (they GET it first): the last tenure went on, even where its modelled end passed
            # a moment before (MONITOR stamps a script's inner commands after Redis judged the
            # key's expiry: a renewal 1 ms "late" was counted as an expiry, and every request
            # of the holder after it as made without the lease).
            tenures[-1].end = at + float(args[0]) / 1000
        elif op == "DEL" and current is not None:
            current.end, current.how = at, "released"
    return dict(timeline)


def replica_hosts(history: History) -> dict[str, str]:
    """Replica id (`<hostname>-<pid>-<random>`) prefix by pid -> host role."""
    return {str(p["pid"]): p["host"] for p in history.processes}


def holder_host(holder: str, by_pid: dict[str, str]) -> str:
    parts = holder.rsplit("-", 2)
    return by_pid.get(parts[1], f"?{holder}") if len(parts) == 3 else f"?{holder}"


def iso_seconds(value: str) -> float | None:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def alive_intervals(history: History, read: dict[tuple[str, str], list[float]] | None = None,
                    ) -> dict[str, list[tuple[str, float, float]]]:
    """Per namespace, (host, from, to) in which a stream connection was alive. `read`: per
    (namespace, host), when the events its host read off a connection were sent (sorted):
    one the keepalive ended was alive until its last pong, or its last such event if later
    (a reader held up in its sink answers no ping, then reads what the socket kept)."""
    end_of_run = history.meta.get("ended") or max(
        (c["closed"] or c["opened"] for c in history.connections), default=0.0)
    out: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for conn in history.connections:
        closed = conn["closed"] if conn["closed"] is not None else end_of_run
        if conn.get("ended") == "keepalive":
            alive = max(conn["opened"], conn.get("last_pong") or conn["opened"])
            sent = (read or {}).get((conn["ns"], conn["host"]), [])
            last = bisect.bisect_right(sent, closed) - 1
            closed = max(alive, sent[last]) if last >= 0 and sent[last] >= conn["opened"] \
                else alive
        out[conn["ns"]].append((conn["host"], conn["opened"], closed))
    for intervals in out.values():
        intervals.sort(key=lambda i: i[1])
    return out


class Faults:
    """Which fault a moment belongs to: the latest one begun before it that was active then,
    or ended within `settle` seconds before. A slow receiver is a condition, not a cause: it
    is named only when no other fault is."""

    CONDITIONS = frozenset({"slow-receiver"})

    def __init__(self, faults: list[dict[str, Any]], settle: float) -> None:
        self.faults = sorted(faults, key=lambda f: f["start"])
        self.settle = settle

    def at(self, moment: float) -> str:
        found, condition = "none", None
        for fault in self.faults:
            end = fault["end"] if fault["end"] is not None else float("inf")
            if fault["start"] <= moment <= end + self.settle:
                if fault["kind"] in self.CONDITIONS:
                    condition = fault["kind"]
                else:
                    found = fault["kind"]
        return condition if found == "none" and condition else found


def shown_from(history: History) -> float:
    """The moment times are shown from (t+...): the window's start, else the run's."""
    window = history.meta.get("window")
    return float(window[0] if window else history.meta.get("started") or 0.0)


def find_gaps(history: History, window: list[float], jobs: Jobs | None = None,
              ) -> list[tuple[str, float, float]]:
    """(namespace, start, end) of every interval without an alive consumer, after the first
    consumer of the window; a namespace left unconsumed at the end gives a gap to the end.
    With `jobs`, a connection was alive as long as its host read events off it (`read_off`)."""
    gaps = []
    end_of_window = window[1]
    read = read_off(history, jobs) if jobs is not None else None
    for namespace, intervals in alive_intervals(history, read).items():
        reach = None
        for _host, start, end in intervals:
            if reach is not None and start > reach:
                gaps.append((namespace, reach, start))
            reach = end if reach is None else max(reach, end)
        if reach is not None and reach < end_of_window - 1.0 and end_of_window != float("inf"):
            gaps.append((namespace, reach, end_of_window))
    return [g for g in gaps if g[2] >= window[0]]


def read_off(history: History, jobs: Jobs) -> dict[tuple[str, str], list[float]]:
    """Per (namespace, host), when each emitted event was sent whose forward job that host
    accepted first (sorted): the events it read off its stream (a backfilled copy has
    another uuid, so another job)."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in history.emitted:
        forward = job_id(FORWARD, {"uuid": event["uuid"], "resource_uri": event["uri"]}, 0)
        host = jobs.acceptor.get(forward)
        if host is not None:
            out[(event["ns"], host)].append(event["at"])
    for times in out.values():
        times.sort()
    return dict(out)


def gap_events(history: History, jobs: Jobs) -> dict[str, list[tuple[float, float]]]:
    """Per namespace, the (from, to) each forwarded gap event announced.

    A gap event is made when its consumer connects, so it announces [opened - gap, opened]
    of the connection its acceptor opened last before accepting it, among those opened in the
    second its `datetime` names (whole seconds only; it may be accepted and reach the receiver
    late, behind other deliveries and after the replica's next connection)."""
    opened: dict[tuple[str, str], list[float]] = defaultdict(list)
    for conn in history.connections:
        opened[(conn["host"], conn["ns"])].append(conn["opened"])
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for request in history.requests:
        if request["path"] != "/gap" or request.get("gap") in (None, "", "None"):
            continue
        try:
            gap = float(request["gap"])
        except (TypeError, ValueError):
            continue
        accepted = jobs.accepted.get(request.get("key") or "", request["at"])
        acceptor = jobs.acceptor.get(request.get("key") or "", request["host"])
        candidates = [at for at in opened.get((acceptor, request["ns"]), [])
                      if at <= accepted + OPENED_LATE]
        # A gap job held up in a stalled spool is accepted after its replica's next
        # connection opened: the event's own whole-second `datetime` names its connection.
        stamped = iso_seconds(request.get("datetime") or "")
        if stamped is not None:
            candidates = [at for at in candidates if stamped - 0.5 <= at < stamped + 1.0] \
                or candidates
        made = max(candidates) if candidates else request["at"]
        out[request["ns"]].append((made - gap, made))
    return out


class Jobs:
    """The jobs the run's rules make: which event each id is for, and which were accepted."""

    def __init__(self, history: History) -> None:
        self.event_of: dict[str, dict[str, Any]] = {}  # job id -> emitted event
        self.rule_of: dict[str, str] = {}
        self.rest_path: dict[str, str] = {}  # REST job id -> the path its call uses
        for event in history.emitted:
            shaped = {"uuid": event["uuid"], "resource_uri": event["uri"]}
            forward = job_id(FORWARD, shaped, 0)
            self.event_of[forward], self.rule_of[forward] = event, FORWARD
            if event["state"] == "Stopped":
                restart = job_id(RESTART, shaped, 0)
                self.event_of[restart], self.rule_of[restart] = event, RESTART
                self.rest_path[restart] = event["uri"].rstrip("/") + "/start/"
        self.accepted: dict[str, float] = {}  # id -> when first accepted
        self.acceptor: dict[str, str] = {}  # id -> the host whose script accepted it
        self.acceptances: dict[str, int] = defaultdict(int)  # id -> times (re)accepted
        self.seq: dict[str, int] = {}
        self.target: dict[str, str] = {}
        #: jobs written on a server Sentinel did not name primary then (a restarted old primary
        #: is a second one until Sentinel demotes it): no acceptance, since `spool_add` returns
        #: only once a replica of the primary Sentinel names has the job
        self.unnamed: set[str] = set()
        #: jobs written on the named primary that no replica ever had, and never delivered:
        #: the primary's WAIT never acknowledged them, so `spool_add` did not return (its
        #: replica tried again, or dropped the event into the gap the stream's next holder
        #: announced); see `_unacknowledged`
        self.unacknowledged: set[str] = set()
        named = primary_at(history.primaries)
        copies: dict[str, list[float]] = defaultdict(list)  # job id -> when a replica had it
        writes: dict[str, list[tuple[str, float]]] = defaultdict(list)  # id -> (server, at)
        for record in history.redis:
            if record.get("copy"):
                copies[record["args"][0]].append(record["at"])
                continue
            if record["key"] in ("spool", "spool:order", "spool:target") \
                    and record["op"] in ("HSET", "ZADD") and "server" in record \
                    and record["server"] not in (named(record["at"]) or {record["server"]}):
                self.unnamed.add(record["args"][-1] if record["op"] == "ZADD"
                                 else record["args"][0])
                continue
            if record["key"] == "spool" and record["op"] == "HSET":
                job = record["args"][0]
                self.accepted.setdefault(job, record["at"])
                self.acceptor.setdefault(job, record.get("by") or "?")
                self.acceptances[job] += 1
                writes[job].append((record.get("server", ""), record["at"]))
            elif record["key"] == "spool:order" and record["op"] == "ZADD":
                seq, job = record["args"]
                self.seq.setdefault(job, int(float(seq)))
            elif record["key"] == "spool:target" and record["op"] == "HSET":
                self.target.setdefault(record["args"][0], record["args"][1])
        self.delivered: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for request in history.requests:
            if request.get("key") and 200 <= request["status"] < 300:
                self.delivered[request["key"]].append(request)
        self.by_path = {path: job for job, path in self.rest_path.items()}
        for call in history.rest_calls:
            job = self.by_path.get(call["path"])
            if job is not None and call["status"] < 500 and call["status"] != 409:
                self.delivered[job].append({**call, "key": job})
        if history.meta.get("copies") and history.primaries:
            links = history.links if history.meta.get("links") else None
            for job in self._unacknowledged(writes, copies, history.store.get("blind") or [],
                                            links):
                self.unacknowledged.add(job)
                del self.accepted[job], self.acceptor[job], self.acceptances[job]
        window = history.meta.get("window")
        #: the jobs this history judges: those accepted in its window (a window's leftovers
        #: delivered in the next are not held against it)
        self.judged = {job for job, at in self.accepted.items()
                       if window is None or window[0] <= at <= window[1]}


    def _unacknowledged(self, writes: dict[str, list[tuple[str, float]]],
                        copies: dict[str, list[float]], blind: list[list[Any]],
                        links: list[dict[str, Any]] | None) -> list[str]:
        """The jobs written on the primary and never copied to a replica nor delivered (CI,
        `test_fault[redis-restart-accepted_delivered]`: r1's write on redis1, just restarted
        and still named primary, reached no replica; its WAIT failed, the retry found the
        lease another's and the event lay in the announced gap). A job delivered was accepted
        whatever the feeds show; so is one whose copy may have gone unseen (`_unseen_copy`),
        or with no Sentinel (a lone primary waits for no one)."""
        out = []
        for job, written in writes.items():
            if copies.get(job) or job in self.delivered:
                continue
            first, last = min(at for _, at in written), max(at for _, at in written)
            servers = {server for server, _ in written}
            if not _unseen_copy(servers, first, last + UNSEEN_COPY, blind, links):
                out.append(job)
        return out


def _unseen_copy(servers: set[str], first: float, until: float, blind: list[list[Any]],
                 links: list[dict[str, Any]] | None) -> bool:
    """Whether a replica may have had a copy of a write made on `servers` in [first, until]
    that no MONITOR showed. With the servers' replication links known: a replica linked to
    one of them then, either by a sync that began then (its RDB carries the write, no
    command shows it) or while its MONITOR was blind. Without them (an older history): any
    other server's MONITOR blind then (CI, redis-restart, t+2.84: redis2's feed was blind
    23 ms as Sentinel promoted it, but redis2 had never reconnected to the restarted redis1
    that took the write; the job, written on no replica, was called accepted and lost)."""
    if links is None:
        return any(role not in servers and since <= until and end >= first
                   for role, since, end in blind)
    for link in links:
        if link["primary"] not in servers:
            continue
        begin, lost = link["synced"], link["lost"] if link["lost"] is not None else until
        if begin > until or lost < first:
            continue
        if begin >= first:
            return True
        if any(role == link["replica"] and since <= min(lost, until) and end >= first
               for role, since, end in blind):
            return True
    return False


def primary_at(primaries: list[dict[str, Any]]) -> Callable[[float], set[str]]:
    """`at -> the servers a write may have been accepted on then`: the one Sentinel named
    primary, and during a promotion (between SLAVEOF NO ONE and Sentinel seeing it done) the
    promoted one too. Empty (any server's write counts) before the first naming, or without
    Sentinel."""
    moments = [p["at"] for p in primaries]

    def named(at: float) -> set[str]:
        index = bisect.bisect_right(moments, at) - 1
        servers = {primaries[index]["server"]} if index >= 0 else set()
        servers.update(p["server"] for p in primaries if p.get("from", p["at"]) <= at < p["at"])
        return servers if index >= 0 else set()
    return named


def job_writes(history: History, jobs: Jobs) -> list[dict[str, Any]]:
    """Every write a replica made for a namespace's job: webhook requests and REST calls
    other than reads, with the namespace and the job they were for."""
    replicas = set(history.meta.get("replicas") or [])
    out = []
    for request in history.requests:
        if request["host"] in replicas and request.get("ns"):
            out.append({"ns": request["ns"], "host": request["host"], "at": request["at"],
                        "job": request.get("key"), "refused": _fenced_off(request),
                        "what": f"{request['path']} {str(request.get('key'))[:8]}"})
    for call in history.rest_calls:
        if call["host"] in replicas and call["method"] != "GET":
            parts = call["path"].split("/")
            if len(parts) > 4 and parts[1] == "api" and parts[3] == "v1":
                out.append({"ns": parts[4], "host": call["host"], "at": call["at"],
                            "job": jobs.by_path.get(call["path"]), "refused": _fenced_off(call),
                            "what": f"{call['method']} {call['path'][:60]}"})
    return sorted(out, key=lambda r: r["at"])


def _fenced_off(request: dict[str, Any]) -> bool:
    """A request the server refused for its stale fencing token: no write was made."""
    return request.get("status") == 409 and bool(request.get("token"))
