"""Several `eventd run` replicas on one Redis, one emulator and one webhook receiver.

Each namespace's stream must have exactly one consumer at every moment (the emulator records
every stream connection with its namespace and open/close times), work must spread over the
live replicas and move when one stops or dies, and the new owner of a stream must announce
the gap from the last event the old one processed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventd.emulator import Emulator
from eventd.events import parse_datetime
from tests.cluster_helpers import Cluster, Replica, cluster_fixture, open_counts, overlaps, replicas_fixture
from tests.daemon_helpers import write_rules
from tests.receiver import WebhookReceiver
from tests.waiting import wait_until

NAMESPACES = ("acme", "globex", "initech", "umbrella")
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from cluster_fixture()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator(tick=0.02, namespaces=NAMESPACES)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    yield from replicas_fixture()


class Sampler:
    """Looks at the emulator's open connections every few ms: the most per namespace seen."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.most: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for namespace, count in open_counts(self.emu).items():
                self.most[namespace] = max(self.most[namespace], count)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def forward_rules(tmp_path: Path, receiver: WebhookReceiver) -> Path:
    return write_rules(tmp_path / "rules", f"""
        rules:
          - name: forward
            match: {{type: container}}
            actions:
              - webhook:
                  url: "{receiver.url}/hook"
                  json: {{ns: "{{{{ event.namespace }}}}", uuid: "{{{{ event.uuid }}}}"}}
          - name: gap
            match: {{type: eventd, state: connected}}
            actions:
              - webhook:
                  url: "{receiver.url}/gap"
                  json: {{ns: "{{{{ event.namespace }}}}", gap: "{{{{ event.gap_seconds }}}}"}}
        """)


def each_consumed_once(emu: Emulator, receiver: WebhookReceiver) -> None:
    """One event per namespace arrives at the webhook exactly once (one consumer each)."""
    receiver.clear()
    sent = {ns: emu.emit_event(type="container", namespace=ns)["uuid"] for ns in NAMESPACES}

    def arrived() -> dict[str, str]:
        return {r.json()["ns"]: r.json()["uuid"] for r in receiver.requests
                if r.path == "/hook"}

    wait_until(lambda: arrived() == sent, 20, message=f"one event per namespace: {sent}")
    hooks = [r for r in receiver.requests if r.path == "/hook"]
    assert len(hooks) == len(NAMESPACES), [r.json() for r in hooks]


def spread(replicas: list[Replica]) -> list[int] | None:
    """How many namespaces each live replica leads, once every namespace has one leader."""
    counts = [sum(r.leads(ns) for ns in NAMESPACES) for r in replicas if r.alive()]
    return counts if sum(counts) == len(NAMESPACES) else None


def test_four_namespaces_over_three_replicas_one_consumer_each_at_every_moment(
        emu, cluster, replicas, tmp_path, webhook_receiver):
    rules = forward_rules(tmp_path, webhook_receiver)
    with Sampler(emu) as sampler:
        for name in ("r1", "r2", "r3"):
            replicas.append(Replica(emu, rules, tmp_path, name, cluster,
                                    namespaces=",".join(NAMESPACES)).start())
        wait_until(lambda: open_counts(emu) == dict.fromkeys(NAMESPACES, 1), 30,
                   message="one connection per namespace")
        wait_until(lambda: sorted(spread(replicas) or []) == [1, 1, 2], 30,
                   message="4 namespaces spread 2/1/1 over 3 replicas")
        each_consumed_once(emu, webhook_receiver)

        # A graceful stop of the replica holding two: both move within 2 s.
        busiest = max(replicas, key=lambda r: sum(r.leads(ns) for ns in NAMESPACES))
        moving = [ns for ns in NAMESPACES if busiest.leads(ns)]
        before = {ns: len([c for c in emu.stream_connections() if c.namespace == ns])
                  for ns in moving}
        survivors = [r for r in replicas if r is not busiest]

        def rebalanced() -> float:
            return sum(r.sample("eventd_lease_changes_total", namespace=ns,
                                reason="rebalanced") or 0 for r in survivors for ns in NAMESPACES)

        rebalanced_before = rebalanced()
        stopped_at = time.monotonic()
        busiest.process.send_signal(15)

        def moved() -> bool:
            conns = emu.stream_connections()
            return all(len([c for c in conns if c.namespace == ns]) > before[ns]
                       and open_counts(emu).get(ns) == 1 for ns in moving)

        wait_until(moved, 10, message=f"{moving} taken over")
        handover = time.monotonic() - stopped_at
        assert busiest.process.wait(10) == 0
        assert handover < 2.0, f"graceful handover took {handover:.2f} s"
        wait_until(lambda: sorted(spread(replicas) or []) == [2, 2], 10,
                   message="4 namespaces spread 2/2 over the 2 left")
        # Each survivor took exactly its share: none took more and gave some back.
        assert rebalanced() == rebalanced_before
        each_consumed_once(emu, webhook_receiver)

        # Started again: the work spreads back over three replicas.
        busiest.start()
        wait_until(lambda: sorted(spread(replicas) or []) == [1, 1, 2], 30,
                   message="4 namespaces spread 2/1/1 again")
        wait_until(lambda: open_counts(emu) == dict.fromkeys(NAMESPACES, 1), 10)
        each_consumed_once(emu, webhook_receiver)
        assert busiest.sample("eventd_lease_changes_total", reason="acquired") is not None

    assert overlaps(emu) == []
    assert max(sampler.most.values()) == 1, sampler.most
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def test_sigkill_of_a_leader_another_takes_over_with_the_gap_and_backfills_it(
        cluster, replicas, tmp_path, webhook_receiver):
    namespaces = ("acme", "globex")
    with Emulator(tick=0.02, namespaces=namespaces) as emu:
        rules = forward_rules(tmp_path, webhook_receiver)
        with (rules.parent / "backfill.yaml").open("w") as f:
            f.write(f"""
rules:
  - name: backfilled
    match: {{type: action, backfilled: true}}
    actions:
      - webhook:
          url: "{webhook_receiver.url}/backfilled"
          json: {{ns: "{{{{ event.namespace }}}}", uri: "{{{{ event.resource_uri }}}}"}}
""")
        for name in ("a", "b"):
            replicas.append(Replica(emu, rules.parent, tmp_path, name, cluster,
                                    namespaces=",".join(namespaces), ttl="2s").start())
        wait_until(lambda: sorted(spread_of(replicas, namespaces) or []) == [1, 1], 30,
                   message="one namespace each")
        leader = next(r for r in replicas if r.leads("globex"))
        survivor = next(r for r in replicas if r is not leader)
        emitted_at = time.time()
        last = emu.emit_event(type="container", namespace="globex")
        wait_until(lambda: any(r.path == "/hook" and r.json()["uuid"] == last["uuid"]
                               for r in webhook_receiver.requests), 15)
        # The leader saves its progress every TTL/3: wait until Redis has this event's, the
        # time it was sent (its own datetime, whole seconds; the arrival if that is earlier),
        # saved by the leader (not `released` by a replica that handed globex over to it: its
        # mark may be in the same second).
        sent = min(emitted_at, parse_datetime(last["datetime"]) or emitted_at)
        key = f"{cluster.name}:cluster:progress:globex"
        wait_until(lambda: cluster.client.hget(key, "released") == b"0" and float(
            cluster.client.hget(key, "at") or 0) >= sent - 0.01, 5)
        webhook_receiver.clear()
        killed_at = time.monotonic()
        leader.kill()
        # An action during the gap: the new owner recovers it over REST.
        service = emu.world.find("service", 0).uuid
        import requests
        answer = requests.post(f"{emu.rest_url}api/app/v1/user/service/{service}/redeploy/",
                               headers={"Authorization": emu.auth_header}, timeout=5)
        assert answer.status_code == 202
        action_uri = answer.headers["X-DockerCloud-Action-URI"]

        wait_until(lambda: survivor.leads("globex") and open_counts(emu).get("globex") == 1,
                   2 + 5 + 2, message="globex taken over")
        takeover = time.monotonic() - killed_at
        assert takeover < 2 + 5, f"takeover took {takeover:.2f} s"
        gap = wait_until(lambda: [r.json() for r in webhook_receiver.requests
                                  if r.path == "/gap" and r.json()["ns"] == "globex"], 10)
        assert len(gap) == 1
        # Measured from the last event the old owner processed, so at least the takeover time.
        assert float(gap[0]["gap"]) >= takeover - 0.5, (gap, takeover)
        assert float(gap[0]["gap"]) < takeover + 3, (gap, takeover)
        backfilled = wait_until(lambda: [r.json() for r in webhook_receiver.requests
                                         if r.path == "/backfilled"
                                         and r.json()["uri"] == action_uri], 15)
        assert backfilled[0]["ns"] == "globex"
        assert survivor.sample("eventd_lease_changes_total", namespace="globex",
                               reason="takeover") == 1.0
        assert overlaps(emu) == []


def spread_of(replicas: list[Replica], namespaces: tuple[str, ...]) -> list[int] | None:
    counts = [sum(r.leads(ns) for ns in namespaces) for r in replicas if r.alive()]
    return counts if sum(counts) == len(namespaces) else None


def test_redis_unreachable_replicas_stop_consuming_before_their_leases_end_and_resume(
        replicas, tmp_path, webhook_receiver):
    from tests.cluster_helpers import PrivateRedis

    private = PrivateRedis(tmp_path).start()
    try:
        import redis

        client = redis.Redis.from_url(private.url, socket_timeout=1)
        cluster = Cluster(client, "down", private.url)
        namespaces = ("acme", "globex")
        with Emulator(tick=0.02, namespaces=namespaces) as emu:
            rules = forward_rules(tmp_path, webhook_receiver)
            for name in ("a", "b"):
                replicas.append(Replica(emu, rules, tmp_path, name, cluster,
                                        namespaces=",".join(namespaces), ttl="3s").start())
            wait_until(lambda: sorted(spread_of(replicas, namespaces) or []) == [1, 1], 30)
            wait_until(lambda: open_counts(emu) == dict.fromkeys(namespaces, 1), 10)
            # When each lease ends in Redis if nobody renews it from now on.
            now = time.monotonic()
            ends = {ns: now + client.pttl(f"down:cluster:lease:{ns}") / 1000 for ns in namespaces}
            private.pause()
            paused_at = time.monotonic()
            wait_until(lambda: open_counts(emu) == {}, 5, message="both streams closed")
            for conn in emu.stream_connections():
                assert conn.closed is not None and conn.closed < ends[conn.namespace], \
                    (conn, ends, paused_at)
            wait_until(lambda: all(r.readyz()[0] == 503 for r in replicas), 15)
            status, body = replicas[0].readyz()
            assert body["checks"]["cluster"] == "unreachable", body
            assert all(not r.leads(ns) for r in replicas for ns in namespaces)
            assert sum(r.sample("eventd_lease_changes_total", namespace=ns,
                                reason="unreachable") or 0
                       for r in replicas for ns in namespaces) == 2

            private.resume()
            wait_until(lambda: open_counts(emu) == dict.fromkeys(namespaces, 1), 15,
                       message="streams consumed again")
            wait_until(lambda: all(r.readyz()[0] == 200 for r in replicas), 10)
            # The first replica back may take both streams and then hand one over to even out
            # the replicas: an event sent during that handover lies in the gap it announces (a
            # container event is not backfilled), so wait until each replica holds one.
            wait_until(lambda: sorted(spread_of(replicas, namespaces) or []) == [1, 1], 30,
                       message="one stream per replica again")
            wait_until(lambda: open_counts(emu) == dict.fromkeys(namespaces, 1), 10,
                       message="each stream consumed once after the handover")
            each = {ns: emu.emit_event(type="container", namespace=ns)["uuid"]
                    for ns in namespaces}
            wait_until(lambda: sorted(r.json()["uuid"] for r in webhook_receiver.requests
                                      if r.path == "/hook") == sorted(each.values()), 15)
            assert overlaps(emu) == []
        client.close()
    finally:
        for replica in replicas:
            replica.stop()
        private.stop()


def test_a_standby_is_ready_and_eventd_status_prints_the_cluster(
        cluster, replicas, tmp_path, webhook_receiver):
    import json
    import os
    import subprocess
    import sys

    namespaces = ("acme", "globex")
    with Emulator(tick=0.02, namespaces=namespaces) as emu:
        rules = forward_rules(tmp_path, webhook_receiver)
        for name in ("a", "b", "c"):
            replicas.append(Replica(emu, rules, tmp_path, name, cluster,
                                    namespaces=",".join(namespaces)).start())
        wait_until(lambda: sorted(spread_of(replicas, namespaces) or []) == [0, 1, 1], 30)
        standby = next(r for r in replicas if not any(r.leads(ns) for ns in namespaces))
        status, body = wait_until(lambda: (lambda s: s if s[0] == 200 else None)(
            standby.readyz()), 10, message="the standby is ready")
        assert body["checks"]["stream"] == "standby" and body["checks"]["cluster"] == "ok"
        assert all(r.readyz()[1]["checks"]["stream"] == "ok" for r in replicas
                   if r is not standby)

        env = {"PATH": os.environ.get("PATH", ""), "DOCKERCLOUD_NAMESPACE": "acme,globex",
               "EVENTD_STORE": cluster.url, "EVENTD_CLUSTER": cluster.name}

        def status_json() -> dict:
            done = subprocess.run([sys.executable, "-m", "eventd", "status", "--json"], env=env,
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        def settled() -> dict | None:
            body = status_json()
            holds = [r.get("namespaces") for r in body["replicas"].values()]
            ready = all(r.get("ready") for r in body["replicas"].values())
            return body if sorted(map(len, holds)) == [0, 1, 1] and ready else None

        body = wait_until(settled, 10, interval=0.3,
                          message="heartbeats show the spread, every replica ready")
        assert len(body["replicas"]) == 3
        holders = {s["namespace"]: s["holder"] for s in body["streams"]}
        assert set(holders) == set(namespaces)
        for namespace, holder in holders.items():
            assert namespace in body["replicas"][holder]["namespaces"]
        assert body["spool"] == {"pending": 0, "deadletters": 0}
        assert all(info["ready"] for info in body["replicas"].values())

        table = subprocess.run([sys.executable, "-m", "eventd", "status"], env=env,
                               capture_output=True, text=True, timeout=30)
        assert table.returncode == 0, table.stderr
        assert f"cluster {cluster.name}: 3 replica(s)" in table.stdout
        assert "(standby)" in table.stdout
        assert "spool: 0 pending, 0 dead letters" in table.stdout
        for namespace, holder in holders.items():
            assert any(line.startswith(namespace) and holder in line
                       for line in table.stdout.splitlines()), table.stdout

        no_store = subprocess.run([sys.executable, "-m", "eventd", "status"],
                                  env={"PATH": env["PATH"]}, capture_output=True, text=True,
                                  timeout=30)
        assert no_store.returncode == 2 and "--store" in no_store.stderr
