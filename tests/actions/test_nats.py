"""The `nats` kind against real nats-servers: JetStream PubAcks, one message per job id,
core NATS, subjects and headers from event data, the gate's host policy, max_payload."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eventd.actions.nats import NatsAction, subject_problems
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.gate import GateRefused
from eventd.errors import ConfigError
from eventd.settings import Settings
from eventd.stores.sqlite import SqliteStore
from tests.actions import attempt, make_context, make_job, sample
from tests.bus_clients import nats_count, nats_delete, nats_messages, nats_stream
from tests.bus_servers import NatsServer, shared_nats
from tests.waiting import wait_until


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "state")
    yield s
    s.close()


@pytest.fixture
def stream():
    url = shared_nats()
    name, prefix = nats_stream(url)
    yield url, name, prefix
    nats_delete(url, name)


def build(metrics, store, settings=None):
    context = make_context(metrics)
    if settings is not None:
        context.settings = settings
    kind = NatsAction(context)
    dispatcher = Dispatcher(context, store, {"nats": kind}, initial_wait=0.02, max_wait=0.2)
    dispatcher.start()
    return dispatcher, kind


def stop(dispatcher, kind):
    dispatcher.close(2)
    kind.close()


def event(n):
    return {"type": "container", "action": "update", "state": "Stopped", "uuid": f"u-{n:05d}",
            "n": n}


def test_each_job_is_one_stream_message_with_its_id_however_often_delivered(metrics, store,
                                                                            stream):
    url, name, prefix = stream
    dispatcher, kind = build(metrics, store)
    options = {"url": url, "subject": f"{prefix}.events", "headers": {"X-Rule": "r1"}}
    try:
        for n in range(600):
            assert dispatcher.submit(make_job(kind, options, event=event(n), job_id=f"id-{n:05d}"))
        assert dispatcher.wait_idle(30)
        for n in range(50):  # delivered again (the spool after a restart): no second message
            assert dispatcher.submit(make_job(kind, options, event=event(n), job_id=f"id-{n:05d}"))
        assert dispatcher.wait_idle(30)
    finally:
        stop(dispatcher, kind)
    messages = nats_messages(url, name)
    assert [headers["Nats-Msg-Id"] for _, headers, _ in messages] == \
        [f"id-{n:05d}" for n in range(600)]
    assert all(headers["X-Rule"] == "r1" for _, headers, _ in messages)
    assert b'"uuid":"u-00007"' in messages[7][2] and b'"rule":"rule-a"' in messages[7][2]
    assert sample(metrics, "eventd_actions_total", kind="nats", outcome="success") == 650
    assert store.spool_count() == 0


def test_templated_subject_json_and_core_nats_without_a_stream(metrics, store):
    import nats

    url = shared_nats()
    received: list = []

    async def listen(ready, done):
        async def on_message(msg):
            received.append(msg)

        nc = await nats.connect(url)
        await nc.subscribe("plain.>", cb=on_message)
        await nc.flush()
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.02)
        await nc.close()

    import threading
    ready, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(listen(ready, done)), daemon=True)
    thread.start()
    assert ready.wait(10)
    dispatcher, kind = build(metrics, store)
    try:
        for jetstream in (None, False):
            options = {"url": url, "subject": "plain.c-7", "json": {"state": "Stopped", "n": 7}}
            if jetstream is not None:
                options["jetstream"] = jetstream
            assert dispatcher.submit(make_job(kind, options))
        assert dispatcher.wait_idle(10)
        wait_until(lambda: len(received) == 2, 10)
    finally:
        done.set()
        stop(dispatcher, kind)
        thread.join(10)
    assert [m.subject for m in received] == ["plain.c-7", "plain.c-7"]
    assert received[0].data == b'{"state":"Stopped","n":7}'


def test_jetstream_true_without_a_stream_is_a_dead_letter_naming_the_subject(metrics, store):
    url = shared_nats()
    dispatcher, kind = build(metrics, store)
    name, prefix = nats_stream(url)
    try:
        # in one batch with messages a stream holds: only its own is a dead letter
        assert dispatcher.submit(make_job(kind, {"url": url, "subject": f"{prefix}.a",
                                                 "jetstream": True}, job_id="kept-1"))
        assert dispatcher.submit(make_job(kind, {"url": url, "subject": "nostream.x",
                                                 "jetstream": True}, job_id="nostream"))
        assert dispatcher.submit(make_job(kind, {"url": url, "subject": f"{prefix}.a",
                                                 "jetstream": True}, job_id="kept-2"))
        assert dispatcher.wait_idle(10)
        assert nats_count(url, name) == 2
    finally:
        stop(dispatcher, kind)
        nats_delete(url, name)
    (dead,) = store.deadletter_list()
    assert dead.job.id == "nostream"
    assert "no stream holds subject 'nostream.x'" in dead.reason


@pytest.mark.parametrize("subject, problem", [
    ("$JS.API.STREAM.DELETE.KEEP", "keeps for itself"),
    ("_INBOX.abc", "keeps for itself"),
    ("a.*", "wildcard"),
    ("a.>", "wildcard"),
    ("a..b", "tokens joined"),
    ("a b", "tokens joined"),
    ("a\r\nPUB x 1", "tokens joined"),
    ("", "empty"),
])
def test_a_subject_from_event_data_that_is_no_plain_subject_is_refused(subject, problem):
    assert problem in " ".join(subject_problems(subject))


def test_a_hostile_subject_or_header_from_an_event_is_a_dead_letter_and_reaches_nothing(
        metrics, store, stream):
    url, name, prefix = stream
    dispatcher, kind = build(metrics, store)
    try:
        # As the engine renders `subject: "{{ event.name }}"` from an attacker's container name.
        for options in ({"url": url, "subject": f"$JS.API.STREAM.DELETE.{name}"},
                        {"url": url, "subject": f"{prefix}.x",
                         "headers": {"X-Name": "a\r\nNats-Msg-Id: forged"}},
                        {"url": url, "subject": f"{prefix}.*"}):
            assert dispatcher.submit(make_job(kind, options))
        assert dispatcher.wait_idle(10)
    finally:
        stop(dispatcher, kind)
    reasons = sorted(dead.reason for dead in store.deadletter_list())
    assert len(reasons) == 3
    assert any("keeps for itself" in r for r in reasons)
    assert any("line break" in r for r in reasons)
    assert any("wildcard" in r for r in reasons)
    assert nats_count(url, name) == 0  # the stream is still there, and empty


def test_the_gate_checks_the_parsed_host_and_credentials_in_clear(metrics):
    allow = Settings(allow_hosts=("127.0.0.1",))
    context = make_context(metrics)
    context.settings = allow
    kind = NatsAction(context)
    try:
        job = make_job(kind, {"url": "nats://elsewhere.example:4222", "subject": "a.b"})
        with pytest.raises(GateRefused, match="not allowed by --allow-host"):
            attempt(kind, job)
        # user info that a lax parser would read as another host
        with pytest.raises(GateRefused):
            attempt(kind, make_job(kind, {"url": "nats://127.0.0.1:4222@evil.example:4222",
                                          "subject": "a.b"}))
        open_kind = NatsAction(make_context(metrics))
        job = make_job(open_kind, {"url": "nats://u:secret@10.1.2.3:4222", "subject": "a.b"})
        with pytest.raises(GateRefused, match="credentials would go in clear") as refused:
            attempt(open_kind, job)
        assert "secret" not in str(refused.value)
        assert sample(metrics, "eventd_gate_refused_total", kind="nats", reason="plaintext") == 1
        assert "secret" not in open_kind.describe(job) + job.target
    finally:
        kind.close()


def test_check_time_problems_are_one_line_each():
    assert NatsAction.validate({"url": "nats://h:4222", "subject": "a.*"}) == [
        "subject 'a.*' holds a wildcard (* or >): one publishes to one subject"]
    assert NatsAction.validate({"url": "http://h/", "subject": "a"}) == [
        "url: url must be a nats:// or tls:// URL"]
    assert NatsAction.validate({"url": "nats://h:4222/path", "subject": "a"}) == [
        "url names a server only: scheme://[user[:password]@]host[:port]"]
    assert NatsAction.validate({"url": "nats://{{ event.host }}:4222", "subject": "a"}) == [
        "url must not hold a template (a queue and a gate check per server)"]
    assert NatsAction.validate({"url": "nats://h:4222", "subject": "{{ event.name }}"}) == []


def test_a_message_over_max_payload_is_a_dead_letter_with_the_reason(metrics, store):
    with NatsServer(max_payload=1024) as server:
        name, prefix = nats_stream(server.url)
        dispatcher, kind = build(metrics, store)
        options = {"url": server.url, "subject": f"{prefix}.x"}
        try:
            assert dispatcher.submit(make_job(kind, options, job_id="small-1"))
            assert dispatcher.submit(make_job(kind, {**options, "body": "x" * 5000},
                                              job_id="big"))
            assert dispatcher.submit(make_job(kind, options, job_id="small-2"))
            assert dispatcher.wait_idle(15)
        finally:
            stop(dispatcher, kind)
        (dead,) = store.deadletter_list()
        assert dead.job.id == "big"
        assert "over the server's max_payload of 1024 bytes" in dead.reason
        assert [h["Nats-Msg-Id"] for _, h, _ in nats_messages(server.url, name)] == \
            ["small-1", "small-2"]


def test_server_down_then_back_and_restarted_mid_burst_loses_nothing_twice(metrics, store):
    with NatsServer() as server:
        name, prefix = nats_stream(server.url)
        server.stop()
        dispatcher, kind = build(metrics, store)
        options = {"url": server.url, "subject": f"{prefix}.x"}
        try:
            for n in range(200):
                assert dispatcher.submit(make_job(kind, options, job_id=f"a-{n:05d}"))
            target = f"nats:nats://127.0.0.1:{server.port}"
            wait_until(lambda: dispatcher.down_targets() == [target], 15)
            server.start()
            assert dispatcher.wait_idle(60)
            assert nats_count(server.url, name) == 200
            for n in range(2000):
                assert dispatcher.submit(make_job(kind, options, job_id=f"b-{n:05d}"))
            wait_until(lambda: nats_count(server.url, name) >= 400, 30, 0.02)
            server.restart()
            assert dispatcher.wait_idle(120)
        finally:
            stop(dispatcher, kind)
        ids = [h["Nats-Msg-Id"] for _, h, _ in nats_messages(server.url, name)]
        assert len(ids) == len(set(ids)) == 2200
        assert ids[:200] == [f"a-{n:05d}" for n in range(200)]  # in order once back
        assert set(ids[200:]) == {f"b-{n:05d}" for n in range(2000)}


def test_the_start_check_names_a_forced_jetstream_subject_no_stream_holds(metrics, stream,
                                                                          caplog):
    url, _, prefix = stream
    kind = NatsAction(make_context(metrics))
    try:
        kind.preflight([{"url": url, "subject": f"{prefix}.held", "jetstream": True},
                        {"url": url, "subject": "nobody.holds.this"},  # not forced: core NATS
                        {"url": url, "subject": "{{ event.type }}", "jetstream": True}])
        with pytest.raises(ConfigError) as missing:
            kind.preflight([{"url": url, "subject": f"{prefix}.held", "jetstream": True},
                            {"url": url, "subject": "nobody.holds.this", "jetstream": True}])
        with caplog.at_level(logging.WARNING):  # a server down: eventd starts and spools
            kind.preflight([{"url": "nats://u:hidden-pw@127.0.0.1:1", "subject": "a.b",
                             "jetstream": True}])
    finally:
        kind.close()
    assert str(missing.value) == (
        "nats nats://127.0.0.1:4222: jetstream is true but no stream holds subject "
        "'nobody.holds.this' (add a stream for it, or leave jetstream unset to publish to "
        "core NATS)")
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("eventd")]
    assert "nats://127.0.0.1:1" in line and "starting anyway" in line
    assert "hidden-pw" not in line


UNENCODABLE = (  # what event data can hold that JSON / UTF-8 can never carry
    ("surrogate", {"json": {"name": "\ud800"}}, "cannot be sent as JSON"),
    ("bigint", {}, "cannot be sent as JSON"),  # the event itself: n = 2**64
    ("body", {"body": "tail \udfff"}, "not valid UTF-8"),
)


def test_event_data_json_cannot_carry_is_a_dead_letter_not_a_retry_loop(metrics, store,
                                                                         stream):
    url, name, prefix = stream
    dispatcher, kind = build(metrics, store)
    base = {"url": url, "subject": f"{prefix}.events"}
    try:
        for job_id, extra, _ in UNENCODABLE:
            big = {**event(1), "n": 2 ** 64}
            assert dispatcher.submit(make_job(kind, {**base, **extra}, event=big, job_id=job_id))
        assert dispatcher.submit(make_job(kind, base, event=event(2), job_id="good"))
        assert dispatcher.wait_idle(15)
    finally:
        stop(dispatcher, kind)
    assert [headers["Nats-Msg-Id"] for _, headers, _ in nats_messages(url, name)] == ["good"]
    reasons = {d.job.id: d.reason for d in store.deadletter_list()}
    assert reasons.keys() == {"surrogate", "bigint", "body"}
    for job_id, _, reason in UNENCODABLE:
        assert reason in reasons[job_id]
    assert sample(metrics, "eventd_actions_total", kind="nats", outcome="success") == 1
