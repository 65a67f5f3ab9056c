"""eventd as a process publishing to a message bus while the broker goes away: down at
start, restarted mid-burst, eventd itself killed mid-burst; bad configuration in one line.
Nothing accepted is lost, and the broker's de-duplicated view holds each event once."""

from __future__ import annotations

import os
import secrets
import signal

import orjson
import pytest

from tests.bus_clients import nats_count, nats_messages, nats_stream
from tests.bus_servers import NatsServer
from tests.daemon_helpers import emulator_env, eventd_process, free_port, write_rules
from tests.test_postgres_faults import emit, metric, readiness, spooled_uuids, start, stop
from tests.waiting import wait_until

BURST = int(os.environ.get("EVENTD_BUS_BURST", "2000"))  # bench/bus.py --faults: 10,000


def nats_rules(tmp_path, url, prefix):
    return write_rules(tmp_path / "rules", f"""
        rules:
          - name: to-nats
            match: {{type: service}}
            actions:
              - nats: {{url: "{url}", subject: "{prefix}.{{{{ event.type }}}}"}}
        """)


def nats_uuids(url, name):
    """(event uuids in stream order, distinct job ids) of what the stream holds."""
    messages = nats_messages(url, name)
    return ([orjson.loads(data)["event"]["uuid"] for _, _, data in messages],
            {headers["Nats-Msg-Id"] for _, headers, _ in messages})


def test_nats_down_at_start_spools_says_so_and_delivers_in_order_when_back(emulator, tmp_path):
    with NatsServer() as server:
        name, prefix = nats_stream(server.url)
        server.stop()
        port = free_port()
        eventd = start(emulator, tmp_path, nats_rules(tmp_path, server.url, prefix), port)
        try:
            wait_until(lambda: emulator.connection_count >= 1, 30, 0.1, "eventd connected")
            sent = emit(emulator, 300)
            status, body = wait_until(lambda: (lambda r: r if "targets" in r[1].get(
                "checks", {}) else None)(readiness(port)), 30, 0.2, "/readyz names the target")
            assert body["checks"]["targets"] == f"down: nats:nats://127.0.0.1:{server.port}"
            assert status == 200  # ready: the messages wait in the spool
            wait_until(lambda: metric(port, "eventd_spool_pending") == 300, 30, 0.2,
                       "300 accepted into the spool")
            server.start()
            wait_until(lambda: nats_count(server.url, name) == 300, 90, 0.2, "all delivered")
            wait_until(lambda: "targets" not in readiness(port)[1]["checks"], 30, 0.2,
                       "/readyz no longer names it")
        finally:
            out, err = stop(eventd)
        uuids, ids = nats_uuids(server.url, name)
        assert uuids == sent and len(ids) == 300  # in order, each once by id
        assert eventd.returncode == 0, err
        assert "Traceback" not in err


def test_nats_restarted_mid_burst_loses_nothing_and_keeps_each_event_once(emulator, tmp_path):
    with NatsServer() as server:
        name, prefix = nats_stream(server.url)
        port = free_port()
        eventd = start(emulator, tmp_path, nats_rules(tmp_path, server.url, prefix), port)
        try:
            wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready")
            sent = emit(emulator, BURST // 2)
            wait_until(lambda: nats_count(server.url, name) >= 200, 60, 0.05,
                       "the burst is being published")
            server.stop(signal.SIGKILL)  # a crash: PubAcks in flight are lost
            server.start()
            restarted_at = nats_count(server.url, name)
            sent += emit(emulator, BURST // 2)
            wait_until(lambda: nats_count(server.url, name) == BURST, 180, 0.2, "the burst")
        finally:
            out, err = stop(eventd)
        assert restarted_at < BURST  # the restart happened in the middle
        uuids, ids = nats_uuids(server.url, name)
        assert len(uuids) == len(set(uuids)) == len(ids) == BURST
        assert set(uuids) == set(sent)
        assert eventd.returncode == 0, err


def test_sigkill_of_eventd_mid_burst_loses_nothing_and_publishes_each_once(emulator, tmp_path):
    with NatsServer() as server:
        name, prefix = nats_stream(server.url)
        rules = nats_rules(tmp_path, server.url, prefix)
        port = free_port()
        eventd = start(emulator, tmp_path, rules, port)
        assert server.proc is not None
        frozen = False
        try:
            wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready")
            # The server frozen while the burst is accepted: eventd, fast enough on a quiet
            # machine to publish it all between two looks, is killed with every job accepted
            # and its publishes still waiting for their PubAcks.
            server.proc.send_signal(signal.SIGSTOP)
            frozen = True
            sent = emit(emulator, BURST)
            wait_until(lambda: metric(port, "eventd_spool_pending") >= BURST, 120, 0.05,
                       "the whole burst accepted")
        finally:
            stop(eventd, signal.SIGKILL)
            if frozen:
                server.proc.send_signal(signal.SIGCONT)
        at_kill = nats_count(server.url, name)
        assert at_kill < BURST, "the burst was published before the kill: nothing was tested"
        accepted = set(nats_uuids(server.url, name)[0]) | spooled_uuids(tmp_path / "state")
        assert accepted == set(sent)  # nothing accepted was lost by the kill
        eventd = start(emulator, tmp_path, rules, port)
        try:
            wait_until(lambda: nats_count(server.url, name) == BURST, 120, 0.2, "the spool")
        finally:
            out, err = stop(eventd)
        uuids, ids = nats_uuids(server.url, name)
        assert len(uuids) == len(set(uuids)) == len(ids) == BURST
        assert eventd.returncode == 0, err


def test_bad_bus_configuration_is_one_line_at_check_time(tmp_path):
    rules = write_rules(tmp_path / "bad", """
        rules:
          - name: to-bus
            match: {type: service}
            actions:
              - nats: {url: "nats://127.0.0.1:4222", subject: "docker.*"}
              - nats: {url: "nats://127.0.0.1:4222/x?y", subject: "docker.ok"}
              - nats: {url: "http://127.0.0.1:4222", subject: "docker.ok"}
        """)
    check = eventd_process("check", str(rules), env={})
    out, err = check.communicate(timeout=60)
    problems = [line for line in (out + err).splitlines() if "rules.yaml:" in line]
    assert check.returncode == 1
    assert len(problems) == 3, out + err
    assert "holds a wildcard" in problems[0]
    assert "url names a server only" in problems[1]
    assert "must be a nats:// or tls:// URL" in problems[2]


@pytest.mark.parametrize("kind", ["nats", "amqp"])
def test_a_missing_stream_or_exchange_is_one_line_at_start_exit_2(emulator, tmp_path, kind):
    from tests.bus_servers import shared_amqp, shared_nats

    if kind == "nats":
        url = shared_nats()
        action = f'nats: {{url: "{url}", subject: "no.stream.{secrets.token_hex(4)}", ' \
                 'jetstream: true}'
        expected = "jetstream is true but no stream holds subject 'no.stream."
    else:
        url = shared_amqp()
        action = f'amqp: {{url: "{url}", exchange: "x-none-{secrets.token_hex(4)}", ' \
                 'routing_key: "a"}'
        expected = "no exchange 'x-none-"
    rules = bus_rules(tmp_path, action)
    run = eventd_process("run", "--rules", str(rules), "--state-dir", str(tmp_path / "s"),
                         env=emulator_env(emulator))
    out, err = run.communicate(timeout=60)
    assert run.returncode == 2, err
    lines = [line for line in err.strip().splitlines() if "no EVENTD_JOB_KEY" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"eventd: {kind} "), err
    assert expected in lines[0]


def bus_rules(tmp_path, action):
    return write_rules(tmp_path / "rules", f"""
        rules:
          - name: to-bus
            match: {{type: service}}
            actions:
              - {action}
        """)


def test_sigkill_of_eventd_mid_burst_mqtt_each_event_once_in_the_subscribers_view(
        emulator, tmp_path):
    from tests.bus_clients import MqttCollector
    from tests.bus_servers import MosquittoServer

    with MosquittoServer() as server:
        topic = f"t{secrets.token_hex(4)}/events"
        collector = MqttCollector(server.url, topic)
        rules = bus_rules(tmp_path, f'mqtt: {{url: "{server.url}", topic: "{topic}"}}')
        port = free_port()
        eventd = start(emulator, tmp_path, rules, port)
        assert server.proc is not None
        frozen = False
        try:
            try:
                wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready")
                # The broker frozen while the burst is accepted (as the NATS test does):
                # eventd, fast enough on a quiet machine to publish it all between two looks,
                # is killed with every job accepted and its PUBACKs still to come.
                server.proc.send_signal(signal.SIGSTOP)
                frozen = True
                sent = emit(emulator, BURST)
                wait_until(lambda: metric(port, "eventd_spool_pending") >= BURST, 120, 0.05,
                           "the whole burst accepted")
                at_kill = len(collector.ids())
            finally:
                stop(eventd, signal.SIGKILL)
                if frozen:
                    server.proc.send_signal(signal.SIGCONT)
            assert at_kill < BURST, "the burst was published before the kill: nothing was tested"
            seen = {orjson.loads(m[1])["event"]["uuid"] for m in list(collector.messages)}
            assert seen | spooled_uuids(tmp_path / "state") == set(sent)  # nothing accepted lost
            eventd = start(emulator, tmp_path, rules, port)
            try:
                wait_until(lambda: {orjson.loads(m[1])["event"]["uuid"]
                                    for m in list(collector.messages)} == set(sent), 120, 0.2,
                           "the spool delivered")
            finally:
                out, err = stop(eventd)
        finally:
            collector.close()
    ids = collector.ids()
    assert len(set(ids)) == BURST  # the de-duplicated view: each job once (by eventd-id)
    assert eventd.returncode == 0, err


def test_sigkill_of_eventd_mid_burst_amqp_each_event_once_by_message_id(emulator, tmp_path):
    from tests.bus_clients import amqp_count, amqp_delete, amqp_drain, amqp_queue
    from tests.bus_servers import shared_amqp

    url = shared_amqp()
    queue = amqp_queue(url)
    rules = bus_rules(tmp_path, f'amqp: {{url: "{url}", routing_key: "{queue}", '
                                'mandatory: true}')
    port = free_port()
    try:
        eventd = start(emulator, tmp_path, rules, port)
        try:
            wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready")
            sent = emit(emulator, BURST)
            wait_until(lambda: amqp_count(url, queue) + metric(
                port, "eventd_spool_pending") >= BURST, 120, 0.05, "the whole burst accepted")
            at_kill = amqp_count(url, queue)
        finally:
            stop(eventd, signal.SIGKILL)
        assert at_kill < BURST, "the burst was published before the kill: nothing was tested"
        eventd = start(emulator, tmp_path, rules, port)
        try:
            wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready again")
            wait_until(lambda: metric(port, "eventd_spool_pending") == 0 and amqp_count(
                url, queue) >= BURST, 120, 0.2, "the spool delivered")
        finally:
            out, err = stop(eventd)
        messages = amqp_drain(url, queue)
    finally:
        amqp_delete(url, queue=queue)
    assert {orjson.loads(body)["event"]["uuid"] for _, body, _ in messages} == set(sent)
    assert len({message_id for message_id, _, _ in messages}) == BURST  # distinct message_id
    assert eventd.returncode == 0, err


def test_mqtt_down_at_start_then_restarted_mid_burst_loses_nothing(emulator, tmp_path):
    """A private Mosquitto (its sessions persist): down when eventd starts, then stopped and
    started again in the middle of a burst; a subscriber with a kept session sees each event,
    the first ones in order, each once by eventd-id."""
    from tests.bus_clients import MqttCollector
    from tests.bus_servers import MosquittoServer

    with MosquittoServer() as server:
        topic = f"t{secrets.token_hex(4)}/events"
        collector = MqttCollector(server.url, topic, session=f"c-{secrets.token_hex(4)}")

        def seen() -> list[str]:
            return [orjson.loads(m[1])["event"]["uuid"] for m in list(collector.messages)]

        server.stop()
        port = free_port()
        rules = bus_rules(tmp_path, f'mqtt: {{url: "{server.url}", topic: "{topic}"}}')
        eventd = start(emulator, tmp_path, rules, port)
        try:
            wait_until(lambda: emulator.connection_count >= 1, 30, 0.1, "eventd connected")
            first = emit(emulator, 300)
            status, body = wait_until(lambda: (lambda r: r if "targets" in r[1].get(
                "checks", {}) else None)(readiness(port)), 30, 0.2, "/readyz names the target")
            assert body["checks"]["targets"] == f"down: mqtt:mqtt://127.0.0.1:{server.port}"
            assert status == 200  # ready: the messages wait in the spool
            wait_until(lambda: metric(port, "eventd_spool_pending") == 300, 30, 0.2,
                       "300 accepted into the spool")
            server.start()
            wait_until(lambda: len(set(seen())) >= 300, 90, 0.1, "the spool delivered")
            burst = emit(emulator, BURST)
            wait_until(lambda: len(set(seen())) >= 300 + 200, 60, 0.01,
                       "the burst is being published")
            server.restart()  # PUBACKs in flight are lost: those messages are published again
            restarted_at = len(set(seen()))
            wait_until(lambda: set(seen()) == set(first + burst), 180, 0.2, "the burst")
        finally:
            out, err = stop(eventd)
            collector.close()
    assert restarted_at < 300 + BURST  # the restart happened in the middle
    assert [u for u in seen() if u in set(first)][:300] == first  # in order once back
    assert len(set(collector.ids())) == 300 + BURST  # the de-duplicated view: each job once
    assert eventd.returncode == 0, err
    assert "Traceback" not in err


def test_amqp_down_at_start_then_cut_mid_burst_loses_nothing(emulator, tmp_path):
    """RabbitMQ through a TCP proxy of the test's own: refused when eventd starts, then every
    connection cut in the middle of a burst; the queue holds each event, the first ones in
    order, each once by message_id."""
    from tests.bus_clients import amqp_count, amqp_delete, amqp_drain, amqp_queue
    from tests.bus_servers import TcpProxy, shared_amqp

    url = shared_amqp()
    queue = amqp_queue(url)
    proxy = TcpProxy(5672)
    rules = bus_rules(tmp_path, f'amqp: {{url: "amqp://guest:guest@127.0.0.1:{proxy.port}", '
                                f'routing_key: "{queue}", mandatory: true}}')
    port = free_port()
    try:
        proxy.cut()
        eventd = start(emulator, tmp_path, rules, port)
        try:
            wait_until(lambda: emulator.connection_count >= 1, 30, 0.1, "eventd connected")
            first = emit(emulator, 300)
            status, body = wait_until(lambda: (lambda r: r if "targets" in r[1].get(
                "checks", {}) else None)(readiness(port)), 30, 0.2, "/readyz names the target")
            assert body["checks"]["targets"] == f"down: amqp:amqp://127.0.0.1:{proxy.port}"
            assert status == 200  # ready: the messages wait in the spool
            wait_until(lambda: metric(port, "eventd_spool_pending") == 300, 30, 0.2,
                       "300 accepted into the spool")
            proxy.restore()
            wait_until(lambda: amqp_count(url, queue) >= 300, 90, 0.1, "the spool delivered")
            burst = emit(emulator, BURST)
            wait_until(lambda: amqp_count(url, queue) >= 300 + 200, 60, 0.01,
                       "the burst is being published")
            proxy.cut()  # confirms in flight are lost: those messages are published again
            cut_at = amqp_count(url, queue)
            proxy.restore()
            wait_until(lambda: metric(port, "eventd_spool_pending") == 0 and amqp_count(
                url, queue) >= 300 + BURST, 180, 0.2, "the burst")
        finally:
            out, err = stop(eventd)
        messages = amqp_drain(url, queue)
    finally:
        proxy.close()
        amqp_delete(url, queue=queue)
    assert cut_at < 300 + BURST  # the cut happened in the middle
    uuids = [orjson.loads(body)["event"]["uuid"] for _, body, _ in messages]
    assert uuids[:300] == first  # in order once back
    assert set(uuids) == set(first + burst)
    assert len({message_id for message_id, _, _ in messages}) == 300 + BURST  # each job once
    assert eventd.returncode == 0, err
    assert "Traceback" not in err, err[err.find("Traceback") - 600:][:1500]
