"""What the Redis store adds to the contract (tests/test_store.py): URLs and secrets, the key
prefix, roles shared by replicas (two handles play two replicas), an unreachable Redis, and
`eventd deadletter` on it. Against the shared Redis, or a redis-server a test starts itself.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import redis
from hypothesis import assume, given
from hypothesis import strategies as st

from eventd.errors import ConfigError, StateDirError, StoreError
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.settings import Settings
from eventd.stores import open_store, resolve_store, store_exists
from eventd.stores.backpressure import WaitingThrottles, until_stored
from eventd.stores.redis import RedisStore
from eventd.stores.redis.connect import parse
from tests.daemon_helpers import eventd_process
from tests.redis_server import RedisServer
from tests.waiting import wait_until

SECRET = "hunter2-s3cret"


def job(n: int, target: str = "webhook:http://127.0.0.1:9") -> ActionJob:
    return ActionJob(id=f"id-{n}", rule="r", kind="webhook", options={"url": "http://x/"},
                     event={"type": "container", "uuid": f"e{n}"}, target=target,
                     created_at=1000.0 + n)


def opened(url: str, cluster: str, **kw: object) -> RedisStore:
    store = open_store(Settings(store=url, cluster=cluster, **kw))  # type: ignore[arg-type]
    assert isinstance(store, RedisStore)
    return store


# -- URLs, settings, secrets ---------------------------------------------------------------------
def test_url_forms_and_the_password_never_in_the_printable_form() -> None:
    plain = parse(f"redis://:{SECRET}@cache.internal:6380/3")
    assert (plain.hosts, plain.db, plain.password) == ((("cache.internal", 6380),), 3, SECRET)
    assert plain.safe == "redis://cache.internal:6380/3" and SECRET not in repr(plain)
    assert parse("rediss://h/0?ssl_ca_certs=/etc/ca.pem").tls == {"ssl_ca_certs": "/etc/ca.pem"}
    assert parse("redis://h").hosts == (("h", 6379),) and parse("redis://h").db == 0
    sentinel = parse("redis+sentinel://s1:26379,s2/mymaster/2", password=SECRET)
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379))
    assert (sentinel.service, sentinel.db, sentinel.password) == ("mymaster", 2, SECRET)
    assert sentinel.safe == "redis+sentinel://s1:26379,s2:26379/mymaster/2"
    assert parse(f"redis://:{SECRET}@h/0", password="other").password == SECRET  # the URL wins


@pytest.mark.parametrize(("url", "says"), [
    (f"redis://:{SECRET}@h:6379/zero", "the database must be a number"),
    (f"redis://:{SECRET}@h:99999/0", "is not HOST:PORT"),
    (f"redis+sentinel://:{SECRET}@h:26379", "needs the master's name"),
    (f"redis://:{SECRET}@a:1,b:2/0", "takes one host"),
    (f"redis://:{SECRET}@h/0?password={SECRET}", "unknown URL option"),
    (f"rediss+cluster://:{SECRET}@h/0", "unknown scheme"),
])
def test_a_bad_url_says_what_is_wrong_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse(url)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("url", [
    "redis://:Zq9+sec#ret@host:6379/0",  # '#' in the password ends the host part there
    "redis://user:Zq9/sec@host:6379/0",  # '/'
    "redis://user:Zq9?sec@host:6379/0",  # '?'
    "redis://:Zq9+sec",  # the host forgotten
    "redis+sentinel://u:Zq9/sec@s1:26379/mymaster/0",
    "user:Zq9+sec@host:6379",  # the scheme forgotten
])
def test_a_password_that_breaks_the_url_is_never_echoed(url: str) -> None:
    """Issue 20.11: `--store: ':Zq9+sec' is not HOST:PORT` printed the password's start."""
    with pytest.raises(ConfigError) as info:
        resolve_store(url)
        parse(url)
    assert "Zq9" not in str(info.value) and "sec'" not in str(info.value)
    assert str(info.value).startswith("--store: ")


@given(st.text(alphabet="QZXJKW/?#@:%+ !", min_size=3, max_size=24),
       st.sampled_from(["redis://u:{}@h:6379/0", "redis://:{}@h/1", "rediss://:{}@h",
                        "redis+sentinel://:{}@s1:26379,s2/mymaster/0", "u:{}@h:6379"]))
def test_no_part_of_a_password_is_ever_printed(password: str, form: str) -> None:
    """Whatever a password holds, the error (or the printable URL) shows no piece of it."""
    pieces = re.findall("[QZXJKW]{3,}", password)
    assume(pieces)
    url = form.format(password)
    try:
        resolve_store(url)
        shown = parse(url).safe
    except ConfigError as exc:
        shown = str(exc)
    assert not [piece for piece in pieces if piece in shown]


def test_settings_take_store_cluster_and_the_password_from_env_or_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    settings = Settings.from_env({"EVENTD_STORE": "redis://h:1/0", "EVENTD_CLUSTER": "blue",
                                  "EVENTD_STORE_PASSWORD_FILE": str(secret_file)})
    assert (settings.store, settings.cluster, settings.store_password) == (
        "redis://h:1/0", "blue", SECRET)
    assert SECRET not in repr(settings)
    assert Settings.from_env({"EVENTD_STORE_PASSWORD": SECRET}).store_password == SECRET
    assert Settings.from_env({}, store="redis://h/0", cluster="red").cluster == "red"
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({"EVENTD_STORE_PASSWORD": SECRET,
                           "EVENTD_STORE_PASSWORD_FILE": str(secret_file)})
    with pytest.raises(ConfigError, match="cannot read") as info:
        Settings.from_env({"EVENTD_STORE_PASSWORD_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="EVENTD_CLUSTER: 'a b:c'"):
        Settings.from_env({"EVENTD_CLUSTER": "a b:c"})
    assert SECRET not in str(info.value)


def test_a_password_protected_redis(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", password=SECRET) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        with pytest.raises(StoreError) as info:  # no password given: Redis refuses
            opened(url, "c")
        assert "127.0.0.1" in str(info.value)
        with pytest.raises(StoreError) as wrong:
            opened(f"redis://:wrong-{SECRET}@127.0.0.1:{server.port}/0", "c")
        assert SECRET not in str(wrong.value) and "wrong-" not in str(wrong.value)
        store = opened(url, "c", store_password=SECRET)
        try:
            assert store.spool_add(job(1)) and store.spool_count() == 1
        finally:
            store.close()


# -- the key prefix --------------------------------------------------------------------------
def test_every_key_starts_with_the_cluster_and_clusters_do_not_mix(redis_url: str,
                                                                   redis_cluster: str) -> None:
    blue, other = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster + "-other")
    try:
        blue.spool_add(job(1))
        blue.deadletter_add(job(2), "gave up")
        blue.throttle_acquire("rule\0key", 60.0, time.time())
        blue.mark("service/a", time.time() + 60)
        blue.dedupe_save(b"u1")
        blue.limit_acquire("service/a", "id-1", 3, 60.0, time.time())
        blue.lease_acquire("lane:x", "me", 5.0)
        blue.seen_first("u1", 60.0)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        keys = list(client.scan_iter(match=f"{redis_cluster}*"))
        assert len(keys) >= 10 and all(k.startswith(f"{redis_cluster}:") for k in keys)
        assert other.spool_count() == other.deadletter_count() == 0
        assert other.dedupe_load() == b"" and store_exists(
            Settings(store=redis_url, cluster=redis_cluster + "-other")) is False
        assert store_exists(Settings(store=redis_url, cluster=redis_cluster))
    finally:
        blue.close()
        other.close()


# -- shared by replicas ------------------------------------------------------------------------
def test_two_replicas_racing_for_a_throttle_key_acquire_it_once(redis_url: str,
                                                                redis_cluster: str) -> None:
    replicas = [opened(redis_url, redis_cluster) for _ in range(2)]
    wins: list[bool] = []
    start = threading.Barrier(8)

    def race(store: RedisStore) -> None:
        start.wait()
        wins.append(store.throttle_acquire("rule\0svc", 60.0, time.time()))

    threads = [threading.Thread(target=race, args=(replicas[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert wins.count(True) == 1 and len(wins) == 8
    finally:
        for store in replicas:
            store.close()


def test_a_job_finished_lately_is_not_accepted_again_by_a_retry_or_another_replica(
        redis_url: str, redis_cluster: str) -> None:
    # Issue 25: a spool_add retried after a write no Redis replica confirmed added the job
    # again after another replica had delivered and finished it (2,122 jobs sent twice in a
    # 10-minute chaos run); both sides of a split brain accepted the same event's job.
    a, b = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    try:
        first = job(1)
        assert a.spool_add(first)
        assert [j.id for j in b.spool_pending()] == ["id-1"]
        b.spool_done("id-1")  # delivered by b
        a._unsure_adds["id-1"] = "a-call-1"  # a's first try raised after Redis had run it
        assert a.spool_add(first) is False  # the retry: accepted already, and finished
        assert b.spool_add(job(1)) is False  # the other side of a split brain
        assert a.spool_count() == 0 and a.spool_pending() == []
        assert a.spool_add(job(2))  # a new job is accepted as ever
        assert [j.id for j in a.spool_pending()] == ["id-2"]
    finally:
        a.close()
        b.close()


def test_a_page_of_the_spool_is_full_though_another_replica_finishes_jobs_while_it_is_read(
        redis_url: str, redis_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A lane reads a full page as "more in the spool" and a short one as its end. Chaos seed
    # 1 (10 minutes, t+514.2): r1 read the ids of a target's oldest 1028 jobs, r2 and r3
    # finished some of theirs before it read the jobs, the page came back short, and r1's lane
    # sent its next accepted jobs at once, ahead of the 19 older ones past those ids.
    a, b = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    try:
        for n in range(6):
            assert a.spool_add(job(n, target="t1"))
        read_jobs = a._jobs
        finished: list[str] = []

        def finished_meanwhile(ids: list[str]) -> list[ActionJob]:
            if ids and not finished:  # b finishes the oldest between a's two reads
                finished.append(ids[0])
                b.spool_done(ids[0])
            return read_jobs(ids)

        monkeypatch.setattr(a, "_jobs", finished_meanwhile)
        assert [j.id for j in a.spool_pending(target="t1", limit=4)] == [
            "id-1", "id-2", "id-3", "id-4"]
        assert finished == ["id-0"]
        assert [j.id for j in a.spool_pending(target="t1", limit=9)] == [
            "id-1", "id-2", "id-3", "id-4", "id-5"]  # the end of the spool: a short page
        assert a.spool_pending(target="t1", limit=0) == []
    finally:
        a.close()
        b.close()


def test_the_rest_limit_holds_across_replicas(redis_url: str, redis_cluster: str) -> None:
    a, b = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    try:
        now = 5000.0
        assert a.limit_acquire("service/s1", "job-1", 3, 600.0, now)
        assert b.limit_acquire("service/s1", "job-2", 3, 600.0, now + 1)
        assert a.limit_acquire("service/s1", "job-1", 3, 600.0, now + 2)  # a retry counts once
        assert b.limit_acquire("service/s1", "job-3", 3, 600.0, now + 3)
        assert not a.limit_acquire("service/s1", "job-4", 3, 600.0, now + 4)
        assert not b.limit_acquire("service/s1", "job-5", 3, 600.0, now + 5)
        assert b.limit_acquire("service/other", "job-6", 3, 600.0, now + 5)
        assert a.limit_acquire("service/s1", "job-4", 3, 600.0, now + 600.5)  # window passed
    finally:
        a.close()
        b.close()


def test_leases_have_one_holder_growing_tokens_and_end_by_themselves(
        redis_url: str, redis_cluster: str) -> None:
    a, b = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    try:
        first = a.lease_acquire("lane:t", "replica-a", 10.0)
        assert first > 0 and b.lease_acquire("lane:t", "replica-b", 10.0) == 0
        assert a.lease_acquire("lane:t", "replica-a", 10.0) == first  # a renewal
        b.lease_release("lane:t", "replica-b")  # not the holder: nothing happens
        assert b.lease_acquire("lane:t", "replica-b", 10.0) == 0
        a.lease_release("lane:t", "replica-a")
        second = b.lease_acquire("lane:t", "replica-b", 0.3)
        assert second > first
        # the holder dies (no renewal): the lease passes on once its ttl is over
        third = wait_until(lambda: a.lease_acquire("lane:t", "replica-a", 10.0), 5.0, 0.05)
        assert third > second
    finally:
        a.close()
        b.close()


def test_the_shared_dedupe_check_lets_one_replica_see_an_event_first(
        redis_url: str, redis_cluster: str) -> None:
    a, b = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    try:
        assert a.seen_first("uuid-1", 60.0)
        assert not b.seen_first("uuid-1", 60.0) and not a.seen_first("uuid-1", 60.0)
        assert b.seen_first("uuid-2", 60.0)
    finally:
        a.close()
        b.close()


def test_a_job_accepted_by_one_replica_is_seen_and_finished_by_another(
        redis_url: str, redis_cluster: str) -> None:
    a, b = opened(redis_url, redis_cluster), opened(redis_url, redis_cluster)
    try:
        for n in range(3):
            assert a.spool_add(job(n, target="t1" if n != 1 else "t2"))
        assert not b.spool_add(job(0))  # the same job (same id) is accepted once
        assert [j.id for j in b.spool_pending(target="t1")] == ["id-0", "id-2"]
        b.spool_done("id-0")
        b.deadletter_add(job(2, target="t1"), "HTTP 400")
        assert [j.id for j in a.spool_pending()] == ["id-1"]
        assert a.spool_targets() == {"t2": 1}
        assert [j.id for j in a.deadletter_take(["id-2"])] == ["id-2"]
        assert b.deadletter_take(["id-2"]) == []  # already taken back by the other
        assert [j.id for j in b.spool_pending()] == ["id-1", "id-2"]
    finally:
        a.close()
        b.close()


def test_a_second_deliverer_is_refused_until_the_first_closes(redis_url: str,
                                                              redis_cluster: str) -> None:
    settings = Settings(store=redis_url, cluster=redis_cluster)
    first = open_store(settings, exclusive=True)
    try:
        with pytest.raises(StateDirError, match=f"delivers the spool of cluster '{redis_cluster}'"):
            open_store(settings, exclusive=True)
        beside = open_store(settings)  # looking (deadletter list) works beside it
        beside.close()
    finally:
        first.close()
    open_store(settings, exclusive=True).close()


# -- an unreachable Redis ----------------------------------------------------------------------
def test_an_unreachable_redis_raises_store_errors_counts_them_and_recovers(tmp_path: Path) -> None:
    metrics = Metrics()
    with RedisServer(tmp_path / "redis") as server:
        store = opened(server.url, "c")
        errors = metrics.store_errors
        store.observe(lambda op: errors.labels(op=op).inc(), metrics.store_up.set)
        value = metrics.registry.get_sample_value
        try:
            assert store.healthy() and value("eventd_store_up") == 1
            assert store.spool_add(job(0))  # Redis has the script: a call it gets, it runs
            server.pause()  # SIGSTOP: connections stay open, nothing answers
            try:
                with pytest.raises(StoreError) as info:
                    store.spool_add(job(1))
                assert info.value.op == "spool_add" and "127.0.0.1" in str(info.value)
                with pytest.raises(StoreError) as read:
                    store.spool_count()
                assert read.value.op == "spool_count"
                assert not store.healthy()
                assert value("eventd_store_up") == 0
                assert value("eventd_store_errors_total", {"op": "spool_add"}) == 1
                assert value("eventd_store_errors_total", {"op": "spool_count"}) == 1
            finally:
                server.resume()
            assert wait_until(store.healthy, 10.0, 0.1)
            assert value("eventd_store_up") == 1
            # Redis may have run the first spool_add when it woke (its answer was lost): the
            # engine's retry of the same job is an acceptance either way, and keeps one copy.
            assert store.spool_add(job(1)) is True
            assert store.spool_count() == 2 and not store.spool_add(job(1))
        finally:
            store.close()
        server.kill()  # connection refused this time
        with pytest.raises(StoreError, match="127.0.0.1"):
            opened(server.url, "c")


def test_the_engines_throttle_waits_for_redis_and_its_lost_answer_counts(tmp_path: Path) -> None:
    """A throttle acquired while Redis was silent is run by Redis when it wakes; the engine's
    retry (same key, same time) must then hear "acquired", not "throttled" (a lost alert)."""
    with RedisServer(tmp_path / "redis") as server:
        store = opened(server.url, "c")
        stopping = threading.Event()
        throttles = WaitingThrottles(store, stopping)
        answers: list[bool] = []
        now = time.time()
        try:
            assert throttles.throttle_acquire("r\0warm", 60.0, now)  # Redis has the script
            server.pause()
            try:
                waiter = threading.Thread(
                    target=lambda: answers.append(throttles.throttle_acquire("r\0k", 60.0, now)))
                waiter.start()
                wait_until(lambda: not store.healthy(), 10, 0.1)
                assert answers == []  # held, not answered "throttled"
            finally:
                server.resume()
            waiter.join(30)
            assert answers == [True]
            assert not throttles.throttle_acquire("r\0k", 60.0, now + 1)
            server.pause()
            stopping.set()  # a stop while Redis is silent: the wait ends, nothing acquired
            assert not throttles.throttle_acquire("r\0other", 60.0, now)
            with pytest.raises(StoreError):
                until_stored(lambda: store.spool_add(job(1)), stopping, "spool_add")
        finally:
            server.resume()
            store.close()


# -- eventd deadletter on Redis -----------------------------------------------------------------
def test_deadletter_commands_work_on_the_redis_store(redis_url: str, redis_cluster: str,
                                                     tmp_path: Path) -> None:
    store = opened(redis_url, redis_cluster)
    try:
        for n in range(3):
            store.spool_add(job(n))
            store.deadletter_add(job(n), f"HTTP 40{n}")
    finally:
        store.close()
    env = {"HOME": str(tmp_path), "EVENTD_STATE_DIR": str(tmp_path / "unused")}

    def run(*args: str, **extra: str) -> tuple[int, str]:
        process = eventd_process("deadletter", *args, env={**env, **extra}, cwd=tmp_path)
        out, err = process.communicate(timeout=30)
        return process.returncode, out + err

    code, out = run("list", "--store", redis_url, "--cluster", redis_cluster)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["id-0", "id-1", "id-2"]
    assert "HTTP 401" in out
    code, out = run("retry", "id-1", "--cluster", redis_cluster, EVENTD_STORE=redis_url)
    assert code == 0 and "moved 1 dead letter(s) back to the spool" in out
    code, out = run("purge", "id-0", EVENTD_STORE=redis_url, EVENTD_CLUSTER=redis_cluster)
    assert code == 0 and "purged 1 dead letter(s)" in out
    store = opened(redis_url, redis_cluster)
    try:
        assert [d.job.id for d in store.deadletter_list()] == ["id-2"]
        assert [j.id for j in store.spool_pending()] == ["id-1"]
    finally:
        store.close()
    assert not (tmp_path / "unused").exists()  # nothing written beside the Redis store
    code, out = run("list", "--store", "redis://127.0.0.1:1/0")
    assert code == 2 and "127.0.0.1:1" in out and "Traceback" not in out


# -- one wording for "cannot reach the store" ---------------------------------------------------
def test_cannot_reach_the_store_is_one_line_and_exit_2_in_every_command(tmp_path: Path) -> None:
    """Issue 21.5: status said `cannot reach the store (ConnectionError)` with exit 1, deadletter
    and run an internal name (`_exists failed`) after the daemon's "accepting nothing" line."""
    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    said = f"cannot reach the store at redis://127.0.0.1:{port}/0 (connection refused)"
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: r, match: {type: x}, actions: [{log: {message: m}}]}\n")
    env = {"HOME": str(tmp_path), "DOCKERCLOUD_USER": "u", "DOCKERCLOUD_APIKEY": "k" * 12}
    for command, *args in (("status",), ("deadletter", "list"),
                           ("run", "--rules", str(rules), "--state-dir", str(tmp_path / "s"))):
        process = eventd_process(command, *args, "--store", url, env=env, cwd=tmp_path)
        out, err = process.communicate(timeout=60)
        lines = [line for line in err.splitlines() if line.strip()]
        assert process.returncode == 2, (command, out, err)
        assert lines[-1] in (f"eventd: {said}", f"eventd {command}: {said}"), (command, err)
        assert not [line for line in lines if "unreachable" in line or "accepting" in line], err
        assert "_exists" not in err and "Traceback" not in err and SECRET not in out + err


def test_status_of_a_cluster_that_is_not_there_says_so(redis_url: str, redis_cluster: str,
                                                       tmp_path: Path) -> None:
    """Issue 21.5: `eventd status --cluster <typo>` printed `0 replica(s)` with exit 0."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.sadd(f"{redis_cluster}:cluster:replicas", "r1")  # a replica said hello
    finally:
        client.close()
    typo = redis_cluster[:-1] + ("x" if not redis_cluster.endswith("x") else "y")
    process = eventd_process("status", "--store", redis_url, "--cluster", typo,
                             env={"HOME": str(tmp_path)}, cwd=tmp_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2 and out == ""
    assert f"eventd status: there is no cluster {typo!r} on " in err
    assert f"(did you mean {redis_cluster!r}?)" in err
