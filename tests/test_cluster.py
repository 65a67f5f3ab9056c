"""Leases, fencing tokens, quotas and namespaces, against a real Redis and the emulator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from eventd.cluster.keys import Keys
from eventd.cluster.leases import Leases
from eventd.cluster.membership import Membership, quota
from eventd.emulator import Emulator
from eventd.errors import ConfigError
from eventd.events import Received
from eventd.settings import Settings, parse_namespaces
from eventd.sources.dockercloud.namespaces import OWN, in_namespace, label, tagging
from tests.cluster_helpers import Cluster, cluster_fixture
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from cluster_fixture()


# -- leases ------------------------------------------------------------------------------------
def test_a_lease_has_one_holder_and_each_new_holder_a_larger_fencing_token(cluster):
    keys = Keys(cluster.name)
    a = Leases(cluster.client, keys, "a", ttl=0.3)
    b = Leases(cluster.client, keys, "b", ttl=0.3)
    token = a.acquire("acme")
    assert token == 1
    assert a.acquire("acme") == 1  # already ours: renewed, same token
    assert b.acquire("acme") is None
    assert a.renew("acme", token)
    assert not b.renew("acme", token)  # b's value is not in the key
    # Never renewed again: it ends, b takes it with the next token.
    taken = wait_until(lambda: b.acquire("acme"), 3, message="lease expired")
    assert taken == 2
    assert b.holder("acme") == ("b", 2)
    # The old holder is fenced off: it cannot renew, record progress or free b's lease.
    assert not a.renew("acme", 1)
    assert not a.record("acme", 1, time.time())
    assert not a.release("acme", 1, time.time())
    assert b.holder("acme") == ("b", 2)
    assert a.progress("acme").at is None
    assert b.record("acme", 2, 1234.5)
    assert b.progress("acme").at == 1234.5 and not b.progress("acme").released
    assert b.release("acme", 2, 1300.0)
    assert b.holder("acme") is None
    progress = a.progress("acme")
    assert (progress.at, progress.holder, progress.released) == (1300.0, "b", True)
    assert a.acquire("acme") == 3


def test_streams_spread_evenly_and_the_remainder_stays_where_it_is():
    def live(**held: int) -> dict:
        return {r: {"namespaces": [f"ns{i}" for i in range(n)]} for r, n in held.items()}

    three = live(r1=1, r2=1, r3=2)
    assert [quota(r, three, 4, n) for r, n in (("r1", 1), ("r2", 1), ("r3", 2))] == [1, 1, 2]
    fresh = live(r1=0, r2=0, r3=0)
    assert [quota(r, fresh, 4, 0) for r in ("r1", "r2", "r3")] == [2, 1, 1]
    assert [quota(r, fresh, 6, 0) for r in ("r1", "r2", "r3")] == [2, 2, 2]
    # A replica joining a leader of one stream: the leader keeps it.
    assert quota("a", live(a=0, b=1), 1, 0) == 0 and quota("b", live(a=0, b=1), 1, 1) == 1
    assert quota("r9", {}, 4, 0) == 4  # alone (its own heartbeat not seen yet): all of them


def test_a_replica_is_live_while_its_heartbeat_lasts(cluster):
    keys = Keys(cluster.name)
    one = Membership(cluster.client, keys, "one", ttl=0.3)
    two = Membership(cluster.client, keys, "two", ttl=30)
    assert one.heartbeat({"namespaces": ["acme"]})
    assert not one.heartbeat({"namespaces": ["acme"]})  # known already
    two.heartbeat({})
    assert set(two.live()) == {"one", "two"}
    assert two.live()["one"] == {"namespaces": ["acme"]}
    wait_until(lambda: set(two.live()) == {"two"}, 3, message="one's heartbeat expired")
    assert cluster.client.smembers(keys.replicas) == {b"two"}  # pruned
    two.leave()
    assert two.live() == {}


# -- namespaces ----------------------------------------------------------------------------------
def test_dockercloud_namespace_takes_a_list():
    assert parse_namespaces("acme, globex,,acme/") == ("acme", "globex")
    assert parse_namespaces("") == ()
    with pytest.raises(ConfigError, match="DOCKERCLOUD_NAMESPACE: 'a b'"):
        parse_namespaces("acme,a b")
    settings = Settings.from_env({"DOCKERCLOUD_NAMESPACE": "acme,globex"})
    assert settings.stream_namespaces == ("acme", "globex")
    assert settings.stream_url_for("globex") == "wss://ws.cloud.docker.com/api/audit/v1/globex/events/"
    one = Settings.from_env({"DOCKERCLOUD_NAMESPACE": "acme"})
    assert one.stream_url == "wss://ws.cloud.docker.com/api/audit/v1/acme/events/"
    assert Settings.from_env({}).stream_namespaces == (None,)
    assert label(None) == OWN and label("acme") == "acme"


def test_a_path_without_a_namespace_is_called_in_the_events():
    assert in_namespace("/api/app/v1/service/u1/", "acme") == "/api/app/v1/acme/service/u1/"
    assert in_namespace("/api/infra/v1/node/n1/", "acme") == "/api/infra/v1/acme/node/n1/"
    assert in_namespace("/api/app/v1/globex/service/u1/", "acme") == "/api/app/v1/globex/service/u1/"
    assert in_namespace("/api/audit/v1/action/a1/", "acme") == "/api/audit/v1/action/a1/"
    assert in_namespace("/api/app/v1/service/u1/", None) == "/api/app/v1/service/u1/"


def test_events_are_tagged_with_their_stream_namespace():
    seen: list[list[Received]] = []
    tagging(seen.append, "acme")([Received({"type": "container"}, 1.0)])
    assert seen[0][0].event["namespace"] == "acme"
    untagged = tagging(seen.append, None)
    untagged([Received({"type": "container"}, 1.0)])
    assert "namespace" not in seen[1][0].event


# -- one process, several namespaces -------------------------------------------------------------
def test_one_daemon_consumes_every_namespace_and_acts_in_each_events_namespace(
        tmp_path, webhook_receiver):
    with Emulator(tick=0.02, namespaces=("acme", "globex")) as emu:
        service = emu.world.find("service", 0).uuid
        rules = write_rules(tmp_path / "rules", f"""
            rules:
              - name: globex-only
                match: {{type: container, namespace: globex}}
                actions:
                  - webhook: {{url: "{webhook_receiver.url}/g", json: {{ns: "{{{{ event.namespace }}}}"}}}}
              - name: redeploy-in-acme
                match: {{type: container, namespace: acme, state: Stopped}}
                actions:
                  - dockercloud: {{call: redeploy, target: "/api/app/v1/service/{service}/"}}
            """)
        env = emulator_env(emu, DOCKERCLOUD_NAMESPACE="acme,globex")
        daemon = start_daemon(emu, rules, tmp_path / "state", env=env)
        try:
            wait_until(lambda: emu.namespace_counts() == {"acme": 1, "globex": 1}, 10)
            assert daemon.metrics.registry.get_sample_value(
                "eventd_stream_leader", {"namespace": "globex"}) == 1.0
            emu.emit_event(type="container", namespace="globex")
            emu.emit_event(type="container", namespace="acme", state="Running")
            wait_until(lambda: len(webhook_receiver.requests) == 1, 10)
            assert webhook_receiver.requests[0].json() == {"ns": "globex"}
            emu.emit_event(type="container", namespace="acme", state="Stopped")
            calls = wait_until(lambda: [c for c in emu.rest_calls() if c.method == "POST"], 10)
            assert [c.path for c in calls] == [f"/api/app/v1/acme/service/{service}/redeploy/"]
            assert daemon.wait_idle(10)
            assert len(webhook_receiver.requests) == 1  # acme's events did not match
        finally:
            daemon.stop()


class _Consumer:
    """Stands in for a stream consumer: the coordinator only starts, fences and closes it."""

    connected = True

    def __init__(self) -> None:
        self.stopped = threading.Event()

    def resume_after(self, since: float) -> None:
        self.since = since

    def run(self) -> None:
        self.stopped.wait(30)

    def close(self) -> None:
        self.stopped.set()


def test_a_replica_at_its_quota_takes_a_stream_only_after_two_consecutive_free_ticks(cluster):
    from eventd.cluster.coordinator import Coordinator
    from eventd.cluster.metrics import ClusterMetrics
    from eventd.cluster.progress import Tracker
    from eventd.cluster.streams import Streams
    from eventd.ops.metrics import Metrics

    metrics = Metrics()
    streams = Streams(lambda ns, fence: _Consumer(), lambda consumer: consumer.run())
    coordinator = Coordinator(
        cluster.client, cluster=cluster.name, namespaces=("acme", "globex"), ttl=30,
        streams=streams, tracker=Tracker(), metrics=metrics,
        cluster_metrics=ClusterMetrics(metrics.registry, ["acme", "globex"]), info=dict,
        max_gap=900, replica_id="a")
    other = Membership(cluster.client, Keys(cluster.name), "b", ttl=30)
    other_leases = Leases(cluster.client, Keys(cluster.name), "b", ttl=30)
    try:
        other.heartbeat({})  # two live replicas: a's quota is 1
        coordinator._tick()
        assert coordinator.held() == ["acme"]  # globex seen free once: not taken
        token = other_leases.acquire("globex")
        other.leave()
        coordinator._tick()  # a alone (quota 2) tries globex: b still holds it
        other.heartbeat({})
        other_leases.release("globex", token, None)
        coordinator._tick()  # at its quota again; globex free in this tick only
        assert coordinator.held() == ["acme"]
        coordinator._tick()  # free twice in a row: nobody consumes it, so a takes it
        assert coordinator.held() == ["acme", "globex"]
    finally:
        streams.stop_all(2)
