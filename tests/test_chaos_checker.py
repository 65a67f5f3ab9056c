"""The chaos checker on histories written by hand: each property fails on the history that
breaks it and passes on the one that keeps it; the MONITOR parser takes hostile lines.

These need no network namespaces: they are the checker's own tests (tests/test_chaos.py runs
it on real histories).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from eventd.engine import job_id
from tests.chaos.checker import check
from tests.chaos.history import History
from tests.chaos.netns import Network
from tests.chaos.reading import FORWARD, GAP, RESTART, lease_timeline
from tests.chaos.recorder import (
    RedisMonitor,
    interesting,
    parse_monitor_line,
    replica_links,
    sentinel_primaries,
)

T0 = 1_800_000_000.0
TTL = 2.0


def base(**parts: Any) -> History:
    """A window [T0, T0+30] of a cluster with replicas r1..r3 (pids 11, 12, 13)."""
    history = History(
        meta={"ttl": TTL, "started": T0, "ended": T0 + 30, "window": [T0, T0 + 30],
              "replicas": ["r1", "r2", "r3"], "keepalive": [0.5, 1.0]},
        processes=[{"host": f"r{i}", "pid": 10 + i, "started": T0 - 10, "ended": None,
                    "how": None} for i in (1, 2, 3)],
        store={"spool": [], "dead": {}, "blind": []})
    for name, value in parts.items():
        setattr(history, name, value)
    return history


def conn(ns: str, host: str, opened: float, closed: float | None, ended: str = "client",
         last_pong: float | None = None) -> dict[str, Any]:
    return {"ns": ns, "host": host, "opened": T0 + opened,
            "closed": None if closed is None else T0 + closed, "ended": ended,
            "last_pong": None if last_pong is None else T0 + last_pong, "token": None,
            "frames": 1}


def lease(ns: str, at: float, holder: str, token: int) -> dict[str, Any]:
    return {"op": "SET", "key": f"cluster:lease:{ns}", "args": [f"vm-{holder}-abcdef:{token}",
            str(int(TTL * 1000))], "at": T0 + at, "server": "redis1", "client": "lua"}


def renew(ns: str, at: float) -> dict[str, Any]:
    return {"op": "PEXPIRE", "key": f"cluster:lease:{ns}", "args": [str(int(TTL * 1000))],
            "at": T0 + at, "server": "redis1", "client": "lua"}


def accept(job: str, at: float, seq: int, by: str) -> list[dict[str, Any]]:
    return [{"op": "HSET", "key": "spool", "args": [job], "at": T0 + at, "server": "redis1",
             "client": "lua", "by": by},
            {"op": "ZADD", "key": "spool:order", "args": [str(seq), job], "at": T0 + at,
             "server": "redis1", "client": "lua", "by": by}]


def event(uuid: str, at: float, ns: str = "acme", state: str = "Running") -> dict[str, Any]:
    return {"at": T0 + at, "ns": ns, "uuid": uuid, "uri": f"/api/app/v1/{ns}/container/{uuid}/",
            "state": state}


def forward_id(e: dict[str, Any]) -> str:
    return job_id(FORWARD, {"uuid": e["uuid"], "resource_uri": e["uri"]}, 0)


def hook(e: dict[str, Any], at: float, host: str, status: int = 200) -> dict[str, Any]:
    return {"path": "/hook", "key": forward_id(e), "ns": e["ns"], "uuid": e["uuid"],
            "gap": None, "status": status, "host": host, "at": T0 + at, "token": None}


def names(history: History) -> list[str]:
    return check(history).failed()


# -- single consumer ----------------------------------------------------------------------------
def test_two_hosts_consuming_one_namespace_at_once_is_an_overlap_with_its_length():
    history = base(connections=[conn("acme", "r1", 0, 5), conn("acme", "r2", 4.2, None)])
    verdict = check(history).verdict("single consumer")
    assert not verdict.ok and abs(verdict.figures["longest_overlap_s"] - 0.8) < 1e-6
    assert check(base(connections=[conn("acme", "r1", 0, 5), conn("acme", "r2", 5.1, None)])
                 ).verdict("single consumer").ok


def test_a_connection_the_keepalive_ended_was_alive_only_until_its_last_pong():
    # r1 stopped answering at 3.0 (SIGSTOP): the server closed it at 4.5, after r2 came at 4.
    history = base(connections=[conn("acme", "r1", 0, 4.5, "keepalive", last_pong=3.0),
                                conn("acme", "r2", 4.0, None)])
    assert check(history).verdict("single consumer").ok
    # ... but if it answered a ping after r2 had connected, both were alive.
    history.connections[0]["last_pong"] = T0 + 4.3
    assert not check(history).verdict("single consumer").ok


def test_the_same_host_reconnecting_is_not_two_consumers():
    history = base(connections=[conn("acme", "r1", 0, 5), conn("acme", "r1", 4.5, None)])
    verdict = check(history).verdict("single consumer")
    assert verdict.ok and verdict.notes


# -- gaps and lost events -----------------------------------------------------------------------
def gap_request(ns: str, host: str, at: float, gap: float, key: str,
                datetime: str | None = None) -> dict[str, Any]:
    return {"path": "/gap", "key": key, "ns": ns, "uuid": None, "gap": str(gap),
            "datetime": datetime, "status": 200, "host": host, "at": T0 + at, "token": None}


def backfill(host: str, at: float, since: str) -> dict[str, Any]:
    return {"method": "GET", "path": "/api/audit/v1/action/",
            "query": {"start_date__gte": since}, "status": 200, "host": host, "at": T0 + at,
            "token": None}


def iso(offset: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(int(T0 + offset), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def gap_history(announced_gap: float, backfill_since: float | None) -> History:
    gap_job = "g" * 32
    return base(
        connections=[conn("acme", "r1", 0, 3.0), conn("acme", "r2", 5.0, None)],
        requests=[gap_request("acme", "r2", 5.2, announced_gap, gap_job)],
        redis=accept(gap_job, 5.05, 1, "r2"),
        rest_calls=[] if backfill_since is None else [backfill("r2", 5.1, iso(backfill_since))])


def test_a_gap_announced_and_backfilled_from_its_start_passes():
    assert check(gap_history(2.0, 2.9)).verdict("gaps announced").ok


def test_a_gap_event_that_starts_late_or_no_backfill_fails():
    late = check(gap_history(0.5, 2.9)).verdict("gaps announced")  # announced [4.5, 5]
    assert not late.ok and "without a gap event covering it" in late.violations[0].what
    unfilled = check(gap_history(2.0, None)).verdict("gaps announced")
    assert [v.what.split(": ")[1] for v in unfilled.violations] == ["gap of 2.00 s never backfilled"]


def test_a_gap_event_accepted_after_its_replicas_next_connection_covers_its_own_gap():
    # Chaos seed 15: r2's gap event for its connection at t+5 waited in a stalled spool and
    # was accepted after r2 had reconnected at t+9; read as the t+9 connection's, it left
    # the gap it announced (t+3 to t+5) uncovered.
    first, second = "g" * 32, "h" * 32
    history = base(
        connections=[conn("acme", "r1", 0, 3.0), conn("acme", "r2", 5.0, 8.0, "keepalive", 7.9),
                     conn("acme", "r2", 9.0, None)],
        requests=[gap_request("acme", "r2", 9.6, 2.0, first, iso(5.0)),
                  gap_request("acme", "r2", 9.8, 1.1, second, iso(9.0))],
        redis=accept(first, 9.4, 1, "r2") + accept(second, 9.5, 2, "r2"),
        rest_calls=[backfill("r2", 5.1, iso(2.9)), backfill("r2", 9.1, iso(7.8))])
    verdict = check(history).verdict("gaps announced")
    assert verdict.ok, [v.what for v in verdict.violations]
    without_datetime = base(**{**history.__dict__, "requests": [
        {**r, "datetime": None} for r in history.requests]})
    assert not check(without_datetime).verdict("gaps announced").ok  # the mapping it fixes


def test_a_gap_event_accepted_just_before_the_emulator_dated_its_connection_covers_its_gap():
    # Chaos seed 1, 10 minutes, t+395.86: r1 accepted umbrella's gap event (6.755 s) 10 ms
    # before the emulator's handler, run once its loop got to it, dated the connection it was
    # made for; read as the previous connection's, it left the gap uncovered (98 events lost
    # "unannounced").
    gap_job = "g" * 32
    history = base(
        connections=[conn("acme", "r2", 0, 3.0), conn("acme", "r2", 5.0, None)],
        requests=[gap_request("acme", "r2", 5.2, 2.0, gap_job, iso(5.0))],
        redis=accept(gap_job, 4.99, 1, "r2"), rest_calls=[backfill("r2", 5.1, iso(2.9))])
    assert check(history).verdict("gaps announced").ok
    # Accepted a second before the connection opened: made for the one before, which ended
    # long ago ([-2, 0]), and this gap is not covered
    history.redis = accept(gap_job, 4.0, 1, "r2")
    history.requests = [gap_request("acme", "r2", 5.2, 2.0, gap_job, iso(4.0))]
    assert not check(history).verdict("gaps announced").ok


def test_a_gap_starts_after_the_last_event_read_off_a_connection_the_keepalive_ended():
    # Chaos seed 11 (t+24): r3's reader, held up in its sink by a stalled spool, answered no
    # ping after 24.33; the server closed it at 25.83, and r3 read what its socket kept:
    # every event sent up to 25.82 was accepted by r3. The next holder announced its gap from
    # 25.6; dated from the last pong, the gap looked uncovered though nothing was missed.
    read = [event(f"e{i}", 3.0 + i / 10) for i in range(10)]  # 3.0 .. 3.9, read by r1
    gap_job = "g" * 32
    history = base(
        connections=[conn("acme", "r1", 0, 4.0, "keepalive", last_pong=2.5),
                     conn("acme", "r2", 5.0, None)],
        emitted=read,
        requests=[gap_request("acme", "r2", 5.2, 1.5, gap_job)],  # announced [3.5, 5]
        redis=[r for i, e in enumerate(read) for r in accept(forward_id(e), 4.5, i + 1, "r1")]
        + accept(gap_job, 5.05, 20, "r2"),
        rest_calls=[backfill("r2", 5.1, iso(3.0))])
    verdict = check(history).verdict("gaps announced")
    assert verdict.ok, [v.what for v in verdict.violations]
    assert abs(verdict.figures["longest_gap_s"] - 1.1) < 1e-6  # from 3.9, the last read
    # Read by another host (or not at all), they are no sign of r1's connection
    history.redis = [r for i, e in enumerate(read) for r in accept(forward_id(e), 4.5, i + 1,
                                                                   "r3")] \
        + accept(gap_job, 5.05, 20, "r2")
    assert not check(history).verdict("gaps announced").ok


def test_a_gap_longer_than_the_ttl_plus_5_s_fails_and_so_does_no_consumer_at_the_end():
    long_gap = base(connections=[conn("acme", "r1", 0, 1.0), conn("acme", "r2", 9.0, None)],
                    requests=[gap_request("acme", "r2", 9.1, 8.0, "g" * 32)],
                    redis=accept("g" * 32, 9.05, 1, "r2"),
                    rest_calls=[backfill("r2", 9.1, iso(0.0))])
    assert any("longer than the lease TTL" in v.what
               for v in check(long_gap).verdict("gaps announced").violations)
    stranded = base(connections=[conn("acme", "r1", 0, 10.0)])
    assert "no consumer from here to the end" in \
        check(stranded).verdict("gaps announced").violations[0].what


def test_an_event_lost_inside_the_announced_gap_is_counted_and_one_outside_fails():
    inside, outside = event("e-in", 4.0), event("e-out", 1.0)
    history = gap_history(2.0, 2.9)
    history.emitted = [inside, outside]
    verdict = check(history).verdict("events lost only in gaps")
    assert verdict.figures["lost_in_gaps"] == 1
    assert [v.what.split()[2] for v in verdict.violations] == ["e-out"[:8]]


# -- accepted, delivered, in order --------------------------------------------------------------
def test_every_accepted_job_must_reach_its_server_once_delivered_it_may_repeat():
    first, second = event("e1", 1.0), event("e2", 1.1)
    history = base(emitted=[first, second],
                   redis=accept(forward_id(first), 1.0, 1, "r1")
                   + accept(forward_id(second), 1.1, 2, "r1"),
                   requests=[hook(first, 1.2, "r1"), hook(first, 1.3, "r1"),
                             hook(second, 1.4, "r1", status=503)])
    report = check(history)
    lost = report.verdict("accepted delivered")
    assert lost.figures["lost"] == 1 and "never received" in lost.violations[0].what
    order = report.verdict("per-target order")
    assert order.ok and order.figures["repeated_deliveries"] == 1


def test_a_rest_job_answered_404_is_delivered_and_the_dead_letter_is_noted():
    stopped = event("e1", 1.0, state="Stopped")
    restart = job_id(RESTART, {"uuid": "e1", "resource_uri": stopped["uri"]}, 0)
    history = base(emitted=[stopped], redis=accept(forward_id(stopped), 1.0, 1, "r1")
                   + accept(restart, 1.0, 2, "r1"),
                   requests=[hook(stopped, 1.1, "r1")],
                   rest_calls=[{"method": "POST", "path": stopped["uri"] + "start/",
                                "query": {}, "status": 404, "host": "r1", "at": T0 + 1.2,
                                "token": None}],
                   store={"spool": [], "dead": {restart: "HTTP 404"}, "blind": []})
    verdict = check(history).verdict("accepted delivered")
    assert verdict.ok and verdict.figures["answered_then_dead"] == 1


def test_first_deliveries_out_of_acceptance_order_fail_per_namespace():
    a, b, other = event("a", 1.0), event("b", 1.1), event("c", 1.2, ns="globex")
    history = base(emitted=[a, b, other],
                   redis=accept(forward_id(a), 1.0, 1, "r1") + accept(forward_id(b), 1.1, 2, "r1")
                   + accept(forward_id(other), 1.2, 3, "r2"),
                   requests=[hook(other, 1.25, "r2"), hook(b, 1.3, "r1"), hook(a, 1.4, "r1")])
    verdict = check(history).verdict("per-target order")
    assert [v.what.split(":")[0] for v in verdict.violations] == ["webhook/acme"]


def test_order_is_acceptance_order_even_where_a_failover_handed_a_seq_out_again():
    # Chaos seed 11, t+77: job a got seq 6778 on redis2 and was sent; a failover lost that
    # write, and redis1 gave seq 6777 to job b, accepted 11 s later and sent after a. In
    # order: a was accepted first. A job accepted first and sent second still fails.
    a, b, c = event("a", 1.0), event("b", 12.0), event("c", 12.5)
    redis = accept(forward_id(a), 1.0, 6778, "r3") + accept(forward_id(b), 12.0, 6777, "r3") \
        + accept(forward_id(c), 12.5, 6779, "r3")
    history = base(emitted=[a, b, c], redis=redis,
                   requests=[hook(a, 1.1, "r3"), hook(b, 12.1, "r3"), hook(c, 12.6, "r3")])
    assert check(history).verdict("per-target order").ok
    late = base(emitted=[a, b, c], redis=redis,
                requests=[hook(a, 1.1, "r3"), hook(c, 12.6, "r3"), hook(b, 12.7, "r3")])
    verdict = check(late).verdict("per-target order")
    assert [v.what.split(" (")[0] for v in verdict.violations] == \
        [f"webhook/acme: job {forward_id(b)[:8]}"]


def test_a_job_delivered_before_its_first_seen_acceptance_is_judged_by_its_bounds():
    # Main 7bc92d3, 10 minutes, t+96: r3 wrote job x on redis2 just before a restart killed
    # it (that record never reached the recorder: the feed was blind); r1, holding globex,
    # sent x from the restarted redis2 at t+92.8; r3's retry wrote x again on redis1 at
    # t+94.7, the one acceptance seen. r1's own jobs a1, a2, accepted at t+93.3 and sent
    # after x, were called late behind it (57 jobs). x was accepted before it was sent.
    x, a1, a2 = event("x", 1.0), event("a1", 2.0), event("a2", 2.1)
    redis = accept(forward_id(a1), 5.0, 10, "r1") + accept(forward_id(a2), 5.05, 11, "r1") \
        + accept(forward_id(x), 6.0, 20, "r3")
    requests = [hook(x, 4.8, "r1"), hook(a1, 7.0, "r1"), hook(a2, 7.1, "r1"),
                hook(x, 7.2, "r1")]
    store = {"spool": [], "dead": {}, "blind": [["redis2", T0 + 3.9, T0 + 4.5]]}
    history = base(emitted=[x, a1, a2], redis=redis, requests=requests, store=store)
    verdict = check(history).verdict("per-target order")
    assert verdict.ok, [v.what for v in verdict.violations]
    assert any("before the first acceptance MONITOR saw" in note for note in verdict.notes)
    # A job accepted before x's event and sent after x is late whenever x was accepted
    early = event("e0", 0.5)
    late = base(emitted=[early, x, a1, a2], redis=accept(forward_id(early), 0.6, 5, "r1")
                + redis, requests=requests + [hook(early, 7.3, "r1")], store=store)
    verdict = check(late).verdict("per-target order")
    assert [v.what.split(" (")[0] for v in verdict.violations] == \
        [f"webhook/acme: job {forward_id(early)[:8]}"]


def test_a_job_written_on_a_server_sentinel_did_not_name_primary_is_not_accepted():
    # Chaos seed 15, t+167: redis1, killed and started again without --replicaof, was a
    # second primary for ~10 s; r3's spool_add ran its script there (WAIT found no replica,
    # so it was never acknowledged, and its event lay in an announced gap). Written on the
    # primary Sentinel names, the same job is accepted and must be delivered.
    e = event("e1", 5.0)
    stale = [{**record, "server": "redis1"} for record in accept(forward_id(e), 5.0, 9, "r3")]
    named = [{"at": 0.0, "server": "redis1"},
             {"at": T0 + 2.0, "server": "redis2", "from": T0 + 1.0}]
    history = base(emitted=[e], redis=stale, primaries=named)
    verdict = check(history).verdict("accepted delivered")
    assert verdict.ok and verdict.figures["accepted"] == 0
    assert any("Sentinel did not name primary" in note for note in verdict.notes)
    # SLAVEOF NO ONE sent at 4.5 s, seen done at 6 s: until then the old one may take writes
    promoting = [named[0], {**named[1], "from": T0 + 4.5, "at": T0 + 6.0}]
    for on_named in (base(emitted=[e], redis=stale, primaries=named[:1]),
                     base(emitted=[e], redis=stale, primaries=promoting),
                     base(emitted=[e], redis=stale)):  # no Sentinel: every write counts
        assert check(on_named).verdict("accepted delivered").figures["lost"] == 1


def copy(job: str, at: float, server: str = "redis2") -> dict[str, Any]:
    """A replica's MONITOR line of its primary's spool write (what WAIT waits for)."""
    return {"op": "HSET", "key": "spool", "args": [job], "at": T0 + at, "server": server,
            "client": "10.250.0.11:6379", "by": None, "copy": True}


def test_a_spool_write_no_replica_received_was_never_accepted():
    # CI, test_fault[redis-restart-accepted_delivered]: r1's spool_add ran its script on
    # redis1, just restarted and still the primary Sentinel named; no replica got the write,
    # WAIT said so, and the retry found the lease another's: the event lay in the gap.
    e = event("e1", 5.0)
    job = forward_id(e)
    named = [{"at": 0.0, "server": "redis1"}]
    meta = {"ttl": TTL, "started": T0, "ended": T0 + 30, "window": [T0, T0 + 30],
            "replicas": ["r1", "r2", "r3"], "keepalive": [0.5, 1.0], "copies": True}
    unacknowledged = base(emitted=[e], redis=accept(job, 5.0, 9, "r1"), primaries=named,
                          meta=meta)
    verdict = check(unacknowledged).verdict("accepted delivered")
    assert verdict.ok and verdict.figures["accepted"] == 0
    assert any("no replica received" in note for note in verdict.notes)
    # Not accepted, so its event must lie in an announced gap
    assert "events lost only in gaps" in names(unacknowledged)
    # A replica had it (even late): accepted, and lost
    copied = base(emitted=[e], redis=accept(job, 5.0, 9, "r1") + [copy(job, 6.5)],
                  primaries=named, meta=meta)
    assert check(copied).verdict("accepted delivered").figures["lost"] == 1
    # A replica's MONITOR was blind then: its copy may have gone unseen, so accepted
    blind = base(emitted=[e], redis=accept(job, 5.0, 9, "r1"), primaries=named, meta=meta,
                 store={"spool": [], "dead": {}, "blind": [["redis3", T0 + 4.0, T0 + 5.5]]})
    assert check(blind).verdict("accepted delivered").figures["lost"] == 1
    # The primary's own MONITOR blind (it restarted) hides no replica's copy
    own = base(emitted=[e], redis=accept(job, 5.0, 9, "r1"), primaries=named, meta=meta,
               store={"spool": [], "dead": {}, "blind": [["redis1", T0 + 4.0, T0 + 5.5]]})
    assert check(own).verdict("accepted delivered").figures["accepted"] == 0
    # Delivered: accepted whatever the feeds show (eventd sends only what it accepted)
    delivered = base(emitted=[e], redis=accept(job, 5.0, 9, "r1"), primaries=named,
                     meta=meta, requests=[hook(e, 6.0, "r1")])
    assert check(delivered).verdict("accepted delivered").figures["delivered"] == 1
    # A history recorded before copies were kept: every write on the named primary counts
    old = base(emitted=[e], redis=accept(job, 5.0, 9, "r1"), primaries=named)
    assert check(old).verdict("accepted delivered").figures["lost"] == 1


def link(replica: str, primary: str, synced: float, lost: float | None) -> dict[str, Any]:
    """A time `replica` held `primary`'s data (its log: synced, then lost)."""
    return {"replica": replica, "primary": primary, "synced": T0 + synced,
            "lost": None if lost is None else T0 + lost}


def test_a_copy_goes_unseen_only_where_a_replica_was_linked_to_the_writer():
    # CI, test_fault[redis-restart-accepted_delivered], t+2.84: redis1, killed and started
    # again, took r3's spool write; redis2 had lost its link to redis1 at the kill and never
    # made a new one (Sentinel promoted it 0.1 s later), so WAIT found no replica. redis2's
    # MONITOR was blind 23 ms at the promotion: the old rule (any other feed blind) called the
    # job accepted, and lost.
    e = event("e1", 5.0)
    job = forward_id(e)
    named = [{"at": 0.0, "server": "redis1"}]
    meta = {"ttl": TTL, "started": T0, "ended": T0 + 30, "window": [T0, T0 + 30],
            "replicas": ["r1", "r2", "r3"], "keepalive": [0.5, 1.0], "copies": True,
            "links": True}
    blind = {"spool": [], "dead": {}, "blind": [["redis2", T0 + 5.1, T0 + 5.2]]}

    def lost(links: list[dict[str, Any]], store: dict[str, Any] = blind) -> int:
        history = base(emitted=[e], redis=accept(job, 5.0, 9, "r3"), primaries=named,
                       meta=meta, store=store, links=links)
        return int(check(history).verdict("accepted delivered").figures["lost"])

    # redis2 linked to redis1 until the kill at 3.0, never again: no replica had the write
    assert lost([link("redis2", "redis1", 0.0, 3.0)]) == 0
    # Linked through the write, its feed blind meanwhile: the copy may have gone unseen
    assert lost([link("redis2", "redis1", 0.0, None)]) == 1
    # Linked, its feed seeing everything: a copy would show, none did
    assert lost([link("redis2", "redis1", 0.0, None)],
                {"spool": [], "dead": {}, "blind": []}) == 0
    # A sync that began after the write carries it in its RDB, unseen by any feed
    assert lost([link("redis2", "redis1", 3.0, 3.5), link("redis2", "redis1", 7.0, None)],
                {"spool": [], "dead": {}, "blind": []}) == 1
    # ... but not one made too long after (WAIT gives up after a second)
    assert lost([link("redis2", "redis1", 20.0, None)]) == 0
    # A link to another primary says nothing of redis1's writes
    assert lost([link("redis1", "redis2", 0.0, None)]) == 0
    # An older history, without links: any other server's blind feed stands for a copy
    older = {key: value for key, value in meta.items() if key != "links"}
    history = base(emitted=[e], redis=accept(job, 5.0, 9, "r3"), primaries=named, meta=older,
                   store=blind)
    assert check(history).verdict("accepted delivered").figures["lost"] == 1


def test_a_replica_s_links_are_read_off_its_log():
    roles = {"10.250.0.11": "redis1", "10.250.0.12": "redis2"}
    log = "\n".join([  # redis2 in the CI run above, its AOF rewrite child's lines among them
        "9590:S 06 Dec 2026 18:54:17.694 * Connecting to MASTER 10.250.0.11:6379",
        "9590:S 06 Dec 2026 18:54:17.695 * Full resync from master: 544d31:0",
        "9590:S 06 Dec 2026 18:54:17.696 * MASTER <-> REPLICA sync: Finished with success",
        "9596:C 06 Dec 2026 18:54:17.795 * DB saved on disk",
        "9590:S 06 Dec 2026 18:54:20.281 # Connection with master lost.",
        "9590:S 06 Dec 2026 18:54:20.281 * Reconnecting to MASTER 10.250.0.11:6379",
        "9590:S 06 Dec 2026 18:54:20.281 # Error condition on socket for SYNC: Connection refused",
        "9590:M 06 Dec 2026 18:54:21.502 * MASTER MODE enabled (user request from 'id=8')",
        "garbage", "9590:S 99 Foo 2026 18:54:22.000 * Successful partial resynchronization",
        "9590:S 06 Dec 2026 18:54:30.000 * Connecting to MASTER 10.250.0.11:6379",
        "9590:S 06 Dec 2026 18:54:30.100 * MASTER <-> REPLICA sync: Master accepted a Partial "
        "Resynchronization.",
        "9590:S 06 Dec 2026 18:54:30.100 * Successful partial resynchronization with master.",
        "9590:S 06 Dec 2026 18:54:31.000 * Connecting to MASTER 10.250.0.99:6379",  # moved on
        "9590:S 06 Dec 2026 18:54:31.500 * MASTER <-> REPLICA sync: Finished with success",
        "9777:M 06 Dec 2026 18:54:40.000 * Server initialized",  # restarted: the link ended
    ])
    links = replica_links(log, "redis2", roles)
    assert [(x["primary"], x["replica"]) for x in links] == \
        [("redis1", "redis2"), ("redis1", "redis2"), ("10.250.0.99", "redis2")]
    spans = [(x["synced"] - links[0]["synced"],
              None if x["lost"] is None else x["lost"] - links[0]["synced"]) for x in links]
    expected = [(0.0, 2.585), (12.404, 13.304), (13.804, 22.304)]
    assert all(abs(a - b) < 1e-3 and abs(c - d) < 1e-3
               for (a, c), (b, d) in zip(spans, expected, strict=True)), spans


def test_a_replica_s_copy_of_a_spool_write_is_kept_as_a_copy():
    servers = {"redis1": "10.250.0.11", "redis2": "10.250.0.12"}
    monitor = RedisMonitor(cast(Network, SimpleNamespace(hosts={})), servers, "eventd")
    monitor.keep("redis2", '1796571852.861637 [0 10.250.0.11:6379] "HSET" "eventd:spool" '
                           '"j1" "{}"')
    monitor.keep("redis2", '1796571852.861640 [0 10.250.0.11:6379] "SET" '
                           '"eventd:cluster:lease:acme" "vm:1" "PX" "10000"')
    assert [(r["server"], r["args"], r.get("copy")) for r in monitor.snapshot()[0]] == \
        [("redis2", ["j1"], True)]


def test_the_primaries_sentinel_named_are_read_off_its_log():
    log = "\n".join([
        "9566:X 06 Dec 2026 09:31:22.657 # +sdown master mymaster 10.250.0.11 6379",
        "9566:X 06 Dec 2026 09:31:22.719 * +failover-state-send-slaveof-noone slave "
        "10.250.0.12:6379 10.250.0.12 6379 @ mymaster 10.250.0.11 6379",
        "9566:X 06 Dec 2026 09:31:23.693 # +promoted-slave slave 10.250.0.12:6379 10.250.0.12 "
        "6379 @ mymaster 10.250.0.11 6379",
        "9566:X 06 Dec 2026 09:31:23.758 # +switch-master mymaster 10.250.0.11 6379 "
        "10.250.0.12 6379",
        "9566:X 06 Dec 2026 09:31:33.875 * +convert-to-slave slave 10.250.0.11:6379 "
        "10.250.0.11 6379 @ mymaster 10.250.0.12 6379",
        "9566:X 99 Foo 2026 09:32:00.000 # +switch-master mymaster a 1 b 2",  # no date: skipped
        "garbage", "",
        "9566:X 06 Dec 2026 09:32:27.476 # +switch-master mymaster 10.250.0.12 6379 "
        "10.250.0.11 6379"])
    named = sentinel_primaries(log, {"10.250.0.11": "redis1", "10.250.0.12": "redis2"})
    assert [p["server"] for p in named] == ["redis2", "redis1"]
    assert abs(named[1]["at"] - named[0]["at"] - 63.783) < 1e-3  # +promoted-slave, +switch-master
    assert abs(named[0]["at"] - named[0]["from"] - 0.974) < 1e-3  # SLAVEOF NO ONE sent before
    assert named[1]["from"] == named[1]["at"]


# -- the lease ----------------------------------------------------------------------------------
def lease_history(hook_at: float, host: str = "r1") -> History:
    e = event("e1", 1.0)
    return base(emitted=[e],
                redis=[lease("acme", 0.0, 11, 1), renew("acme", 1.0),  # r1 until 3.0
                       lease("acme", 3.5, 12, 2), renew("acme", 4.0)]  # r2 from 3.5
                + accept(forward_id(e), 1.0, 1, "r1"),
                requests=[hook(e, hook_at, host)])


def test_a_write_while_holding_the_lease_passes_and_one_after_a_newer_token_is_stale():
    assert check(lease_history(2.0)).verdict("no request without the lease").ok
    stale = check(lease_history(4.0)).verdict("no request without the lease")
    assert stale.figures["stale"] == 1 and stale.figures["own_job"] == 1
    assert "token 2 is r2's" in stale.violations[0].what
    assert abs(stale.violations[0].size - 1.0) < 1e-6  # a second after its lease ended at 3.0


def test_a_request_the_server_refused_for_its_stale_token_is_no_write():
    history = lease_history(4.0)
    history.requests[0].update(status=409, token="chaos/acme:1")
    verdict = check(history).verdict("no request without the lease")
    assert verdict.ok and verdict.figures["refused"] == 1 and verdict.figures["stale"] == 0
    unfenced = lease_history(4.0)  # a 409 without a token is the target's own answer
    unfenced.requests[0].update(status=409)
    assert not check(unfenced).verdict("no request without the lease").ok


def test_a_write_after_the_lease_expired_with_no_new_holder_is_expired_and_a_takeover_counts():
    expired = check(lease_history(3.2)).verdict("no request without the lease")
    assert expired.figures["expired"] == 1
    taken = check(lease_history(2.0, host="r3")).verdict("no request without the lease")
    assert taken.figures["taken_over"] == 1 and "it never held the lease" in taken.violations[0].what


def test_the_lease_timeline_is_read_off_the_primary_sentinel_named():
    # redis2 is named primary from 2.0 (SLAVEOF NO ONE sent at 1.5); redis1, the old primary
    # restarted, takes writes until Sentinel demotes it: r3 sets the lease there at 3.5 (no
    # one else can see it), while r1 renews its own on redis2 and sends at 4.0 under it.
    e = event("e1", 1.0)
    named = [{"at": 0.0, "server": "redis1"},
             {"at": T0 + 2.0, "server": "redis2", "from": T0 + 1.5}]
    on_new = [{**record, "server": "redis2"} for record in
              (lease("acme", 1.8, 11, 5), renew("acme", 3.0), renew("acme", 4.5))]
    redis = on_new + [lease("acme", 3.5, 13, 2)] + \
        [{**record, "server": "redis2"} for record in accept(forward_id(e), 1.9, 1, "r1")]

    def history(host: str) -> History:
        return base(emitted=[e], redis=redis, primaries=named,
                    requests=[hook(e, 4.0, host)])
    held = check(history("r1")).verdict("no request without the lease")
    assert held.ok, held.violations
    # r3's write under its lease on the demoted primary is one without the lease
    stray = check(history("r3")).verdict("no request without the lease")
    assert stray.figures["stale"] == 1 and "token 5 is r1's" in stray.violations[0].what
    # without Sentinel (no primaries), every server's writes count, as before
    alone = base(emitted=[e], redis=redis, requests=[hook(e, 4.0, "r1")])
    assert not check(alone).verdict("no request without the lease").ok


def test_lease_timeline_follows_renewals_releases_and_replacements():
    records = [lease("acme", 0.0, 11, 1), renew("acme", 1.5),
               {"op": "DEL", "key": "cluster:lease:acme", "args": [], "at": T0 + 2.0,
                "server": "redis1", "client": "lua"},
               lease("acme", 2.1, 12, 2), lease("acme", 2.5, 13, 3)]
    tenures = lease_timeline(records)["acme"]
    assert [(t.token, round(t.end - T0, 3), t.how) for t in tenures] == \
        [(1, 2.0, "released"), (2, 2.5, "replaced"), (3, 4.5, "expired")]


def test_a_token_given_twice_fails_tokens_increase():
    history = base(redis=[lease("acme", 0.0, 11, 4),
                          {**lease("acme", 5.0, 12, 4), "server": "redis2"}])
    verdict = check(history).verdict("tokens increase")
    assert not verdict.ok and "token 4 given to vm-12" in verdict.violations[0].what


# -- history and the MONITOR feed ---------------------------------------------------------------
def test_a_history_round_trips_through_its_directory(tmp_path):
    history = gap_history(2.0, 2.9)
    assert History.load(history.save(tmp_path / "h")) == history
    assert check(History.load(tmp_path / "h")).ok == check(history).ok


def test_a_window_keeps_what_began_in_it_and_the_lease_past():
    history = lease_history(4.0)
    window = history.window(T0 + 3.9, T0 + 10)
    assert window.requests and not window.emitted
    assert len(window.redis) == len(history.redis)
    assert window.meta["window"] == [T0 + 3.9, T0 + 10]


def test_the_monitor_parser_keeps_the_cluster_s_lease_and_spool_commands():
    line = '1796416592.174551 [0 lua] "SET" "chaos:cluster:lease:acme" "vm-1-ab:7" "PX" "2000"'
    at, client, args = parse_monitor_line(line)  # type: ignore[misc]
    assert (at, client) == (1796416592.174551, "lua")
    assert interesting("chaos", args) == {"op": "SET", "key": "cluster:lease:acme",
                                          "args": ["vm-1-ab:7", "2000"]}
    hset = '1.5 [0 10.250.0.17:4242] "HSET" "chaos:spool" "abc" "{\\"id\\": \\"x y\\"}"'
    assert interesting("chaos", parse_monitor_line(hset)[2]) == {  # type: ignore[index]
        "op": "HSET", "key": "spool", "args": ["abc"]}


def test_hostile_monitor_lines_are_ignored_not_raised_on():
    for line in ("", "OK", "garbage [0 lua]", '1.0 [0 lua "SET"', "1.0 [0 lua] SET k v",
                 '1.0 [0 lua] "SET" "other:cluster:lease:acme" "x"',
                 '1.0 [0 lua] "SET" "chaos2:cluster:lease:acme" "x"',
                 '1.0 [0 lua] "HSET" "chaos:spool"', '1.0 [0 lua] "SET"'):
        parsed = parse_monitor_line(line)
        assert parsed is None or interesting("chaos", parsed[2]) is None


def _quote(arg: str) -> str:
    """An argument as MONITOR shows it (sdscatrepr: quotes, backslash escapes)."""
    out = []
    for char in arg:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif 32 <= ord(char) < 127:
            out.append(char)
        else:
            out.append("".join(f"\\x{b:02x}" for b in char.encode()))
    return '"' + "".join(out) + '"'


@given(st.lists(st.text(max_size=20), min_size=1, max_size=6))
def test_the_monitor_parser_splits_any_quoted_arguments_back(args: list[str]):
    line = "1.25 [0 127.0.0.1:5] " + " ".join(_quote(a) for a in args)
    parsed = parse_monitor_line(line)
    assert parsed is not None and len(parsed[2]) == len(args)
    assert [a for a in parsed[2]] == [_quote(a)[1:-1] for a in args]  # escapes kept as shown


def test_the_gap_rule_name_is_the_one_the_run_writes():
    from tests.chaos.run import RULES

    assert all(f"name: {rule}" in RULES for rule in (FORWARD, RESTART, GAP))
