"""The `amqp` kind against the machine's RabbitMQ: persistent confirmed messages with
message_id = job id, exchanges and routing keys, mandatory, the gate, max_message_size, and a
connection cut and restored through a TCP proxy of the test's own."""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess

import pytest

from eventd.actions.amqp import AmqpAction, routing_key_problems
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.gate import GateRefused
from eventd.errors import ConfigError
from eventd.stores.sqlite import SqliteStore
from tests.actions import attempt, make_context, make_job, sample
from tests.bus_clients import amqp_delete, amqp_drain, amqp_queue
from tests.bus_servers import TcpProxy, shared_amqp
from tests.waiting import wait_until


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "state")
    yield s
    s.close()


@pytest.fixture
def exchange():
    url = shared_amqp()
    name = f"x-{secrets.token_hex(4)}"
    queue = amqp_queue(url, name, "container.stopped")
    yield url, name, queue
    amqp_delete(url, name, queue)


def build(metrics, store):
    context = make_context(metrics)
    kind = AmqpAction(context)
    dispatcher = Dispatcher(context, store, {"amqp": kind}, initial_wait=0.02, max_wait=0.2)
    dispatcher.start()
    return dispatcher, kind


def stop(dispatcher, kind):
    dispatcher.close(2)
    kind.close()


def test_each_job_is_a_persistent_confirmed_message_with_its_id(metrics, store, exchange):
    url, name, queue = exchange
    dispatcher, kind = build(metrics, store)
    options = {"url": url, "exchange": name, "routing_key": "container.stopped",
               "headers": {"rule": "r1"}}
    try:
        for n in range(500):
            assert dispatcher.submit(make_job(kind, options, job_id=f"id-{n:05d}"))
        assert dispatcher.wait_idle(30)
    finally:
        stop(dispatcher, kind)
    messages = amqp_drain(url, queue)
    assert [m[0] for m in messages] == [f"id-{n:05d}" for n in range(500)]
    assert all(persistent for _, _, persistent in messages)
    assert b'"rule":"rule-a"' in messages[0][1]
    assert sample(metrics, "eventd_actions_total", kind="amqp", outcome="success") == 500


def test_mandatory_unroutable_is_a_dead_letter_and_not_mandatory_is_dropped_by_the_broker(
        metrics, store, exchange):
    url, name, queue = exchange
    dispatcher, kind = build(metrics, store)
    try:
        assert dispatcher.submit(make_job(kind, {"url": url, "exchange": name,
                                                 "routing_key": "nobody.listens",
                                                 "mandatory": True}, job_id="returned"))
        assert dispatcher.submit(make_job(kind, {"url": url, "exchange": name,
                                                 "routing_key": "nobody.listens"},
                                          job_id="dropped"))
        assert dispatcher.submit(make_job(kind, {"url": url, "exchange": name,
                                                 "routing_key": "container.stopped",
                                                 "mandatory": True}, job_id="routed"))
        assert dispatcher.wait_idle(15)
    finally:
        stop(dispatcher, kind)
    (dead,) = store.deadletter_list()
    assert dead.job.id == "returned"
    assert "312 NO_ROUTE" in dead.reason
    assert [m[0] for m in amqp_drain(url, queue)] == ["routed"]


def test_a_missing_exchange_is_the_dead_letter_of_its_messages_only(metrics, store, exchange):
    url, name, queue = exchange
    dispatcher, kind = build(metrics, store)
    try:
        jobs = [make_job(kind, {"url": url, "exchange": name if n != 3 else "no-such-exchange",
                                "routing_key": "container.stopped"}, job_id=f"j{n}")
                for n in range(8)]
        for job in jobs:
            assert dispatcher.submit(job)
        assert dispatcher.wait_idle(20)
    finally:
        stop(dispatcher, kind)
    (dead,) = store.deadletter_list()
    assert dead.job.id == "j3" and "no-such-exchange" in dead.reason
    assert sorted(m[0] for m in amqp_drain(url, queue)) == [f"j{n}" for n in range(8) if n != 3]


def test_a_message_over_max_message_size_is_a_dead_letter_with_the_reason(metrics, store,
                                                                          exchange):
    url, name, queue = exchange

    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed (apt-get install rabbitmq-server)")

    def set_limit(value):
        subprocess.run(["rabbitmqctl", "eval",
                        f"application:set_env(rabbit, max_message_size, {value})."],
                       check=True, capture_output=True, timeout=60)

    set_limit(4096)
    try:
        dispatcher, kind = build(metrics, store)
        options = {"url": url, "exchange": name, "routing_key": "container.stopped"}
        try:
            assert dispatcher.submit(make_job(kind, options, job_id="small-1"))
            assert dispatcher.submit(make_job(kind, {**options, "body": "x" * 10000},
                                              job_id="big"))
            assert dispatcher.submit(make_job(kind, options, job_id="small-2"))
            assert dispatcher.wait_idle(20)
        finally:
            stop(dispatcher, kind)
    finally:
        set_limit(134217728)
    (dead,) = store.deadletter_list()
    assert dead.job.id == "big"
    assert "max_message_size" in dead.reason and "4096" in dead.reason
    assert sorted(m[0] for m in amqp_drain(url, queue)) == ["small-1", "small-2"]


def test_routing_keys_from_event_data_and_check_time_problems():
    assert "control character" in " ".join(routing_key_problems("a\r\nb"))
    assert "longer than 255" in " ".join(routing_key_problems("k" * 256))
    assert AmqpAction.validate({"url": "amqp://h", "routing_key": "a",
                                "exchange": "{{ event.x }}"}) == [
        "exchange must be a plain name (letters, digits, - _ . :), without a template"]
    assert AmqpAction.validate({"url": "amqp://h/vhost", "routing_key": "a"}) == [
        "url names a server only: scheme://[user[:password]@]host[:port]"]


def test_the_gate_refuses_guest_credentials_in_clear_to_another_host(metrics):
    kind = AmqpAction(make_context(metrics))
    try:
        job = make_job(kind, {"url": "amqp://guest:guest@rabbit.example", "routing_key": "a"})
        with pytest.raises(GateRefused, match="credentials would go in clear"):
            attempt(kind, job)
        assert "guest:" not in job.target + kind.describe(job)
    finally:
        kind.close()


def test_connection_cut_then_restored_mid_burst_loses_nothing(metrics, store, exchange):
    url, name, queue = exchange
    proxy = TcpProxy(5672)
    proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}"
    dispatcher, kind = build(metrics, store)
    options = {"url": proxied, "exchange": name, "routing_key": "container.stopped"}
    try:
        proxy.cut()
        for n in range(100):
            assert dispatcher.submit(make_job(kind, options, job_id=f"a-{n:05d}"))
        wait_until(lambda: dispatcher.down_targets() == [f"amqp:amqp://127.0.0.1:{proxy.port}"],
                   15)
        proxy.restore()
        assert dispatcher.wait_idle(60)
        for n in range(2000):
            assert dispatcher.submit(make_job(kind, options, job_id=f"b-{n:05d}"))
        wait_until(lambda: sample(metrics, "eventd_actions_total", default=0, kind="amqp",
                                  outcome="success") >= 400, 30, 0.01)
        proxy.cut()
        proxy.restore()
        assert dispatcher.wait_idle(120)
    finally:
        stop(dispatcher, kind)
        proxy.close()
    ids = [m[0] for m in amqp_drain(url, queue)]
    assert ids[:100] == [f"a-{n:05d}" for n in range(100)]  # in order once back
    assert set(ids) == {f"a-{n:05d}" for n in range(100)} | {f"b-{n:05d}" for n in range(2000)}
    # RabbitMQ keeps no duplicate window: a confirm lost in the cut is published again; the
    # consumer's de-duplicated view (distinct message_id) holds each job once.
    assert len(ids) - len(set(ids)) <= 256


def test_the_start_check_names_an_exchange_that_does_not_exist(metrics, exchange, caplog):
    url, name, _ = exchange
    kind = AmqpAction(make_context(metrics))
    try:
        kind.preflight([{"url": url, "exchange": name, "routing_key": "a"},
                        {"url": url, "routing_key": "{{ event.type }}"}])  # the default one
        with pytest.raises(ConfigError) as missing:
            kind.preflight([{"url": url, "exchange": name, "routing_key": "a"},
                            {"url": url, "exchange": "no-such-exchange", "routing_key": "a"}])
        with caplog.at_level(logging.WARNING):  # a server down: eventd starts and spools
            kind.preflight([{"url": "amqp://u:hidden-pw@127.0.0.1:1", "exchange": "x",
                             "routing_key": "a"}])
    finally:
        kind.close()
    assert str(missing.value) == (
        "amqp amqp://127.0.0.1:5672: no exchange 'no-such-exchange' in vhost '/' (declare it "
        "first, or publish to the default exchange with exchange unset)")
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("eventd")]
    assert "amqp://127.0.0.1:1" in line and "starting anyway" in line
    assert "hidden-pw" not in line


def test_event_data_json_cannot_carry_is_a_dead_letter_not_a_retry_loop(metrics, store,
                                                                         exchange):
    url, name, queue = exchange
    dispatcher, kind = build(metrics, store)
    base = {"url": url, "exchange": name, "routing_key": "container.stopped"}
    try:
        assert dispatcher.submit(make_job(kind, {**base, "json": {"x": "\ud800"}},
                                          job_id="surrogate"))
        assert dispatcher.submit(make_job(kind, base, event={"type": "container", "n": 2 ** 64},
                                          job_id="bigint"))
        assert dispatcher.submit(make_job(kind, base, job_id="good"))
        assert dispatcher.wait_idle(15)
    finally:
        stop(dispatcher, kind)
    assert [m[0] for m in amqp_drain(url, queue)] == ["good"]
    reasons = {d.job.id: d.reason for d in store.deadletter_list()}
    assert reasons.keys() == {"surrogate", "bigint"}
    assert all("cannot be sent as JSON" in r for r in reasons.values())
