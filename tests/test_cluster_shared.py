"""Replicas sharing the Redis store: nothing accepted lost or sent twice across a failover, and
the throttle and the REST limit holding across replicas.

Every replica's spool, throttle windows and REST limits are in the one Redis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventd.emulator import Emulator
from tests.cluster_helpers import Cluster, Replica, cluster_fixture, open_counts, overlaps, replicas_fixture
from tests.daemon_helpers import forward_rules, write_rules
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from cluster_fixture()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    yield from replicas_fixture()


def start_two(emu: Emulator, rules: Path, tmp_path: Path, cluster: Cluster,
              replicas: list[Replica], namespaces: tuple[str, ...]) -> None:
    """Replicas a and b of `cluster`, consuming `namespaces`."""
    for name in ("a", "b"):
        replicas.append(Replica(emu, rules, tmp_path, name, cluster,
                                namespaces=",".join(namespaces)).start())


def test_sigkill_of_the_leader_loses_nothing_accepted_and_repeats_nothing_with_a_new_key(
        cluster, replicas, tmp_path, webhook_receiver):
    with Emulator(tick=0.02, namespaces=("acme",)) as emu:
        rules = forward_rules(tmp_path, webhook_receiver.url)
        for name in ("a", "b"):
            replicas.append(Replica(emu, rules, tmp_path, name, cluster, namespaces="acme").start())
        wait_until(lambda: all(r.readyz()[0] == 200 for r in replicas)
                   and len(cluster.client.smembers(f"{cluster.name}:cluster:replicas")) == 2, 30,
                   message="both replicas up")
        leader = wait_until(lambda: next((r for r in replicas if r.leads("acme")), None), 30)
        other = next(r for r in replicas if r is not leader)
        webhook_receiver.stop()  # the receiver is down
        sent = [emu.emit_event(type="container", namespace="acme")["uuid"] for _ in range(30)]
        wait_until(lambda: leader.sample("eventd_spool_pending") == 30.0, 20,
                   message="the leader's spool holds the 30 accepted actions")
        leader.kill()
        wait_until(lambda: other.leads("acme") and open_counts(emu).get("acme") == 1, 2 + 5 + 3,
                   message="the other replica took the stream")
        webhook_receiver.start()
        sent += [emu.emit_event(type="container", namespace="acme")["uuid"] for _ in range(30)]

        def keys_by_uuid() -> dict[str, set[str]]:
            found: dict[str, set[str]] = defaultdict(set)
            for request in webhook_receiver.requests:
                found[request.json()["uuid"]].add(request.header("Idempotency-Key") or "")
            return found

        wait_until(lambda: set(keys_by_uuid()) == set(sent), 60,
                   message="all 60 actions delivered")
        assert all(len(keys) == 1 for keys in keys_by_uuid().values()), keys_by_uuid()
        assert overlaps(emu) == []


def test_the_throttle_and_the_rest_limit_hold_across_two_replicas(
        cluster, replicas, tmp_path, webhook_receiver):
    namespaces = ("acme", "globex")
    with Emulator(tick=0.02, namespaces=namespaces) as emu:
        service = emu.world.find("service", 0).uuid
        rules = write_rules(tmp_path / "rules", f"""
            rules:
              - name: once-a-minute
                match: {{type: container, state: Running}}
                throttle: {{key: "{{{{ event.type }}}}", window: 1m}}
                actions:
                  - webhook: {{url: "{webhook_receiver.url}/t", json: {{ns: "{{{{ event.namespace }}}}"}}}}
              - name: redeploy
                match: {{type: container, state: Stopped}}
                actions:
                  - dockercloud: {{call: redeploy, target: "/api/app/v1/user/service/{service}/"}}
            """)
        for name in ("a", "b"):
            replicas.append(Replica(emu, rules, tmp_path, name, cluster,
                                    namespaces=",".join(namespaces)).start())
        wait_until(lambda: all(sum(r.leads(ns) for ns in namespaces) == 1 for r in replicas), 30,
                   message="one namespace each")
        # Both replicas see a Running container event: one webhook in the window.
        for namespace in namespaces:
            emu.emit_event(type="container", state="Running", namespace=namespace)
        wait_until(lambda: sum(r.sample("eventd_actions_total", kind="webhook",
                                        outcome="throttled") or 0 for r in replicas) == 1, 20)
        # The other one's webhook is delivered (after the throttle decision, on its own thread).
        wait_until(lambda: [r for r in webhook_receiver.requests if r.path == "/t"], 20)
        assert len([r for r in webhook_receiver.requests if r.path == "/t"]) == 1
        # Six redeploys of one service asked for, three by each replica: at most 3 REST calls.
        for _ in range(3):
            for namespace in namespaces:
                emu.emit_event(type="container", state="Stopped", namespace=namespace)
        wait_until(lambda: sum(r.sample("eventd_actions_total", kind="dockercloud",
                                        outcome="skipped") or 0 for r in replicas) >= 3, 30)
        redeploys = [c for c in emu.rest_calls() if c.method == "POST"
                     and c.path.endswith(f"/service/{service}/redeploy/")]
        assert len(redeploys) == 3, [c.path for c in redeploys]


def test_a_failover_of_the_redis_primary_under_a_running_cluster(replicas, tmp_path,
                                                                  webhook_receiver):
    """Sentinel promotes the replica, then the old primary is killed: the streams are consumed
    again, one consumer each at every moment, and every event after it is delivered once."""
    from tests.redis_server import SentinelSet

    namespaces = ("acme", "globex")
    with SentinelSet(tmp_path / "sentinel") as redis_set, \
            Emulator(tick=0.02, namespaces=namespaces) as emu:
        cluster = Cluster(redis_set.replica.client(), "sentinel", redis_set.url)
        rules = forward_rules(tmp_path, webhook_receiver.url)
        start_two(emu, rules, tmp_path, cluster, replicas, namespaces)
        wait_until(lambda: open_counts(emu) == dict.fromkeys(namespaces, 1), 30)
        before = [emu.emit_event(type="container", namespace=ns)["uuid"] for ns in namespaces]
        wait_until(lambda: {r.json()["uuid"] for r in webhook_receiver.requests} == set(before),
                   20, message="events before the failover delivered")
        redis_set.failover()
        redis_set.primary.kill()
        wait_until(lambda: all(r.readyz()[0] == 200 for r in replicas), 30,
                   message="both replicas ready on the new primary")
        wait_until(lambda: open_counts(emu) == dict.fromkeys(namespaces, 1), 30)
        after = [emu.emit_event(type="container", namespace=ns)["uuid"] for ns in namespaces]
        wait_until(lambda: {r.json()["uuid"] for r in webhook_receiver.requests}
                   >= set(before + after), 30, message="events after the failover delivered")
        keys: dict[str, set[str]] = defaultdict(set)
        for request in webhook_receiver.requests:
            keys[request.json()["uuid"]].add(request.header("Idempotency-Key") or "")
        assert all(len(k) == 1 for k in keys.values()), keys
        assert overlaps(emu) == []
        cluster.client.close()


def test_an_event_read_under_a_lease_an_older_holding_took_back_is_delivered(
        cluster, replicas, tmp_path, webhook_receiver):
    """What a failover that lost the last lease writes does (the failover test's flake under
    load: b handed globex over, a took it, the promoted replica had neither write): the lease
    reads as the other replica's, with an older token, until it expires. The holder's event
    read meanwhile is accepted (nothing newer can be ahead of it) and delivered by the
    stream's next holder, not refused and lost: a container event is in no backfill."""
    from eventd.cluster.keys import Keys

    with Emulator(tick=0.02, namespaces=("acme", "globex")) as emu:
        rules = forward_rules(tmp_path, webhook_receiver.url)
        start_two(emu, rules, tmp_path, cluster, replicas, ("acme", "globex"))
        wait_until(lambda: all(sum(r.leads(ns) for ns in ("acme", "globex")) == 1
                               for r in replicas), 30, message="one namespace each")
        holder = next(r for r in replicas if r.leads("globex"))
        key = Keys(cluster.name).lease("globex")
        other = cluster.holder("acme")  # the other replica
        assert other is not None and other != cluster.holder("globex")
        token = int(cluster.client.get(key).decode().rpartition(":")[2])
        cluster.client.set(key, f"{other}:{token - 1}", px=2000)  # the older holding is back
        uuid = emu.emit_event(type="container", namespace="globex")["uuid"]
        wait_until(lambda: uuid in {r.json()["uuid"] for r in webhook_receiver.requests}, 30,
                   message="the event read under the lease taken back delivered")
        assert not holder.sample("eventd_dropped_total", kind="webhook", reason="lease_lost")


def test_a_replica_starting_beside_a_busy_one_does_not_send_its_actions_again(
        cluster, replicas, tmp_path, webhook_receiver):
    with Emulator(tick=0.02, namespaces=("acme",)) as emu:
        rules = forward_rules(tmp_path, webhook_receiver.url)
        first = Replica(emu, rules, tmp_path, "first", cluster, namespaces="acme").start()
        replicas.append(first)
        wait_until(lambda: first.leads("acme") and first.readyz()[0] == 200, 30)
        webhook_receiver.stall()  # the first replica's delivery hangs on its first action
        sent = [emu.emit_event(type="container", namespace="acme")["uuid"] for _ in range(10)]
        wait_until(lambda: first.sample("eventd_spool_pending") == 10.0, 20)
        second = Replica(emu, rules, tmp_path, "second", cluster, namespaces="acme").start()
        replicas.append(second)
        wait_until(lambda: second.readyz()[0] == 200, 30, message="the second one is a standby")
        assert first.leads("acme") and not second.leads("acme")
        webhook_receiver.stall(False)
        wait_until(lambda: {r.json()["uuid"] for r in webhook_receiver.requests} == set(sent), 60)
        wait_until(lambda: first.sample("eventd_spool_pending") == 0.0, 30)
        uuids = [r.json()["uuid"] for r in webhook_receiver.requests]
        assert len(uuids) == len(sent), f"{len(uuids) - len(sent)} sent twice"
        assert not second.sample("eventd_actions_total", kind="webhook", outcome="success")
