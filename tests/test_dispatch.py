"""The Dispatcher against real HTTP receivers: retries, order, dead letters, spool, shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from eventd.actions.webhook import WebhookAction
from eventd.commands import deadletter as deadletter_cli
from eventd.delivery.breaker import CircuitBreaker
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.retry import RetryPolicy
from eventd.settings import Settings
from eventd.stores import open_store
from eventd.stores.sqlite import SqliteStore
from tests.actions import make_context, make_job, sample
from tests.receiver import WebhookReceiver
from tests.waiting import wait_until


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "state")
    yield s
    s.close()


def build(metrics, store, **kwargs):
    context = make_context(metrics)
    kinds = {"webhook": WebhookAction(context)}
    kwargs.setdefault("initial_wait", 0.02)
    kwargs.setdefault("max_wait", 0.1)
    dispatcher = Dispatcher(context, store, kinds, **kwargs)
    dispatcher.start()
    return dispatcher, kinds["webhook"]


def keys(receiver):
    return [r.header("Idempotency-Key") for r in receiver.requests]


def test_receiver_down_then_up_delivers_each_once_and_in_order(metrics, store, webhook_receiver):
    dispatcher, hook = build(metrics, store)
    webhook_receiver.stop()
    jobs = [make_job(hook, {"url": webhook_receiver.url + "/hook", "json": {"n": n}})
            for n in range(20)]
    try:
        assert all(dispatcher.submit(job) for job in jobs)
        wait_until(lambda: sample(metrics, "eventd_actions_total", kind="webhook",
                                  outcome="retry", default=0) >= 3)
        assert store.spool_count() == 20
        webhook_receiver.start()
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close(2)
    assert keys(webhook_receiver) == [job.id for job in jobs]  # each once, in order
    assert [r.json()["n"] for r in webhook_receiver.requests] == list(range(20))
    assert store.spool_count() == 0
    assert sample(metrics, "eventd_actions_total", kind="webhook", outcome="success") == 20
    assert sample(metrics, "eventd_spool_pending") == 0
    assert sample(metrics, "eventd_action_errors_total", kind="webhook", reason="connection") >= 3


def test_503_three_times_then_200(metrics, store, webhook_receiver):
    waits: list[float] = []
    dispatcher, hook = build(metrics, store, sleep=waits.append, initial_wait=1.0, max_wait=60)
    webhook_receiver.respond_with(503, count=3)
    job = make_job(hook, {"url": webhook_receiver.url, "json": {"a": 1}})
    try:
        dispatcher.submit(job)
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
    assert keys(webhook_receiver) == [job.id] * 4
    assert len(waits) == 3
    # The target was down for well under a second: no probe waits longer than ~1 s.
    assert all(0.5 <= wait <= 1.0 for wait in waits), waits
    assert sample(metrics, "eventd_actions_total", kind="webhook", outcome="retry") == 3
    assert sample(metrics, "eventd_actions_total", kind="webhook", outcome="success") == 1
    assert sample(metrics, "eventd_action_errors_total", kind="webhook", reason="http_5xx") == 3
    assert sample(metrics, "eventd_action_duration_seconds_count", kind="webhook") == 4


def test_429_retry_after_is_honoured(metrics, store, webhook_receiver, caplog):
    waits: list[float] = []
    dispatcher, hook = build(metrics, store, sleep=waits.append, initial_wait=1.0, max_wait=60)
    webhook_receiver.respond_with(429, count=1, headers={"Retry-After": "7"})
    job = make_job(hook, {"url": webhook_receiver.url + "/secret-token?key=s3cr3t", "json": {}})
    with caplog.at_level(logging.INFO, logger="eventd"):
        try:
            dispatcher.submit(job)
            assert dispatcher.wait_idle(5)
        finally:
            dispatcher.close(2)
    assert waits == [7.0]
    assert len(webhook_receiver.requests) == 2
    [line] = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert line == (f"webhook for rule rule-a to {webhook_receiver.url}/***?...: the server "
                    f"asked to come back later (HTTP 429); retry 2 in 7.0 s")
    assert "s3cr3t" not in caplog.text and "secret-token" not in caplog.text


def test_400_goes_to_dead_letters_and_deadletter_retry_resends(metrics, store, webhook_receiver,
                                                               tmp_path, capsys):
    dispatcher, hook = build(metrics, store)
    webhook_receiver.respond_with(400, count=1, body={"error": "bad field"})
    job = make_job(hook, {"url": webhook_receiver.url, "json": {"x": 1}})
    try:
        dispatcher.submit(job)
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
    assert len(webhook_receiver.requests) == 1  # not retried
    [letter] = store.deadletter_list()
    assert letter.job.id == job.id and letter.reason == "HTTP 400: bad field"
    assert sample(metrics, "eventd_actions_total", kind="webhook", outcome="failed") == 1
    assert sample(metrics, "eventd_actions_total", kind="webhook", outcome="deadletter") == 1
    assert sample(metrics, "eventd_deadletter_total") == 1
    assert store.spool_count() == 0
    store.close()

    state = tmp_path / "state"
    parser = argparse.ArgumentParser()
    deadletter_cli.add_arguments(parser)
    assert deadletter_cli.run(parser.parse_args(["list", "--state-dir", str(state)])) == 0
    out = capsys.readouterr().out
    assert job.id in out and "kind=webhook" in out and "reason=HTTP 400: bad field" in out
    # The gate runs only what a loaded rule can produce: without the rule, it stays dead.
    code = deadletter_cli.run(parser.parse_args(["retry", job.id[:8], "--now", "--state-dir",
                                                 str(state), "--rules", str(tmp_path / "none")]))
    assert code == 1 and len(webhook_receiver.requests) == 1
    capsys.readouterr()
    assert deadletter_cli.run(parser.parse_args(["list", "--state-dir", str(state)])) == 0
    assert "no rule named 'rule-a' is loaded" in capsys.readouterr().out
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""rules:
      - name: rule-a
        match: {{type: container}}
        actions:
          - webhook: {{url: "{webhook_receiver.url}", json: {{x: "{{{{ 1 }}}}"}}}}
    """.replace("\n    ", "\n"))
    code = deadletter_cli.run(parser.parse_args(["retry", job.id[:8], "--now",
                                                 "--state-dir", str(state), "--rules", str(rules)]))
    assert code == 0, capsys.readouterr().out
    assert keys(webhook_receiver) == [job.id, job.id]  # re-sent, same Idempotency-Key
    assert deadletter_cli.run(parser.parse_args(["list", "--state-dir", str(state)])) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_deadline_moves_a_job_to_dead_letters(metrics, store, webhook_receiver):
    now = [time.time()]
    waits: list[float] = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    dispatcher, hook = build(metrics, store, sleep=sleep, clock=lambda: now[0],
                             deadline=30.0, initial_wait=1.0, max_wait=8.0)
    webhook_receiver.respond_with(503, count=100)
    job = make_job(hook, {"url": webhook_receiver.url, "json": {}}, created_at=now[0])
    try:
        dispatcher.submit(job)
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
    [letter] = store.deadletter_list()
    assert letter.reason.startswith(f"gave up after {len(waits) + 1} attempt(s)")
    assert letter.reason.endswith("HTTP 503")
    assert sum(waits) < 30.0 and max(waits) <= 9.0


def test_429_retry_after_beyond_the_deadline_dead_letters_at_once(metrics, store,
                                                                   webhook_receiver):
    waits: list[float] = []
    dispatcher, hook = build(metrics, store, sleep=waits.append, deadline=60.0, max_wait=60.0)
    webhook_receiver.respond_with(429, headers={"Retry-After": "3600"})  # waited 60 s at most
    try:
        dispatcher.submit(make_job(hook, {"url": webhook_receiver.url, "json": {}}))
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
    assert waits == [] and len(store.deadletter_list()) == 1


def test_full_queue_never_blocks_the_caller_and_loses_nothing(metrics, store, webhook_receiver):
    dispatcher, hook = build(metrics, store, queue_size=2)
    webhook_receiver.stop()
    jobs = [make_job(hook, {"url": webhook_receiver.url, "json": {"n": n}}) for n in range(30)]
    try:
        assert all(dispatcher.submit(job) for job in jobs)
        assert dispatcher.overflowed >= 27
        webhook_receiver.start()
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close(2)
    assert keys(webhook_receiver) == [job.id for job in jobs]


def test_a_stalled_target_does_not_stop_the_others(metrics, store, webhook_receiver):
    dispatcher, hook = build(metrics, store)
    with WebhookReceiver() as other:
        webhook_receiver.stall()
        stalled = [make_job(hook, {"url": webhook_receiver.url, "json": {"n": n}, "timeout": 5})
                   for n in range(3)]
        flowing = [make_job(hook, {"url": other.url, "json": {"n": n}}) for n in range(10)]
        try:
            for a, b in zip(stalled, flowing, strict=False):
                dispatcher.submit(a)
                dispatcher.submit(b)
            for b in flowing[3:]:
                dispatcher.submit(b)
            wait_until(lambda: len(other.requests) == 10, timeout=3)
            assert webhook_receiver.requests == []
            webhook_receiver.stall(False)
            assert dispatcher.wait_idle(10)
        finally:
            dispatcher.close(2)
        assert keys(other) == [j.id for j in flowing]
    assert keys(webhook_receiver) == [j.id for j in stalled]


def test_close_interrupts_retry_waits_and_keeps_the_job(metrics, store, webhook_receiver):
    dispatcher, hook = build(metrics, store, initial_wait=30.0, max_wait=60.0)
    webhook_receiver.stop()
    job = make_job(hook, {"url": webhook_receiver.url, "json": {}})
    dispatcher.submit(job)
    wait_until(lambda: sample(metrics, "eventd_actions_total", kind="webhook", outcome="retry",
                              default=0))
    assert dispatcher.close(5) == 1  # the wait was 15-30 s: close() interrupted it
    assert [j.id for j in store.spool_pending()] == [job.id]
    assert store.spool_pending()[0].attempts == 1
    assert dispatcher.submit(make_job(hook, {"url": webhook_receiver.url})) is False


def test_circuit_breaker_opens_and_closes(metrics, store, webhook_receiver, caplog):
    breaker = CircuitBreaker(RetryPolicy(initial_wait=0.02, max_wait=0.1), open_after=0.3)
    dispatcher, hook = build(metrics, store, breaker=breaker)
    webhook_receiver.stop()
    target = f"webhook:{webhook_receiver.url}"
    with caplog.at_level(logging.INFO, logger="eventd"):
        try:
            dispatcher.submit(make_job(hook, {"url": webhook_receiver.url, "json": {}}))
            wait_until(lambda: breaker.is_open(target), timeout=5)
            wait_until(lambda: sample(metrics, "eventd_action_errors_total", kind="webhook",
                                      reason="connection", default=0) >= 5, timeout=5)
            webhook_receiver.start()
            assert dispatcher.wait_idle(5)
        finally:
            dispatcher.close(2)
    assert not breaker.is_open(target)
    opened = [r for r in caplog.records if "circuit open" in r.getMessage()]
    closed = [r for r in caplog.records if "circuit closed" in r.getMessage()]
    assert len(opened) == 1 and opened[0].levelno == logging.WARNING  # said once, re-probes quiet
    assert len(closed) == 1 and closed[0].levelno == logging.INFO


_CHILD = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from eventd.actions.base import ActionContext
    from eventd.records import ActionJob
    from eventd.actions.webhook import WebhookAction
    from eventd.delivery.dispatcher import Dispatcher
    from eventd.ops.metrics import Metrics
    from eventd.settings import Settings
    from eventd.stores.sqlite import SqliteStore

    state, url, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    context = ActionContext(settings=Settings(), metrics=Metrics())
    hook = WebhookAction(context)
    store = SqliteStore(state)
    dispatcher = Dispatcher(context, store, {"webhook": hook}, initial_wait=0.01, max_wait=0.05,
                            queue_size=5)
    dispatcher.start()
    for n in range(count):
        options = {"url": url, "json": {"n": n}}
        dispatcher.submit(ActionJob(id=f"key-{n:04d}", rule="r", kind="webhook",
                                    options=options, event={}, target=hook.target(options),
                                    created_at=time.time()))
        if n == count // 2:
            print("HALF", flush=True)
    print("ACCEPTED", flush=True)
    threading.Event().wait()
""")


def test_sigkill_with_actions_pending_then_restart_delivers_all(metrics, tmp_path,
                                                                 webhook_receiver):
    state = tmp_path / "killed"
    webhook_receiver.stop()  # keeps its port: the child's actions fail until it is back
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    child = subprocess.Popen([sys.executable, str(script), str(state), webhook_receiver.url,
                              "40"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "HALF"
        assert child.stdout.readline().strip() == "ACCEPTED"
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        if child.stdout is not None:
            child.stdout.close()
    webhook_receiver.start()
    store = SqliteStore(state)
    try:
        assert store.spool_count() == 40
        dispatcher, _ = build(metrics, store)
        try:
            assert dispatcher.wait_idle(10)
        finally:
            dispatcher.close(2)
        assert store.spool_count() == 0
    finally:
        store.close()
    delivered = keys(webhook_receiver)
    assert set(delivered) == {f"key-{n:04d}" for n in range(40)}
    assert delivered == sorted(delivered)  # resumed in the order accepted


def test_a_5_s_outage_then_503_503_429_drains_the_whole_lane_at_once(metrics, store,
                                                                      webhook_receiver):
    """Issue 10: a blip must not become minutes of silence (real waits, real receiver)."""
    dispatcher, hook = build(metrics, store, initial_wait=1.0, max_wait=60.0)
    webhook_receiver.down_for(5.0)
    webhook_receiver.respond_with(503, count=2)
    webhook_receiver.respond_with(429, count=1, headers={"Retry-After": "1"})
    jobs = [make_job(hook, {"url": webhook_receiver.url + "/alert", "json": {"n": n}})
            for n in range(20)]
    try:
        for job in jobs:
            assert dispatcher.submit(job)
        wait_until(lambda: len(webhook_receiver.delivered()) == 20, timeout=60,
                   message="all 20 alerts delivered")
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
    answered = webhook_receiver.requests
    assert [r.status for r in answered[:3]] == [503, 503, 429]  # then only 2xx
    delivered = webhook_receiver.delivered()
    assert [r.header("Idempotency-Key") for r in delivered] == [job.id for job in jobs]
    assert delivered[-1].at - delivered[0].at < 10.0  # within 10 s of the first 2xx
    # While the receiver failed, one request probed it: every refusal was the head job's.
    assert {r.header("Idempotency-Key") for r in answered[:3]} == {jobs[0].id}
    assert sample(metrics, "eventd_deadletter_total") == 0


def test_an_error_describing_a_target_goes_through_the_internal_error_guard(
        metrics, store, webhook_receiver, internal_errors):
    class Broken(WebhookAction):
        def describe(self, job):
            raise RuntimeError("describe is broken")

    context = make_context(metrics)
    hook = Broken(context)
    dispatcher = Dispatcher(context, store, {"webhook": hook}, initial_wait=0.01, max_wait=0.02)
    dispatcher.start()
    webhook_receiver.respond_with(503, count=1)  # the retry line names the target
    job = make_job(hook, {"url": webhook_receiver.url, "json": {}})
    try:
        dispatcher.submit(job)
        assert dispatcher.wait_idle(5)
    finally:
        dispatcher.close(2)
        hook.close()
    # The retry line and the success line each named the target: both caught, counted, logged.
    assert [where for where, _ in internal_errors] == ["dispatch", "dispatch"]
    assert all(isinstance(exc, RuntimeError) for _, exc in internal_errors)
    internal_errors.clear()  # caught on purpose
    assert sample(metrics, "eventd_internal_errors_total", where="dispatch") == 2
    assert keys(webhook_receiver) == [job.id, job.id]  # the job was still delivered


def test_one_info_line_per_outcome(metrics, store, webhook_receiver, caplog):
    dispatcher, hook = build(metrics, store)
    webhook_receiver.respond_with(200, count=1)
    webhook_receiver.respond_with(400, count=1, body={
        "error": "cannot start service web: its state is 'Running', which does not allow "
                 "start (see http://x/?token=s3cr3t) " + "x" * 1000})
    ok = make_job(hook, {"url": webhook_receiver.url + "/a", "json": {}}, rule="ok-rule")
    bad = make_job(hook, {"url": webhook_receiver.url + "/b", "json": {}}, rule="bad-rule")
    with caplog.at_level(logging.INFO, logger="eventd"):
        try:
            dispatcher.submit(ok)
            assert dispatcher.wait_idle(5)
            dispatcher.submit(bad)
            assert dispatcher.wait_idle(5)
        finally:
            dispatcher.close(2)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("eventd.delivery")]
    assert [line for line in lines if "ok-rule" in line] == [
        f"webhook for rule ok-rule: POST {webhook_receiver.url}: HTTP 200"]
    [dead] = [line for line in lines if "bad-rule" in line]
    assert "HTTP 400: cannot start service web: its state is 'Running', which does not " \
           "allow start" in dead
    assert "s3cr3t" not in dead and len(dead) < 600
    [letter] = store.deadletter_list()
    assert letter.reason.startswith("HTTP 400: cannot start service web") and \
        letter.reason.endswith("...") and "s3cr3t" not in letter.reason


def test_a_redirect_is_a_dead_letter_and_is_not_followed(metrics, store, webhook_receiver):
    with WebhookReceiver() as elsewhere:
        dispatcher, hook = build(metrics, store)
        webhook_receiver.respond_with(302, count=1,
                                      headers={"Location": elsewhere.url + "/stolen"})
        job = make_job(hook, {"url": webhook_receiver.url + "/hook", "json": {"secret": 1},
                              "headers": {"X-Api-Key": "k-123"}})
        try:
            dispatcher.submit(job)
            assert dispatcher.wait_idle(5)
        finally:
            dispatcher.close(2)
        assert elsewhere.requests == []  # neither the header nor the body went there
    assert len(webhook_receiver.requests) == 1  # and it was not retried
    [letter] = store.deadletter_list()
    assert letter.reason == (f"HTTP 302: redirect to {elsewhere.url} not followed "
                             "(eventd never follows redirects)")


def test_a_dead_target_is_probed_by_one_job_and_the_queue_expires_behind_it(metrics, store,
                                                                             webhook_receiver):
    now = [time.time()]
    waits: list[float] = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    dispatcher, hook = build(metrics, store, sleep=sleep, clock=lambda: now[0],
                             deadline=30.0, initial_wait=1.0, max_wait=8.0)
    webhook_receiver.respond_with(503, count=1000)
    jobs = [make_job(hook, {"url": webhook_receiver.url, "json": {"n": n}}, created_at=now[0])
            for n in range(3)]
    try:
        for job in jobs:
            dispatcher.submit(job)
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close(2)
    assert set(keys(webhook_receiver)) == {jobs[0].id}  # only the head probed the target
    letters = {letter.job.id: letter.reason for letter in store.deadletter_list()}
    assert letters[jobs[0].id].startswith(f"gave up after {len(keys(webhook_receiver))} attempt")
    for job in jobs[1:]:  # expired while waiting their turn: no attempt of their own
        assert letters[job.id].startswith("gave up after 0 attempt(s)")
        assert letters[job.id].endswith("HTTP 503")


# -- fencing (a cluster's replica: issue 25) ----------------------------------------------------
@pytest.fixture
def fenced_receiver():
    from eventd.emulator.fencing import HEADER, Fences

    fences = Fences()
    receiver = WebhookReceiver(screen=lambda r: 409 if fences.refuses(r.header(HEADER)) else None)
    receiver.start()
    receiver.fences = fences
    yield receiver
    receiver.stop()


def test_a_fenced_dispatcher_sends_only_the_jobs_of_leases_it_holds_each_with_its_token(
        metrics, store, fenced_receiver):
    held: dict[str, str] = {"acme": "chaos/acme:3"}
    dispatcher, hook = build(metrics, store)
    dispatcher.use_fence(lambda job: held.get(job.event["namespace"]))
    jobs = {ns: [make_job(hook, {"url": fenced_receiver.url + "/hook", "json": {"n": n}},
                          event={"uuid": f"{ns}-{n}", "namespace": ns}) for n in range(3)]
            for ns in ("acme", "globex")}
    try:
        for acme, globex in zip(jobs["acme"], jobs["globex"], strict=True):
            dispatcher.submit(acme)
            dispatcher.submit(globex)
        assert dispatcher.wait_idle(10)
        # globex's lease is another replica's: nothing sent, its jobs stay in the spool
        assert keys(fenced_receiver) == [job.id for job in jobs["acme"]]
        assert [r.header("Eventd-Fencing-Token") for r in fenced_receiver.requests] == \
            ["chaos/acme:3"] * 3
        assert sorted(job.id for job in store.spool_pending()) == \
            sorted(job.id for job in jobs["globex"])
        assert store.deadletter_count() == 0
        # this replica takes globex over: only then are its jobs paged in and sent
        held["globex"] = "chaos/globex:5"
        dispatcher.resume()
        wait_until(lambda: len(fenced_receiver.requests) == 6)
        assert keys(fenced_receiver)[3:] == [job.id for job in jobs["globex"]]
        assert [r.header("Eventd-Fencing-Token") for r in fenced_receiver.requests][3:] == \
            ["chaos/globex:5"] * 3
        wait_until(lambda: store.spool_count() == 0)
    finally:
        dispatcher.close(2)


def _send_fenced(metrics, store, receiver, fence, meanwhile=None):
    """One webhook job to `receiver`, sent by a dispatcher fenced by `fence` (`meanwhile`
    called once it is submitted, before the dispatcher is waited for); the job."""
    dispatcher, hook = build(metrics, store)
    dispatcher.use_fence(fence)
    job = make_job(hook, {"url": receiver.url + "/hook", "json": {}},
                   event={"uuid": "u1", "namespace": "acme"})
    try:
        dispatcher.submit(job)
        if meanwhile is not None:
            meanwhile()
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close(2)
    return job


def test_a_request_whose_lease_ended_before_it_was_written_is_not_sent(
        metrics, store, fenced_receiver):
    # Chaos (a webhook that reached its receiver after the lease had expired): the lease is
    # read again once the connection is ready, just before the request is written. Lost in
    # between (a connect held up by a partition, a paused process), nothing is sent and the
    # job stays in the spool for the lease's next holder.
    asked: list[str] = []

    def fence(job):
        asked.append(job.id)
        return "chaos/acme:3" if len(asked) == 1 else None  # lost once the token was read

    job = _send_fenced(metrics, store, fenced_receiver, fence)
    assert fenced_receiver.requests == []
    assert [j.id for j in store.spool_pending()] == [job.id]
    assert store.deadletter_count() == 0


def test_a_request_refused_for_a_stale_token_leaves_the_job_in_the_spool(
        metrics, store, fenced_receiver):
    # The lease is lost while the request is on its way (a pause, a partition): the server,
    # which has seen the new holder's token, refuses it; the job is the new holder's to send,
    # neither dead-lettered nor retried here.
    fenced_receiver.fences.check("chaos/acme:4")  # the new holder wrote there already

    def fence(job):
        # lost once the request is out (the lease is read again just before it is written:
        # lost before that, it would not be sent at all)
        return None if fenced_receiver.requests else "chaos/acme:3"

    job = _send_fenced(metrics, store, fenced_receiver, fence)
    assert [r.status for r in fenced_receiver.requests] == [409]
    assert fenced_receiver.fences.snapshot()["stale"] == 1
    assert [j.id for j in store.spool_pending()] == [job.id]
    assert store.deadletter_count() == 0
    assert sample(metrics, "eventd_actions_total", kind="webhook", outcome="left") == 1


def test_a_fenced_dispatcher_finds_a_job_of_its_lease_another_replica_spooled_late(
        metrics, store, fenced_receiver):
    # A replica cut off from Redis (its requests arriving, the answers lost) lands its job in
    # the shared spool after this one took the namespace over and paged the spool in.
    dispatcher, hook = build(metrics, store)
    dispatcher.use_fence(lambda job: "chaos/acme:2", sweep=0.1)
    late = make_job(hook, {"url": fenced_receiver.url + "/hook", "json": {}},
                    event={"uuid": "late", "namespace": "acme"})
    try:
        assert store.spool_add(late)  # written by the other replica, not through this one
        wait_until(lambda: keys(fenced_receiver) == [late.id], 10)
        wait_until(lambda: store.spool_count() == 0)
    finally:
        dispatcher.close(2)


def test_a_fenced_page_in_from_redis_while_another_replica_finishes_jobs_keeps_the_order(
        metrics, redis_url, redis_cluster, fenced_receiver, monkeypatch):
    # Chaos seed 1 (10 minutes, t+514.2): r1's lane paged in from a shared spool ~1100 jobs
    # deep, most of them other replicas' (a slow receiver had held every lane up). It read
    # the oldest ids (a full scan: more beyond), r2 and r3 finished some of theirs before it
    # read the jobs, so the page came back short and the lane took it for the spool's end:
    # the job it accepted next went out at once, before 19 older ones past the ids it read.
    store = open_store(Settings(store=redis_url, cluster=redis_cluster))
    other = open_store(Settings(store=redis_url, cluster=redis_cluster))  # another replica
    dispatcher, hook = build(metrics, store, queue_size=2)  # a fenced read: 4 x 2 jobs
    dispatcher.use_fence(lambda job: "chaos/acme:3" if job.event["namespace"] == "acme"
                         else None)

    def made(namespace: str, n: int):
        return make_job(hook, {"url": fenced_receiver.url + "/hook", "json": {"n": n}},
                        event={"uuid": f"{namespace}-{n}", "namespace": namespace})

    theirs = [made("globex", n) for n in range(7)]
    mine = [made("acme", n) for n in range(4)]
    read_jobs = store._jobs
    finished: list[str] = []

    def finished_meanwhile(ids):
        if theirs[0].id in ids and mine[0].id in ids and not finished:
            finished.append(theirs[0].id)
            other.spool_done(theirs[0].id)  # between this replica's two reads
        return read_jobs(ids)

    try:
        for job in theirs + mine[:3]:  # spooled, the lane not told (left, taken over)
            assert other.spool_add(job)
        monkeypatch.setattr(store, "_jobs", finished_meanwhile)
        dispatcher.resume()
        wait_until(lambda: keys(fenced_receiver)[:1] == [mine[0].id], 10)
        assert finished == [theirs[0].id]
        dispatcher.submit(mine[3])
        wait_until(lambda: mine[3].id in keys(fenced_receiver), 10)
        assert keys(fenced_receiver) == [job.id for job in mine]
    finally:
        dispatcher.close(2)
        store.close()
        other.close()


def test_a_409_to_a_token_this_replica_still_holds_is_retried_not_dead_lettered(
        metrics, store, fenced_receiver):
    # A Redis split brain hands out tokens twice: the server saw a higher one from a holder
    # this replica does not know of. Dead-lettering at once would lose the job to a passing
    # split brain: it is retried (dead-lettered only at its deadline).
    fenced_receiver.fences.check("chaos/acme:4")

    def refused() -> float:
        """The 409s this replica judged (each counted once its lease was read again)."""
        return sum(sample.value for family in metrics.registry.collect()
                   if family.name == "eventd_action_errors" for sample in family.samples
                   if sample.name.endswith("_total") and sample.labels["kind"] == "webhook")

    def lease(job):
        # The split brain is over, this replica's new lease, once two 409s were judged under
        # the old token: the lease moves between attempts, never while one is on its way
        # (a token that moved during an attempt means the lease went elsewhere: LEFT).
        return "chaos/acme:5" if refused() >= 2 else "chaos/acme:3"

    def refused_twice_kept() -> None:
        wait_until(lambda: len(fenced_receiver.requests) >= 2, 20)
        assert store.deadletter_count() == 0

    _send_fenced(metrics, store, fenced_receiver, lease, meanwhile=refused_twice_kept)
    statuses = [r.status for r in fenced_receiver.requests]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {409}
    assert store.deadletter_count() == 0 and store.spool_count() == 0


def test_quiesce_waits_for_the_requests_sent_under_a_lease_before_it_is_freed(metrics, store):
    # A lease given back (rebalance, shutdown) is freed only once what was sent under it has
    # been answered: else the next holder's token could reach the server after one of them.
    from eventd.emulator.fencing import HEADER

    release = threading.Event()

    def slow(request):
        release.wait(10)
        return None

    receiver = WebhookReceiver(screen=slow)
    receiver.start()
    dispatcher, hook = build(metrics, store)
    dispatcher.use_fence(lambda job: "chaos/acme:3")
    job = make_job(hook, {"url": receiver.url + "/hook", "json": {}},
                   event={"uuid": "u1", "namespace": "acme"})
    try:
        dispatcher.submit(job)
        wait_until(lambda: not dispatcher.quiesce("chaos/acme:", 0.0))  # on its way
        assert dispatcher.quiesce("chaos/globex:", 0.0)  # another lease: nothing in flight
        assert not dispatcher.quiesce("chaos/acme:", 0.3)
        release.set()
        assert dispatcher.quiesce("chaos/acme:", 10)
        assert [r.header(HEADER) for r in receiver.requests] == ["chaos/acme:3"]
        assert dispatcher.wait_idle(5)
    finally:
        release.set()
        dispatcher.close(2)
        receiver.stop()
