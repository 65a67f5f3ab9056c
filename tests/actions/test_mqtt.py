"""The `mqtt` kind against real Mosquitto brokers: QoS 1 and 2, retain, user properties with
the job's id, topics from event data, the gate, Maximum Packet Size, a broker down and back."""

from __future__ import annotations

import secrets

import pytest

from eventd.actions.mqtt import MqttAction, topic_problems
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.gate import GateRefused
from eventd.stores.sqlite import SqliteStore
from tests.actions import attempt, make_context, make_job, sample
from tests.bus_clients import MqttCollector
from tests.bus_servers import MosquittoServer, TcpProxy, shared_mqtt
from tests.waiting import wait_until


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "state")
    yield s
    s.close()


def build(metrics, store):
    context = make_context(metrics)
    kind = MqttAction(context)
    dispatcher = Dispatcher(context, store, {"mqtt": kind}, initial_wait=0.02, max_wait=0.2)
    dispatcher.start()
    return dispatcher, kind


def stop(dispatcher, kind):
    dispatcher.close(2)
    kind.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_each_job_is_acknowledged_with_its_id_and_user_properties(metrics, store, qos):
    url = shared_mqtt()
    base = f"t{secrets.token_hex(4)}"
    collector = MqttCollector(url, f"{base}/#")
    dispatcher, kind = build(metrics, store)
    options = {"url": url, "topic": f"{base}/events", "qos": qos,
               "properties": {"rule": "r1"}}
    try:
        for n in range(300):
            assert dispatcher.submit(make_job(kind, options, job_id=f"id-{n:05d}"))
        assert dispatcher.wait_idle(30)
        wait_until(lambda: len(collector.ids()) >= 300, 15)
    finally:
        stop(dispatcher, kind)
        collector.close()
    assert collector.ids() == [f"id-{n:05d}" for n in range(300)]  # in order, once each
    topic, payload, props, _ = collector.messages[0]
    assert topic == f"{base}/events" and props["rule"] == "r1"
    assert b'"rule":"rule-a"' in payload
    assert sample(metrics, "eventd_actions_total", kind="mqtt", outcome="success") == 300


def test_retain_keeps_the_last_message_for_a_later_subscriber(metrics, store):
    url = shared_mqtt()
    topic = f"t{secrets.token_hex(4)}/state"
    dispatcher, kind = build(metrics, store)
    try:
        assert dispatcher.submit(make_job(kind, {"url": url, "topic": topic, "retain": True,
                                                 "body": "Stopped"}))
        assert dispatcher.wait_idle(10)
    finally:
        stop(dispatcher, kind)
    collector = MqttCollector(url, topic)
    try:
        wait_until(lambda: collector.messages, 10)
        assert collector.messages[0][1:2] == (b"Stopped",) and collector.messages[0][3]
    finally:
        collector.client.publish(topic, b"", retain=True)  # clear it
        collector.close()


@pytest.mark.parametrize("topic, problem", [
    ("a/+/b", "wildcard"), ("a/#", "wildcard"), ("$SYS/broker", "keeps for itself"),
    ("a\x00b", "control character"), ("", "empty")])
def test_a_topic_that_is_no_plain_topic_is_refused(topic, problem):
    assert problem in " ".join(topic_problems(topic))


def test_a_hostile_topic_or_property_from_an_event_is_a_dead_letter(metrics, store):
    url = shared_mqtt()
    dispatcher, kind = build(metrics, store)
    try:
        for options in ({"url": url, "topic": "a/#"},
                        {"url": url, "topic": "$SYS/broker/x"},
                        {"url": url, "topic": "ok/x", "properties": {"p": "a\nb"}}):
            assert dispatcher.submit(make_job(kind, options))
        assert dispatcher.wait_idle(10)
    finally:
        stop(dispatcher, kind)
    reasons = " | ".join(dead.reason for dead in store.deadletter_list())
    assert "wildcard" in reasons and "keeps for itself" in reasons and "line break" in reasons


def test_the_gate_checks_host_and_credentials_in_clear(metrics):
    kind = MqttAction(make_context(metrics))
    try:
        job = make_job(kind, {"url": "mqtt://eventd:secret@broker.example", "topic": "a"})
        with pytest.raises(GateRefused, match="credentials would go in clear") as refused:
            attempt(kind, job)
        assert "secret" not in str(refused.value) + job.target + kind.describe(job)
    finally:
        kind.close()
    assert MqttAction.validate({"url": "mqtt://h", "topic": "a/+"}) == [
        "topic 'a/+' holds a wildcard (+ or #): one publishes to one topic"]
    assert MqttAction.validate({"url": "nats://h", "topic": "a"}) == [
        "url: url must be a mqtt:// or mqtts:// URL"]


def test_a_message_over_the_packet_size_is_a_dead_letter_with_the_reason(metrics, store):
    with MosquittoServer(max_packet_size=1024) as server:
        collector = MqttCollector(server.url, "big/#")
        dispatcher, kind = build(metrics, store)
        options = {"url": server.url, "topic": "big/x"}
        try:
            assert dispatcher.submit(make_job(kind, options, job_id="small-1"))
            assert dispatcher.submit(make_job(kind, {**options, "body": "x" * 5000},
                                              job_id="big"))
            assert dispatcher.submit(make_job(kind, options, job_id="small-2"))
            assert dispatcher.wait_idle(15)
            wait_until(lambda: len(collector.ids()) >= 2, 10)
        finally:
            stop(dispatcher, kind)
            collector.close()
        (dead,) = store.deadletter_list()
        assert dead.job.id == "big"
        assert "over the server's Maximum Packet Size of 1024 bytes" in dead.reason
        assert collector.ids() == ["small-1", "small-2"]


def test_broker_unreachable_at_start_then_cut_mid_burst_loses_nothing(metrics, store):
    # eventd reaches the broker through a proxy the test cuts; the subscriber is connected to
    # the broker itself throughout, so what it sees is everything the broker accepted.
    with MosquittoServer() as server:
        proxy = TcpProxy(server.port)
        collector = MqttCollector(server.url, "burst/#")
        dispatcher, kind = build(metrics, store)
        options = {"url": f"mqtt://127.0.0.1:{proxy.port}", "topic": "burst/x"}
        try:
            proxy.cut()
            for n in range(200):
                assert dispatcher.submit(make_job(kind, options, job_id=f"a-{n:05d}"))
            wait_until(lambda: dispatcher.down_targets() == [
                f"mqtt:mqtt://127.0.0.1:{proxy.port}"], 15)
            proxy.restore()
            assert dispatcher.wait_idle(60)
            for n in range(2000):
                assert dispatcher.submit(make_job(kind, options, job_id=f"b-{n:05d}"))
            wait_until(lambda: len(collector.ids()) >= 400, 30, 0.01)
            proxy.cut()  # PUBACKs in flight are lost: those messages are published again
            proxy.restore()
            assert dispatcher.wait_idle(120)
            expected = {f"a-{n:05d}" for n in range(200)} | {f"b-{n:05d}" for n in range(2000)}
            try:
                wait_until(lambda: set(collector.ids()) >= expected, 60, 0.1)
            except AssertionError:
                missing = sorted(expected - set(collector.ids()))
                raise AssertionError(f"{len(missing)} ids never arrived: {missing[:5]}, "
                                     f"{len(collector.ids())} messages") from None
        finally:
            stop(dispatcher, kind)
            collector.close()
            proxy.close()
        ids = collector.ids()
        assert ids[:200] == [f"a-{n:05d}" for n in range(200)]  # in order once back
        assert set(ids) == expected  # the de-duplicated view (distinct eventd-id): each once
        assert sample(metrics, "eventd_actions_total", kind="mqtt", outcome="success") == 2200
        assert not store.deadletter_list()


def test_a_topic_or_property_that_is_no_utf8_is_a_dead_letter_not_a_retry(metrics, store):
    url = shared_mqtt()
    base = f"t{secrets.token_hex(4)}"
    collector = MqttCollector(url, f"{base}/#")
    dispatcher, kind = build(metrics, store)
    try:
        bad_topic = make_job(kind, {"url": url, "topic": f"{base}/\ud800"}, job_id="bad-topic")
        bad_prop = make_job(kind, {"url": url, "topic": f"{base}/ok",
                                   "properties": {"p": "\udfff"}}, job_id="bad-prop")
        good = make_job(kind, {"url": url, "topic": f"{base}/ok"}, job_id="good")
        for job in (bad_topic, bad_prop, good):
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(15)
        wait_until(lambda: collector.ids() == ["good"], 10)
    finally:
        stop(dispatcher, kind)
        collector.close()
    reasons = {d.job.id: d.reason for d in store.deadletter_list()}
    assert set(reasons) == {"bad-topic", "bad-prop"}
    assert all("not valid UTF-8" in reason for reason in reasons.values())
