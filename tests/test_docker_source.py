"""The docker source: the event mapping, and the consumer against a real Docker Engine."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import docker
import pytest

from eventd.backoff import Backoff
from eventd.clients.docker import make_client
from eventd.errors import MalformedEvent
from eventd.events import Received
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from eventd.sources.base import LoopOptions
from eventd.sources.docker.consumer import EngineEvents
from eventd.sources.docker.mapping import engine_event
from tests.docker_engine import DockerEngine, SocketProxy, engine_workdir
from tests.waiting import wait_until

DIE = {
    "status": "die", "id": "7729ece6e89b", "from": "busybox",
    "Type": "container", "Action": "die",
    "Actor": {"ID": "7729ece6e89b", "Attributes": {
        "com.docker.compose.service": "web", "exitCode": "3", "image": "busybox",
        "name": "web-1"}},
    "scope": "local", "time": 1795794162, "timeNano": 1795794162788755016,
}


# -- mapping -------------------------------------------------------------------------------------
def test_mapping_keeps_the_engine_keys_and_adds_the_common_fields():
    event = engine_event(DIE)
    for key in ("Type", "Action", "Actor", "scope", "time", "timeNano", "status", "from"):
        assert event[key] == DIE[key]
    assert event["type"] == "container" and event["action"] == "die" and "state" not in event
    assert event["id"] == "7729ece6e89b" and event["name"] == "web-1"
    assert event["attributes"]["exitCode"] == "3"
    assert event["attributes"]["com.docker.compose.service"] == "web"
    assert event["resource_uri"] == "/docker/container/7729ece6e89b/"
    assert event["datetime"] == "2026-11-27T15:42:42.788755Z"


def test_action_detail_becomes_state():
    health = dict(DIE, Action="health_status: unhealthy")
    event = engine_event(health)
    assert (event["action"], event["state"]) == ("health_status", "unhealthy")
    execd = engine_event(dict(DIE, Action="exec_start: sh -c echo a:b"))
    assert (execd["action"], execd["state"]) == ("exec_start", "sh -c echo a:b")


def test_uuid_is_stable_and_tells_events_apart():
    assert engine_event(DIE)["uuid"] == engine_event(dict(DIE))["uuid"]
    others = [dict(DIE, timeNano=DIE["timeNano"] + 1), dict(DIE, Action="kill"),
              dict(DIE, Type="network"), dict(DIE, Actor={"ID": "other", "Attributes": {}})]
    uuids = {engine_event(e)["uuid"] for e in others} | {engine_event(DIE)["uuid"]}
    assert len(uuids) == 5


def test_name_falls_back_to_the_id_and_time_to_seconds():
    event = engine_event({"Type": "volume", "Action": "create", "time": 1795794162,
                          "Actor": {"ID": "data", "Attributes": {"driver": "local"}}})
    assert event["name"] == "data" and event["datetime"] == "2026-11-27T15:42:42.000000Z"


@pytest.mark.parametrize("raw, reason", [
    ([1], "not_object"), ({"Action": "die"}, "missing_type"), ({"Type": "container"}, "missing_type"),
    ({"Type": 3, "Action": "die"}, "missing_type"),
])
def test_what_is_not_an_engine_event(raw, reason):
    with pytest.raises(MalformedEvent) as caught:
        engine_event(raw)
    assert caught.value.reason == reason


# -- the consumer on a real Engine ---------------------------------------------------------------
class Collector:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Received]) -> None:
        with self.lock:
            self.events.extend(r.event for r in batch)

    def of(self, name: str, action: str | None = None) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("name") == name
                    and (action is None or e.get("action") == action)]

    def gaps(self) -> list[str]:
        with self.lock:
            return [e["state"] for e in self.events if e.get("type") == "eventd"]


FAST = LoopOptions(backoff=Backoff(0.05, 0.3), healthy_after=1.0)


def consumer(host: str, sink: Collector, metrics: Metrics, **kwargs) -> tuple[EngineEvents, threading.Event]:
    settings = Settings(docker_host=host)
    stopping = threading.Event()
    source = EngineEvents(host, partial(make_client, settings, 5.0), sink, metrics, stopping, FAST,
                          **kwargs)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    wait_until(lambda: source.connected, 10, message="connected to the Engine")
    source.thread = thread  # type: ignore[attr-defined]
    return source, stopping


def stop(source: EngineEvents, stopping: threading.Event) -> None:
    stopping.set()
    source.close()
    source.thread.join(5)  # type: ignore[attr-defined]
    assert not source.thread.is_alive()  # type: ignore[attr-defined]


def test_a_container_exit_arrives_mapped(docker_engine: DockerEngine, metrics: Metrics):
    sink = Collector()
    source, stopping = consumer(docker_engine.host, sink, metrics)
    try:
        docker_engine.run("src-exit3", ["sh", "-c", "exit 3"],
                          labels={"com.docker.compose.service": "web"})
        die = wait_until(lambda: sink.of("src-exit3", "die"), 10)[0]
        assert die["attributes"]["exitCode"] == "3"
        assert die["attributes"]["com.docker.compose.service"] == "web"
        assert die["resource_uri"] == f"/docker/container/{die['id']}/"
        assert [e["action"] for e in sink.of("src-exit3")][:3] == ["create", "start", "die"]
        assert sink.gaps() == ["connected"]
        assert metrics.registry.get_sample_value("eventd_stream_connected") == 1
    finally:
        stop(source, stopping)
        docker_engine.remove("src-exit3")
    assert metrics.registry.get_sample_value("eventd_stream_connected") == 0


def test_events_missed_while_the_link_was_down_are_replayed_through_since(
        docker_engine: DockerEngine, tmp_path: Path, metrics: Metrics):
    proxy = SocketProxy(docker_engine.socket, Path(f"/tmp/px{id(tmp_path) % 10**8}.sock"))
    sink = Collector()
    source, stopping = consumer(proxy.host, sink, metrics, ping_interval=0.5)
    try:
        docker_engine.run("src-before", ["true"])
        wait_until(lambda: sink.of("src-before", "die"), 10)
        proxy.cut()  # eventd's connection is gone; the Engine keeps running and recording
        wait_until(lambda: not source.connected, 5, message="the cut is noticed")
        docker_engine.run("src-during", ["sh", "-c", "exit 7"])
        with docker_engine.client() as client:
            wait_until(lambda: client.inspect_container("src-during")["State"]["Status"] == "exited", 10)
        proxy.restore()
        die = wait_until(lambda: sink.of("src-during", "die"), 10, message="replayed die")[0]
        assert die["attributes"]["exitCode"] == "7"
        assert source.replayed >= 3  # create, start, die of src-during at least
        # the overlap (the last event before the cut) comes again, with the same uuid
        with sink.lock:
            uuids = [e["uuid"] for e in sink.events if e.get("type") != "eventd"]
        assert len(uuids) == len(set(uuids)) + 1
        assert sink.gaps() == ["connected"], "a complete replay is not a gap"
        assert metrics.registry.get_sample_value("eventd_stream_reconnects_total",
                                                 {"reason": "dropped"}) >= 1
    finally:
        stop(source, stopping)
        proxy.close()
        docker_engine.remove("src-before", "src-during")


def test_a_cut_before_any_event_is_replayed_from_the_first_connection(
        docker_engine: DockerEngine, tmp_path: Path, metrics: Metrics):
    proxy = SocketProxy(docker_engine.socket, Path(f"/tmp/py{id(tmp_path) % 10**8}.sock"))
    sink = Collector()
    source, stopping = consumer(proxy.host, sink, metrics, ping_interval=0)
    try:
        proxy.cut()
        wait_until(lambda: not source.connected, 5, message="the cut is noticed")
        docker_engine.run("src-first", ["sh", "-c", "exit 9"])
        with docker_engine.client() as client:
            wait_until(lambda: client.inspect_container("src-first")["State"]["Status"] == "exited", 10)
        proxy.restore()
        die = wait_until(lambda: sink.of("src-first", "die"), 10, message="replayed die")[0]
        assert die["attributes"]["exitCode"] == "9"
        assert sink.gaps() == ["connected"]
    finally:
        stop(source, stopping)
        proxy.close()
        docker_engine.remove("src-first")


def test_an_engine_restart_is_a_gap_and_the_consumer_reconnects_by_itself(metrics: Metrics):
    # An Engine of its own: restarting the session's would disturb other tests.
    with engine_workdir("dkr") as workdir, DockerEngine(workdir) as engine:
        sink = Collector()
        source, stopping = consumer(engine.host, sink, metrics)
        try:
            engine.run("r-before", ["true"])
            wait_until(lambda: sink.of("r-before", "die"), 10)
            engine.restart()
            wait_until(lambda: sink.gaps() == ["connected", "disconnected", "connected"], 20,
                       message="gap events after the restart")
            engine.run("r-after", ["true"])
            wait_until(lambda: sink.of("r-after", "die"), 10, message="events after the restart")
            gap = [e for e in sink.events if e.get("type") == "eventd"][-1]
            assert gap["gap_seconds"] > 0
        finally:
            stop(source, stopping)


def test_stop_ends_a_blocked_read_quickly(docker_engine: DockerEngine, metrics: Metrics):
    source, stopping = consumer(docker_engine.host, Collector(), metrics)
    import time
    began = time.monotonic()
    stop(source, stopping)
    assert time.monotonic() - began < 2


def test_docker_py_is_what_talks_to_the_engine():
    assert docker.APIClient  # the SDK the issue names; the consumer uses APIClient.events


def test_engine_times_keep_their_nanoseconds():
    from eventd.sources.docker.consumer import engine_time_nano, since_text

    assert since_text(1795794162788755016) == "1795794162.788755016"
    assert since_text(1795794162000000005) == "1795794162.000000005"
    assert engine_time_nano("2026-11-27T15:42:42.788755016Z") == 1795794162788755016
    assert engine_time_nano("2026-11-27T16:42:42.5+01:00") == 1795794162500000000
    assert engine_time_nano("2026-11-27T15:42:42Z") == 1795794162000000000
    assert engine_time_nano("yesterday") is None and engine_time_nano(None) is None
