"""`enrich: logs` from followers: a container's logs followed from its start on a real Docker
Engine, its tail taken at its die without asking the Engine again, bounded in followers and
bytes, dropped at destroy, on reload and on close without leaking a thread or a socket; log
bytes and ids are data (hostile frames, huge lines, ids that are no ids)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.attachments import LOGS_BUDGET, Attacher
from eventd.clients.docker import make_client
from eventd.ops.metrics import Metrics
from eventd.ruleset.enrichment import LogsSpec
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.sources.docker.enrich import DockerEnricher, Prefetching, _as_started, _text
from eventd.sources.docker.follow import FrameTail, could_match
from tests.docker_engine import IMAGE, DockerEngine, SocketProxy
from tests.receiver import WebhookReceiver
from tests.test_docker_enrich import _started_daemon, exited
from tests.waiting import wait_until

FIFTY_THEN_WAIT = ("i=1; while [ $i -le 50 ]; do echo \"line $i\"; i=$((i+1)); done; "
                   "sleep {wait}; exit 3")


def _sockets() -> int:
    """This process's open sockets."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += stat.S_ISSOCK(os.stat(f"/proc/self/fd/{fd}").st_mode)
        except OSError:
            pass
    return count


def _follower_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("eventd-follow-")]


def _enricher(host: str, **caps: int) -> DockerEnricher:
    enricher = DockerEnricher(partial(make_client, Settings(docker_host=host)))
    for name, value in caps.items():
        setattr(enricher.followers, name, value)
    return enricher


def _start(cid: str) -> dict[str, Any]:
    return {"type": "container", "action": "start", "id": cid, "uuid": f"start-{cid}"}


def _die(cid: str, uuid: str = "die-1") -> dict[str, Any]:
    return {"type": "container", "action": "die", "id": cid, "uuid": uuid,
            "attributes": {"exitCode": "3"}}


@contextlib.contextmanager
def _followed(engine: DockerEngine, name: str, wait: int,
              host: str | None = None) -> Iterator[tuple[str, DockerEnricher]]:
    """A container that writes 50 lines then sleeps `wait` s, followed (through `host` if
    given) until its follower holds those lines; removed, and the enricher closed, after."""
    cid = engine.run(name, ["sh", "-c", FIFTY_THEN_WAIT.format(wait=wait)])
    enricher = _enricher(host or engine.host)
    try:
        enricher.follow_logs(_start(cid), (20, 16384))
        wait_until(lambda: enricher.followers.held > 0, 10, message="following")
        yield cid, enricher
    finally:
        enricher.close()
        engine.remove(name)


def test_a_followed_container_s_die_takes_the_tail_held(docker_engine: DockerEngine):
    before = _sockets()
    cid = docker_engine.run("fol-tail", ["sh", "-c", FIFTY_THEN_WAIT.format(wait=2)])
    enricher = _enricher(docker_engine.host)
    try:
        enricher.follow_logs(_start(cid), (20, 16384))
        enricher.follow_logs(_start(cid), (20, 16384))  # a start seen twice: one follower
        followers = enricher.followers
        wait_until(lambda: followers.held > 0, 10, message="the follower read the lines")
        assert followers.followed() == 1 and len(_follower_threads()) == 1
        wait_until(lambda: exited(docker_engine, "fol-tail"), 10, message="exited")
        enricher.prefetch(_die(cid), resource=False, logs=[(20, 16384), (5, 16384)])
        assert enricher.logs(_die(cid), 20, 16384, LOGS_BUDGET) \
            == [f"line {i}" for i in range(31, 51)]
        assert enricher.logs(_die(cid), 5, 16384, LOGS_BUDGET) \
            == [f"line {i}" for i in range(46, 51)]
        # Taken from the follower: the Engine was not asked for the logs at die.
        assert (enricher.log_reads, enricher.logs_prefetched) == (0, 0)
        assert followers.counts["taken"] == 2 and followers.counts["started"] == 1
        assert (followers.followed(), followers.held) == (0, 0)  # dropped after use
        wait_until(lambda: not _follower_threads(), 5, message="the follower's thread ended")
        # Another die of the same container finds no follower: read as before.
        assert enricher.logs(_die(cid, "die-2"), 20, 16384, LOGS_BUDGET)[-1] == "line 50"
        assert enricher.log_reads == 1
    finally:
        enricher.close()
        docker_engine.remove("fol-tail")
    assert _sockets() <= before


def test_followers_stop_at_destroy_reload_and_close_leaking_nothing(
        docker_engine: DockerEngine):
    before_threads, before_sockets = len(_follower_threads()), _sockets()
    names = [f"fol-leak-{i}" for i in range(3)]
    cids = [docker_engine.run(name, ["sh", "-c", FIFTY_THEN_WAIT.format(wait=60)])
            for name in names]
    enricher = _enricher(docker_engine.host)
    try:
        for cid in cids:
            enricher.follow_logs(_start(cid), (20, 16384))
        followers = enricher.followers
        wait_until(lambda: followers.held >= 3 * 20 * 8, 10, message="three followers read")
        assert len(_follower_threads()) == before_threads + 3
        enricher.follow_logs({"type": "container", "action": "destroy", "id": cids[0]}, None)
        wait_until(lambda: len(_follower_threads()) == before_threads + 2, 5,
                   message="destroy stops its follower")
        # A reload: every follower stops, then the running containers the new rules could
        # match are followed again (listed from the Engine).
        enricher.refollow(lambda event: (20, 16384) if event["name"] == names[1] else None)
        wait_until(lambda: followers.followed() == 1 and len(_follower_threads())
                   == before_threads + 1, 10, message="one container followed again")
        enricher.close()
        wait_until(lambda: len(_follower_threads()) == before_threads, 5,
                   message="close stops the followers")
        assert followers.followed() == 0 and followers.held == 0
        enricher.follow_logs(_start(cids[2]), (20, 16384))  # closed: nothing starts
        assert len(_follower_threads()) == before_threads
    finally:
        enricher.close()
        docker_engine.remove(*names)
    wait_until(lambda: _sockets() <= before_sockets, 5, message="sockets closed")


def test_the_caps_on_followers_and_bytes_fall_back_to_reading(docker_engine: DockerEngine):
    names = ["fol-cap-0", "fol-cap-1"]
    cids = [docker_engine.run(name, ["sh", "-c", FIFTY_THEN_WAIT.format(wait=2)])
            for name in names]
    enricher = _enricher(docker_engine.host, max_followers=1, max_held=100)
    try:
        for cid in cids:
            enricher.follow_logs(_start(cid), (20, 16384))
        followers = enricher.followers
        assert followers.counts["skipped_cap"] == 1 and followers.followed() == 1
        # 50 lines are more than the 100 bytes all followers may hold: that one gives up.
        wait_until(lambda: followers.counts["overflow"] == 1, 10, message="overflow")
        assert followers.held == 0
        for name, cid in zip(names, cids, strict=True):
            wait_until(lambda name=name: exited(docker_engine, name), 10, message="exited")
            enricher.prefetch(_die(cid), resource=False, logs=[(20, 16384)])
            assert enricher.logs(_die(cid), 20, 16384, LOGS_BUDGET)[-1] == "line 50"
        assert enricher.log_reads == 2 and followers.counts["taken"] == 0
    finally:
        enricher.close()
        docker_engine.remove(*names)


def test_a_follow_stream_that_breaks_falls_back_to_reading(docker_engine: DockerEngine):
    where = Path(tempfile.mkdtemp(prefix="fx", dir="/tmp"))
    proxy = SocketProxy(docker_engine.socket, where / "p.sock")
    try:
        with _followed(docker_engine, "fol-cut", 2, proxy.host) as (cid, enricher):
            followers = enricher.followers
            proxy.cut()
            wait_until(lambda: followers.counts["failed"] == 1, 10, message="the stream broke")
            proxy.restore()
            wait_until(lambda: exited(docker_engine, "fol-cut"), 10, message="exited")
            enricher.prefetch(_die(cid), resource=False, logs=[(20, 16384)])
            assert enricher.logs(_die(cid), 20, 16384, LOGS_BUDGET)[-1] == "line 50"
            assert followers.counts["taken"] == 0 and enricher.log_reads == 1
    finally:
        proxy.close()
        shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def _late_follower(docker_engine: DockerEngine, name: str, after: float,
                   ) -> Iterator[tuple[DockerEnricher, str, SocketProxy]]:
    """A container that printed 50 lines and exited, followed through a proxy (the slow
    Engine) that answers its follow stream, and that stream's end, `after` seconds from when
    its die is prefetched, and a read at die not in time: (the enricher, its id, the proxy)."""
    where = Path(tempfile.mkdtemp(prefix="fe", dir="/tmp"))
    proxy = SocketProxy(docker_engine.socket, where / "p.sock")
    released: threading.Timer | None = None
    try:
        with docker_engine.client() as client:
            cid = str(client.create_container(
                IMAGE, ["sh", "-c", FIFTY_THEN_WAIT.format(wait=1)], name=name,
                host_config=client.create_host_config(network_mode="none"))["Id"])
            follow = f"/containers/{cid}/logs?follow=1".encode()
            proxy.hold(follow)  # the follow stream, and its end, come when released
            proxy.hold(f"/containers/{cid}/logs?stdout=1".encode())  # a read: not in time
            client.start(cid)
        enricher = _enricher(proxy.host)
        try:
            enricher.follow_logs(_start(cid), (20, 16384))
            wait_until(lambda: proxy.held == 1, 10, message="the follow request is in")
            wait_until(lambda: exited(docker_engine, name), 10, message="exited")
            enricher.prefetch(_die(cid), resource=False, logs=[(20, 16384)])
            released = threading.Timer(after, proxy.release, (follow,))
            released.start()
            yield enricher, cid, proxy
        finally:
            enricher.close()
    finally:
        if released is not None:
            released.cancel()
        proxy.release()
        proxy.close()
        shutil.rmtree(where, ignore_errors=True)
        docker_engine.remove(name)


def test_a_stream_that_ends_late_in_the_budget_gives_the_tail(docker_engine: DockerEngine):
    """The Engine ends a follower's stream 0.75 s into its die's 1 s budget (its clean-up
    under load) and would answer a read at die later still: the tail comes from the
    follower. (Before, the wait stopped at half the budget, dropped the follower and read
    instead: no logs.) The slow Engine is a proxy holding its answers."""
    with _late_follower(docker_engine, "fol-late-end", 0.75) as (enricher, cid, proxy):
        followers = enricher.followers
        began = time.monotonic()
        assert enricher.logs(_die(cid), 20, 16384, LOGS_BUDGET)[-1] == "line 50"
        assert time.monotonic() - began < LOGS_BUDGET
        assert followers.counts["taken"] == 1 and followers.counts["not_ended"] == 1
        assert proxy.held == 2  # the read beside it, after half the budget


def test_a_wait_off_the_engine_thread_outlasts_the_engines_budget(docker_engine: DockerEngine):
    """Off the engine's thread (`Attacher.logs_started`) a die waits longer than the engine's
    own 1 s budget: the Engine ends the follower's stream 1.5 s after the die (its clean-up
    under a burst of 16) and would answer a read later still; the tail still comes. (With
    the engine's budget there: no logs, 2 to 4 dies in 100 at --parallel 16.)"""
    with _late_follower(docker_engine, "fol-away-end", 1.5 * LOGS_BUDGET) as (enricher, cid, _):
        attacher = Attacher(enricher, None, Metrics())
        try:
            lines = attacher.logs_started(_die(cid), LogsSpec(lines=20, max_bytes=16384))
            assert lines.result(timeout=10)[-1] == "line 50"
        finally:
            attacher.close()


def test_a_stream_that_does_not_end_is_read_beside_after_half_the_budget(
        docker_engine: DockerEngine):
    """A die claims a follower whose stream does not end (here: the container still runs, as
    with an Engine whose follow stream outlives the container's log): after half the budget
    the logs are read beside it, and that read's answer is taken."""
    with _followed(docker_engine, "fol-endless", 60) as (cid, enricher):
        followers = enricher.followers
        enricher.prefetch(_die(cid), resource=False, logs=[(20, 16384)])
        assert enricher.logs(_die(cid), 20, 16384, 1.0)[-1] == "line 50"
        assert followers.counts["not_ended"] == 1 and enricher.log_reads == 1
        wait_until(lambda: not _follower_threads() and followers.held == 0, 5,
                   message="the follower was stopped")


def test_a_stream_that_ended_long_before_the_die_is_not_its_tail(docker_engine: DockerEngine):
    """A die whose follower's stream ended more than a second before it (a die the reader saw
    late, or a stream the Engine ended early) is read at die, not taken from a stale tail."""
    with _followed(docker_engine, "fol-stale", 1) as (cid, enricher):
        followers = enricher.followers
        wait_until(lambda: all(f.ended.is_set() for f in followers._live.values()), 10,
                   message="the stream ended")
        late = dict(_die(cid), timeNano=time.time_ns() + 2_000_000_000)
        enricher.prefetch(late, resource=False, logs=[(20, 16384)])
        assert enricher.logs(late, 20, 16384, LOGS_BUDGET)[-1] == "line 50"
        assert followers.counts["taken"] == 0 and enricher.log_reads == 1


@pytest.mark.parametrize("cid", ["../../info", "a/b", "%2e%2e", "x?follow=0", "", "-rf",
                                 "a" * 300, "ok\nHost: evil"])
def test_ids_that_are_no_container_id_follow_nothing(cid: str):
    enricher = DockerEnricher(partial(make_client, Settings(docker_host="unix:///nonexistent")))
    try:
        enricher.follow_logs(_start(cid), (20, 16384))
        assert enricher.followers.counts["started"] == 0
        assert _as_started({"Id": cid, "Names": ["/x"], "Labels": {}}) is None
    finally:
        enricher.close()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(entry=_JSON | st.fixed_dictionaries(
    {"Id": st.sampled_from(["a" * 64, "0" * 64, "../x"]) | _JSON}, optional={
        "Names": _JSON | st.lists(st.text(max_size=30) | _JSON, max_size=3),
        "Labels": _JSON | st.dictionaries(st.text(max_size=20), st.text(max_size=20) | _JSON),
        "Image": _JSON, "image": _JSON}))
def test_a_hostile_container_listing_gives_a_start_of_strings_or_nothing(entry: Any):
    # What the Engine lists (GET /containers/json) is data: any shape gives None or a start
    # event whose id is safe in a URL path and whose name and attributes are strings; never raises
    # and never lets the listing name the event's type or action.
    started = _as_started(entry)
    if started is None:
        return
    assert started["type"] == "container" and started["action"] == "start"
    # an id or a name as the Engine takes it in a path: no "/", "?", "%", space or line break
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", started["id"])
    assert isinstance(started["name"], str)
    assert all(isinstance(k, str) and isinstance(v, str)
               for k, v in started["attributes"].items())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(1, 300), max_size=20),
       cap=st.integers(1024, 2048), lines=st.integers(1, 50))
def test_hostile_log_bytes_stay_within_the_caps(data: bytes, cuts: list[int], cap: int,
                                                lines: int):
    """Any bytes, in any chunks (frame headers that lie about their size, a stream byte
    that is none, no newline at all): never more than twice the cap held, never an error."""
    tail = FrameTail(cap)
    at = 0
    for cut in cuts + [len(data)]:
        tail.feed(data[at:at + cut])
        at += cut
        assert len(tail) <= 2 * cap
    got = tail.lines(lines, cap)
    assert len(got) <= lines and sum(len(line.encode()) for line in got) <= 3 * cap


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=200)),
                         max_size=30),
       chunk=st.integers(1, 64))
def test_honest_frames_give_what_a_read_would(payloads: list[tuple[int, bytes]], chunk: int):
    """Under the cap, the tail of a multiplexed stream fed in chunks is what today's read
    (`_text` of the whole stream) gives."""
    stream = b"".join(bytes((kind, 0, 0, 0)) + len(p).to_bytes(4, "big") + p
                      for kind, p in payloads)
    tail = FrameTail(16384)
    for at in range(0, len(stream), chunk):
        tail.feed(stream[at:at + chunk])
    assert tail.lines(20, 16384) == _text(stream).splitlines()[-20:]


def test_a_header_claiming_4_gib_and_a_huge_line_hold_the_cap():
    tail = FrameTail(1024)
    tail.feed(b"\x01\0\0\0\xff\xff\xff\xff")
    for _ in range(1000):
        tail.feed(b"A" * 4096)  # one line of 4 MB, never a newline
        assert len(tail) <= 2048
    assert [len(line) for line in tail.lines(20, 1024)] == [1024]
    tail.feed(b"\nlast\n")
    assert tail.lines(20, 1024) == ["last"]  # the line cut by the cap is left out


RULES = """
rules:
  - name: app-crash
    match: {type: container, action: die, name: {glob: "app-*"}, attributes.tier: web,
            attributes.exitCode: {not: "0"}, caused_by_eventd: false}
    enrich: {logs: {lines: 30, max_bytes: 2048}}
    actions: [{log: {message: x}}]
  - name: any-oom
    match: {any: [{action: oom}, {action: die}], attributes.image: {glob: "busy*"}}
    enrich: {logs: {lines: 10}}
    actions: [{log: {message: x}}]
"""


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["app-1", "app-", "db", "xapp-1"]),
       image=st.sampled_from(["busybox", "busybox:latest", "alpine", ""]),
       labels=st.dictionaries(st.sampled_from(["tier", "team", "exitCode"]),
                              st.sampled_from(["web", "db", "0", "1"]), max_size=3),
       exit_code=st.sampled_from(["0", "1", "137"]), action=st.sampled_from(["die", "oom"]))
def test_a_rule_that_matches_a_containers_end_could_match_its_start(
        tmp_path_factory: pytest.TempPathFactory, name: str, image: str,
        labels: dict[str, str], exit_code: str, action: str):
    """What decides whom to follow never misses a container whose end a rule matches."""
    path = tmp_path_factory.mktemp("r") / "rules.yaml"
    path.write_text(RULES)
    for rule in load_rules((path,), {}):
        attributes = {**labels, "name": name, "image": image}
        start = {"type": "container", "action": "start", "id": "c" * 64, "name": name,
                 "attributes": attributes}
        end = dict(start, action=action, attributes={**attributes, "exitCode": exit_code})
        if rule.matches(end):
            assert could_match(rule)(start)


def test_only_containers_a_logs_rule_could_match_are_followed(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    followed: list[tuple[str, tuple[int, int] | None]] = []
    refollowed: list[Any] = []

    class Recorder:
        def follow_logs(self, event: dict[str, Any], caps: tuple[int, int] | None) -> None:
            followed.append((event["id"], caps))

        def refollow(self, caps_for: Any) -> None:
            refollowed.append(caps_for)

    rules = load_rules((path,), {})
    sink = Prefetching(lambda *a, **k: None, lambda: rules, lambda batch: None,
                       follower=Recorder())
    sink.prime()
    assert len(refollowed) == 1  # at start: the running containers
    web = {"type": "container", "action": "start", "id": "a1", "name": "app-1",
           "attributes": {"tier": "web", "image": "busybox"}}
    assert sink.caps_for(web) == (30, 16384)
    assert sink.caps_for(dict(web, attributes={"tier": "db", "image": "alpine"})) is None
    assert sink.caps_for(dict(web, name="db", attributes={"image": "busybox"})) == (10, 16384)


def test_a_daemon_takes_followed_tails_at_die(
        docker_engine: DockerEngine, webhook_receiver: WebhookReceiver, tmp_path: Path):
    rules = textwrap.dedent("""
        rules:
          - name: crashed
            match: {type: container, action: die, name: {glob: "fol-app-*"},
                    attributes.exitCode: {not: "0"}}
            enrich: {logs: {lines: 20}}
            actions:
              - webhook:
                  url: "${ALERT_WEBHOOK_URL}"
                  json: {name: "{{ event.name }}", last: "{{ logs[-1] if logs else '' }}",
                         lines: "{{ logs | length }}"}
    """)
    daemon = _started_daemon(rules, docker_engine, webhook_receiver, tmp_path)
    names = ["fol-app-1", "fol-app-2", "fol-other"]
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected")
        for name in names:
            docker_engine.run(name, ["sh", "-c", FIFTY_THEN_WAIT.format(wait=1)])
        wait_until(lambda: len(webhook_receiver.requests) >= 2, 20, message="2 webhooks")
        assert daemon.wait_idle(5)
        bodies = sorted((r.json() for r in webhook_receiver.requests), key=lambda b: b["name"])
        assert bodies == [{"name": name, "last": "line 50", "lines": "20"}
                          for name in names[:2]]
        sample = daemon.metrics.registry.get_sample_value
        # fol-other is never followed: no rule with enrich: logs could match it.
        assert sample("eventd_docker_log_follows_total", {"outcome": "started"}) == 2
        assert sample("eventd_docker_log_follows_total", {"outcome": "taken"}) == 2
        # Their follow requests were answered while they ran, before their die.
        assert sample("eventd_docker_log_follows_total", {"outcome": "in_time"}) == 2
        assert daemon.pipeline.enricher.log_reads == 0
        assert sample("eventd_docker_log_followers") == 0
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove(*names)
    assert not _follower_threads()


def test_containers_running_when_eventd_starts_are_followed(
        docker_engine: DockerEngine, webhook_receiver: WebhookReceiver, tmp_path: Path):
    """eventd lists the running containers at start (no start event will come for them) and
    follows those a rule with `enrich: logs` could match; a reload that changes those rules
    stops the followers and follows anew, one that does not keeps them."""
    rules = textwrap.dedent("""
        rules:
          - name: crashed
            match: {type: container, action: die, name: fol-running}
            enrich: {logs: {lines: 5}}
            actions:
              - webhook:
                  url: "${ALERT_WEBHOOK_URL}"
                  json: {last: "{{ logs[-1] if logs else '' }}"}
    """)
    cid = docker_engine.run("fol-running", ["sh", "-c", FIFTY_THEN_WAIT.format(wait=6)])
    docker_engine.run("fol-running-not", ["sh", "-c", FIFTY_THEN_WAIT.format(wait=6)])
    daemon = _started_daemon(rules, docker_engine, webhook_receiver, tmp_path)
    try:
        followers = daemon.pipeline.enricher.followers
        wait_until(lambda: followers.followed() == 1 and followers.held > 0, 10,
                   message="the running container followed")
        assert followers.counts["started"] == 1
        assert daemon.reload()  # the same rules: the follower goes on
        assert followers.counts["started"] == 1 and followers.followed() == 1
        path = tmp_path / "rules.yaml"
        path.write_text(rules.replace("name: fol-running}", "name: fol-other}"))
        assert daemon.reload()  # no rule could match it now: its follower stops
        assert followers.followed() == 0 and followers.held == 0
        path.write_text(rules)
        assert daemon.reload()
        wait_until(lambda: followers.counts["started"] == 2 and followers.held > 0, 10,
                   message="followed again after the reload")
        wait_until(lambda: webhook_receiver.requests, 20, message="the webhook")
        assert webhook_receiver.requests[0].json() == {"last": "line 50"}
        assert followers.counts["taken"] == 1 and daemon.pipeline.enricher.log_reads == 0
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove("fol-running", "fol-running-not")
        assert not _follower_threads()
    assert cid
