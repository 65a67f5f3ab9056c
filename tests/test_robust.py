"""Issue 20's findings 3, 4 and the hostile store: data read from events and stores never
stops a replica or part of it silently (real Redis, real `eventd run` replicas)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from eventd.emulator import Emulator
from tests.cluster_helpers import Cluster, Replica, cluster_fixture, replicas_fixture
from tests.daemon_helpers import emulator_env, forward_rules, free_port, is_ready, write_rules
from tests.waiting import wait_until


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from cluster_fixture()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    yield from replicas_fixture()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(tick=0.02) as emulator:
        yield emulator


HOSTILE_NAMESPACES = ([1, 2], {"a": 1}, 5, None, True, "x" * 5000)


def delivered(receiver, uuid: str) -> bool:
    return any(r.path == "/hook" and r.json().get("uuid") == uuid for r in receiver.requests)


def test_a_non_string_namespace_in_an_event_does_not_stop_a_cluster_replica(
        emu, cluster, replicas, tmp_path, webhook_receiver):
    replica = Replica(emu, forward_rules(tmp_path, webhook_receiver.url), tmp_path, "r1",
                      cluster).start()
    replicas.append(replica)
    wait_until(lambda: replica.readyz()[0] == 200 and sum(emu.namespace_counts().values()) == 1,
               30, message="replica ready and connected")
    container = emu.world.objects("container")[0]
    uri = emu.world.resource_uri("container", container.uuid)
    for i, namespace in enumerate(HOSTILE_NAMESPACES):
        event = {"type": "container", "action": "update", "state": "Running",
                 "resource_uri": uri, "parents": [], "uuid": f"hostile-{i}",
                 "datetime": "2026-12-05T00:00:00Z", "namespace": namespace}
        emu.emit(json.dumps(event))
    good = emu.emit_event(type="container")
    wait_until(lambda: delivered(webhook_receiver, good["uuid"]), 20,
               message="the next good event delivered")
    assert replica.alive(), replica.log()[-3000:]
    assert replica.readyz()[0] == 200
    assert "Traceback" not in replica.log()


# -- finding 3: every record read from a store is checked -----------------------------------
GARBAGE_JOBS = {"g-json": "{not json", "g-list": "[1, 2]", "g-types": json.dumps(
    {"id": "g-types", "rule": 5, "kind": "webhook", "options": [], "event": {}, "target": "x",
     "created_at": "now"}), "g-bytes": b"\xff\xfe\x00"}


def spool_garbage_sqlite(state_dir: Path, target: str) -> None:
    import sqlite3

    db = sqlite3.connect(state_dir / "eventd.sqlite3")
    with db:
        for job_id, data in GARBAGE_JOBS.items():
            db.execute("INSERT INTO spool (id, target, attempts, data) VALUES (?, ?, 0, ?)",
                       (job_id, target, data))
    db.close()


def spool_garbage_redis(client, prefix: str, target: str) -> None:
    for job_id, data in GARBAGE_JOBS.items():
        seq = client.incr(f"{prefix}:seq")
        client.hset(f"{prefix}:spool", job_id, data)
        client.hset(f"{prefix}:spool:att", job_id, "zero" if job_id == "g-json" else "0")
        client.hset(f"{prefix}:spool:target", job_id, target)
        client.zadd(f"{prefix}:spool:order", {job_id: seq})
        client.zadd(f"{prefix}:spool:t:{target}", {job_id: seq})
        client.sadd(f"{prefix}:spool:targets", target)


def test_undecodable_spool_records_are_dead_letters_with_their_reason_counted(
        store_and_reopen, metrics, request):
    from eventd.pipeline import observe_store

    store, _ = store_and_reopen
    if store.name == "memory":
        pytest.skip("the memory store keeps only what this process wrote")
    if store.name == "sqlite":
        spool_garbage_sqlite(store.state_dir, "webhook:http://x")
    else:
        from tests.cluster_helpers import redis_client

        spool_garbage_redis(redis_client(), request.getfixturevalue("redis_cluster"),
                            "webhook:http://x")
    observe_store(store, metrics)
    assert store.spool_pending("webhook:http://x") == []
    assert store.spool_pending() == []
    assert store.spool_count() == 0
    letters = {letter.job.id: letter for letter in store.deadletter_list()}
    assert sorted(letters) == sorted(GARBAGE_JOBS)
    assert all(letter.reason.startswith("undecodable spool record: ") for letter in letters.values())
    assert "not JSON" in letters["g-json"].reason and "'rule' is int" in letters["g-types"].reason
    assert letters["g-list"].job.context["record"] == "[1, 2]"
    assert metrics.registry.get_sample_value(
        "eventd_store_errors_total", {"op": "spool_decode"}) == len(GARBAGE_JOBS)


def test_a_garbage_dedupe_snapshot_starts_an_empty_window_said_and_counted(
        store_and_reopen, metrics, request, caplog):
    from eventd.dedupe import DedupeSaver
    from eventd.pipeline import observe_store

    store, _ = store_and_reopen
    if store.name == "memory":
        pytest.skip("the memory store keeps only what this process wrote")
    observe_store(store, metrics)
    if store.name == "sqlite":
        import sqlite3

        values: list[object] = ["a text", 12345, 1.5]
        for value in values:
            db = sqlite3.connect(store.state_dir / "eventd.sqlite3")
            with db:
                db.execute("INSERT OR REPLACE INTO snapshot (name, data) VALUES ('dedupe', ?)",
                           (value,))
            db.close()
            assert DedupeSaver.load(store).window.version == 0
    else:
        from tests.cluster_helpers import redis_client

        client, key = redis_client(), f"{request.getfixturevalue('redis_cluster')}:dedupe"
        values = [b"\xff\xfe", b"!!!not base64", b"EDW1\x00"]
        for value in values:
            client.set(key, value)
            assert DedupeSaver.load(store).window.version == 0
        client.delete(key)
        client.hset(key, "a", "b")  # another type of key
        values.append("hash")
        assert DedupeSaver.load(store).window.version == 0
    assert metrics.registry.get_sample_value(
        "eventd_store_errors_total", {"op": "dedupe_decode"}) == len(values)
    assert "Traceback" not in caplog.text


def test_forged_heartbeats_are_ignored_and_the_replica_keeps_its_stream(
        emu, cluster, replicas, tmp_path, webhook_receiver):
    replica = Replica(emu, forward_rules(tmp_path, webhook_receiver.url), tmp_path, "r1",
                      cluster).start()
    replicas.append(replica)
    wait_until(lambda: replica.leads("(own)"), 30, message="r1 leads the stream")
    client, prefix = cluster.client, cluster.name
    forged = {"forged-a": json.dumps({"namespaces": ["(own)", "acme", "globex"]}),
              "forged-b": json.dumps({"namespaces": 5}), "forged-c": "not json"}
    for replica_id, info in forged.items():
        client.set(f"{prefix}:cluster:replica:{replica_id}", info, px=120_000)
        client.sadd(f"{prefix}:cluster:replicas", replica_id)

    def ignored() -> float:
        return sum(replica.sample("eventd_cluster_heartbeats_ignored_total", reason=reason) or 0
                   for reason in ("unsigned", "not_held", "malformed"))

    # Ticks every TTL/3 (0.7 s): 36 ignored heartbeats of 3 are 12 ticks, past the handover
    # (3 ticks) and the orphan retake (2 more) the forged ones used to cause.
    wait_until(lambda: ignored() >= 36, 60, message="forged heartbeats seen in many ticks")
    # none of them carries the cluster's MAC (the job key's): not counted as replicas at all
    assert replica.sample("eventd_cluster_heartbeats_ignored_total", reason="unsigned") >= 36
    assert replica.leads("(own)")
    assert (replica.sample("eventd_lease_changes_total", namespace="(own)",
                           reason="rebalanced") or 0) == 0
    log = replica.log()
    assert all(log.count(name) == 1 for name in forged), log[-3000:]
    assert "Traceback" not in log and "internal error" not in log
    good = emu.emit_event(type="container")
    wait_until(lambda: delivered(webhook_receiver, good["uuid"]), 20)


def test_a_worker_that_dies_is_restarted_counted_and_unready_meanwhile(emulator, tmp_path,
                                                                       internal_errors):
    import threading

    from tests.daemon_helpers import start_daemon

    daemon = start_daemon(emulator, write_rules(tmp_path / "rules", "rules: []\n"),
                          tmp_path / "state")
    try:
        wait_until(lambda: daemon.ready()[0], 20, message="ready")
        runs: list[int] = []
        go_on = threading.Event()

        def worker() -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("a worker's bug")
            go_on.wait(20)

        thread = threading.Thread(target=daemon.metrics.workers.run, args=("engine", worker),
                                  daemon=True)
        thread.start()
        ready, checks = wait_until(lambda: (lambda r: r if not r[0] else None)(daemon.ready()),
                                   10, message="unready while the worker waits to restart")
        assert checks["workers"] == "restarting: engine"
        wait_until(lambda: len(runs) == 2 and daemon.ready()[0], 10, message="ran again, ready")
        assert daemon.metrics.registry.get_sample_value(
            "eventd_worker_restarts_total", {"worker": "engine"}) == 1
        assert [where for where, _ in internal_errors] == ["engine"]  # logged with its traceback
        internal_errors.clear()
        go_on.set()
        thread.join(5)
    finally:
        daemon.stop()


# -- finding 9: hostile rule files and an unreadable rules directory -------------------------
BIG_INT_RULES = ("rules:\n  - name: big\n    match: {type: container}\n    throttle: "
                 + "9" * 5000 + "\n    actions:\n      - log: {message: hi}\n")


def as_unprivileged(*args: str) -> list[str]:
    """The command without the capabilities that let root read any file (root reads a mode
    000 directory otherwise); as it is when not root."""
    import os
    import shutil

    if os.geteuid() != 0:
        return list(args)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv (util-linux) cannot make a directory unreadable")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *args]


def eventd_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    import os
    import subprocess
    import sys

    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent", **(env or {})}
    return subprocess.run(as_unprivileged(sys.executable, "-m", "eventd", *args), env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_an_integer_of_5000_digits_is_one_problem_for_check_and_test(tmp_path):
    rules = write_rules(tmp_path / "rules", BIG_INT_RULES, "big.yaml")
    checked = eventd_cli("check", str(rules))
    assert checked.returncode == 1, checked.stderr  # a problem in a rule file, as any other
    assert "Traceback" not in checked.stdout + checked.stderr
    assert checked.stdout.count("\n") == 1 and "cannot read" in checked.stdout
    tested = eventd_cli("test", str(rules))
    assert tested.returncode == 2, tested.stderr
    assert "Traceback" not in tested.stdout + tested.stderr
    assert "ERROR" in tested.stdout and "4300" in tested.stdout


def test_an_unreadable_rules_directory_is_one_line_and_exit_2_for_check_test_run(
        tmp_path, emulator):
    rules = write_rules(tmp_path / "rules", "rules: []\n").parent
    rules.chmod(0)
    try:
        for args in (("check", str(rules)), ("test", str(rules)),
                     ("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"))):
            done = eventd_cli(*args, env=emulator_env(emulator))
            output = done.stdout + done.stderr
            assert done.returncode == 2, (args, output)
            assert "Traceback" not in output, output
            assert "Permission denied" in output, output
    finally:
        rules.chmod(0o700)


def test_a_sighup_reload_of_bad_or_unreadable_rules_keeps_the_daemon_running(
        tmp_path, emulator):
    import signal
    import subprocess
    import sys

    rules = write_rules(tmp_path / "rules", "rules: []\n").parent
    port = free_port()
    log = (tmp_path / "eventd.log").open("w")
    import os

    process = subprocess.Popen(
        as_unprivileged(sys.executable, "-m", "eventd", "run", "--rules", str(rules),
                        "--state-dir", str(tmp_path / "state"), "--metrics-addr",
                        f"127.0.0.1:{port}"),
        env={"PATH": os.environ.get("PATH", ""), **emulator_env(emulator)}, stdout=log,
        stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: is_ready(port), 30, message="eventd ready")
        (rules / "big.yaml").write_text(BIG_INT_RULES)
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "rule reload failed" in (tmp_path / "eventd.log").read_text(), 20)
        (rules / "big.yaml").unlink()
        rules.chmod(0)
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: (tmp_path / "eventd.log").read_text().count("rule reload failed") == 2,
                   20)
        assert process.poll() is None
        assert is_ready(port)
        text = (tmp_path / "eventd.log").read_text()
        assert "Traceback" not in text and "Permission denied" in text, text
    finally:
        rules.chmod(0o700)
        process.terminate()
        process.wait(20)
        log.close()


# -- finding 12: no piece of a ${VAR} value in an error -------------------------------------
@pytest.mark.parametrize("secret", ["SECRETPART1 SECRETPART2-xyz", "1SECRETPART1",
                                    "ok.SECRETPART1 !x", "SECRETPART1'SECRETPART2"])
def test_pieces_of_a_variable_never_appear_in_template_syntax_errors(tmp_path, secret):
    from eventd.ruleset.loader import check

    rules = write_rules(tmp_path / "rules", """
        rules:
          - name: leak
            match: {type: container}
            actions:
              - webhook:
                  url: "http://127.0.0.1:9/x"
                  headers: {X-Token: "{{ ${TOKEN} }}"}
        """)
    result = check([rules], {"TOKEN": secret})
    text = "\\n".join(str(p) for p in result.problems)
    assert result.errors, text
    assert "SECRETPART" not in text, text


# -- the hostile store: garbage into every key of the cluster's keyspace ---------------------
def _garbage_everywhere(client, prefix: str, wrong_types: bool) -> int:
    """Overwrite every key under `prefix` with garbage: same type, bad contents; or (with
    `wrong_types`) a key of another type. How many keys were spoiled."""
    junk = [b"\xff\xfe garbage", b"{not json", b"[1, 2]", b"-1", b"nan", b"", b"x" * 300,
            b'{"namespaces": 5}']
    keys = list(client.scan_iter(f"{prefix}:*"))
    for n, key in enumerate(keys):
        value = junk[n % len(junk)]
        kind = client.type(key).decode()
        if wrong_types:
            client.delete(key)
            if kind == "string":
                client.hset(key, "x", value)
            else:
                client.set(key, value)
            continue
        if kind == "string":
            ttl = client.pttl(key)
            client.set(key, value, px=ttl if ttl > 0 else None)
        elif kind == "hash":
            for field in client.hkeys(key):
                client.hset(key, field, value)
            client.hset(key, value or b"empty", value)
        elif kind == "zset":
            client.zadd(key, {value or b"empty": 1, b"\xff": float("inf")})
        elif kind == "set":
            client.sadd(key, value or b"empty", b"\xff")
        elif kind == "list":
            client.rpush(key, value)
    return len(keys)


def _delivers_or_exits_cleanly(replica: Replica, emu, receiver, what: str) -> str:
    """A new event is delivered, or the replica exited non-zero with one line saying why."""
    good = emu.emit_event(type="container")

    def outcome() -> str | None:
        if delivered(receiver, good["uuid"]):
            return "delivered"
        if not replica.alive():
            return "exited"
        return None

    result = wait_until(outcome, 40, message=f"{what}: delivered, or exited non-zero")
    log = replica.log()
    assert "Traceback" not in log, f"{what}:\n{log[-4000:]}"
    if result == "exited":
        assert replica.process is not None and replica.process.returncode != 0, log[-2000:]
    return result


@pytest.mark.parametrize("wrong_types", [False, True], ids=["bad-contents", "wrong-types"])
def test_a_hostile_store_never_leaves_a_replica_alive_and_silent(
        emu, cluster, replicas, tmp_path, webhook_receiver, wrong_types):
    rules = forward_rules(tmp_path, webhook_receiver.url)
    doc = yaml.safe_load(rules.read_text())
    # more of the keyspace: a spooled job, a throttle, a group
    doc["rules"] += yaml.safe_load(textwrap.dedent(f"""
        - name: down
          match: {{type: container}}
          throttle: {{key: "{{{{ event.state }}}}", window: 1h}}
          actions:
            - webhook: {{url: "http://127.0.0.1:{free_port()}/down"}}
        - name: digest
          match: {{type: container}}
          actions:
            - webhook:
                url: "{webhook_receiver.url}/digest"
                group: {{by: "{{{{ event.state }}}}", wait: 1h}}
        """))
    rules.write_text(yaml.safe_dump(doc))
    replica = Replica(emu, rules, tmp_path, "r1", cluster).start()
    replicas.append(replica)
    wait_until(lambda: replica.readyz()[0] == 200 and sum(emu.namespace_counts().values()) == 1,
               30, message="replica ready and connected")
    assert _delivers_or_exits_cleanly(replica, emu, webhook_receiver, "before") == "delivered"
    wait_until(lambda: len(cluster.keys()) >= 12, 20, message=f"state kept: {cluster.keys()}")
    spoiled = _garbage_everywhere(cluster.client, cluster.name, wrong_types)
    running = _delivers_or_exits_cleanly(replica, emu, webhook_receiver, "while running")
    replica.stop()
    _garbage_everywhere(cluster.client, cluster.name, wrong_types)
    again = Replica(emu, rules, tmp_path, "r2", cluster).start()
    replicas.append(again)
    wait_until(lambda: not again.alive() or (again.readyz()[0] == 200 and
                                             sum(emu.namespace_counts().values()) == 1),
               40, message="restarted: ready, or exited")
    restarted = _delivers_or_exits_cleanly(again, emu, webhook_receiver, "on restart")
    print(f"hostile store ({'wrong types' if wrong_types else 'bad contents'}): {spoiled} keys "
          f"({', '.join(k.split(':', 1)[1] for k in cluster.keys())}), "
          f"while running: {running}, on restart: {restarted}")


def test_a_forged_heartbeat_holding_nothing_takes_no_stream_from_a_replica(
        cluster, replicas, tmp_path, webhook_receiver):
    """With two streams, a forged live replica that lists nothing used to get one of them
    handed over every few ticks (no one took it; the real one took it back): heartbeats are
    now signed with the cluster's job key, and one without that MAC is not a replica."""
    with Emulator(tick=0.02, namespaces=("acme", "globex")) as emu:
        replica = Replica(emu, forward_rules(tmp_path, webhook_receiver.url), tmp_path, "r1",
                          cluster, namespaces="acme,globex").start()
        replicas.append(replica)
        wait_until(lambda: replica.leads("acme") and replica.leads("globex"), 30,
                   message="r1 leads both streams")
        for replica_id in ("forged-1", "forged-2"):
            cluster.client.set(f"{cluster.name}:cluster:replica:{replica_id}",
                               json.dumps({"namespaces": []}), px=120_000)
            cluster.client.sadd(f"{cluster.name}:cluster:replicas", replica_id)
        def rebalanced() -> float:
            return sum(replica.sample("eventd_lease_changes_total", namespace=namespace,
                                      reason="rebalanced") or 0 for namespace in ("acme", "globex"))

        # 12 ticks (TTL/3 = 0.7 s each), or the first stream handed over
        end = time.monotonic() + 8.5
        wait_until(lambda: rebalanced() > 0 or time.monotonic() > end, 30)
        assert rebalanced() == 0
        assert replica.leads("acme") and replica.leads("globex")
        assert (replica.sample("eventd_cluster_heartbeats_ignored_total",
                               reason="unsigned") or 0) >= 2


def test_a_page_cut_short_by_quarantined_records_is_not_the_last(store_and_reopen, metrics):
    """A spool page whose rows were partly undecodable still leads to the next page: the good
    jobs after it are delivered, not left for ever (SQLite pages by row, Redis by id)."""
    from eventd.pipeline import observe_store
    from eventd.records import ActionJob

    store, _ = store_and_reopen
    if store.name != "sqlite":
        pytest.skip("paging over quarantined rows is SQLite's (its pages are rows)")
    spool_garbage_sqlite(store.state_dir, "webhook:http://x")  # the oldest rows: garbage
    observe_store(store, metrics)
    for n in range(5):
        store.spool_add(ActionJob(id=f"good-{n}", rule="r", kind="webhook",
                                  options={"url": "http://x/"}, event={"uuid": f"u{n}"},
                                  target="webhook:http://x", created_at=1.0))
    assert [job.id for job in store.spool_iter("webhook:http://x", page=len(GARBAGE_JOBS))] \
        == [f"good-{n}" for n in range(5)]
