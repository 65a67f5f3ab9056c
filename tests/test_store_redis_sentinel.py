"""The Redis store behind Sentinel (`redis+sentinel://`): a failover of the primary under a
writer that keeps accepting jobs, as the engine does (waiting while the store is away).

A primary, a replica and one `redis-server --sentinel` are started in a temporary directory;
`SENTINEL FAILOVER` promotes the replica, then the old primary is killed outright.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import pytest
import redis

from eventd.errors import StoreError
from eventd.records import ActionJob
from eventd.settings import Settings
from eventd.stores import open_store
from eventd.stores.backpressure import until_stored
from eventd.stores.redis.client import PRIMARY_CHECK
from tests.redis_server import SentinelSet
from tests.waiting import wait_until


def job(n: int) -> ActionJob:
    return ActionJob(id=f"id-{n:05d}", rule="r", kind="webhook", options={"url": "http://x/"},
                     event={"type": "service", "uuid": f"e{n}"}, target=f"t{n % 3}",
                     created_at=1000.0 + n)


def test_a_failover_of_the_primary_loses_no_accepted_job(tmp_path: Path) -> None:
    with SentinelSet(tmp_path / "sentinel") as redis_set:
        store = open_store(Settings(store=redis_set.url, cluster="sentinel"), exclusive=True)
        accepted: list[str] = []
        stop = threading.Event()

        def writer() -> None:  # the engine's loop: each job waits until the store takes it
            n = 0
            while not stop.is_set():
                try:
                    until_stored(functools.partial(store.spool_add, job(n)), stop, "spool_add")
                except StoreError:  # stopping while the store is away: that one is not accepted
                    return
                accepted.append(job(n).id)
                n += 1

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            wait_until(lambda: len(accepted) >= 200, 30, 0.05, "jobs accepted before the failover")
            redis_set.failover()
            before = len(accepted)
            wait_until(lambda: len(accepted) >= before + 200, 60, 0.05,
                       "jobs accepted by the new primary")
            redis_set.primary.kill()  # the old primary is gone for good
            before = len(accepted)
            wait_until(lambda: len(accepted) >= before + 50, 30, 0.05, "still accepting")
        finally:
            stop.set()
            thread.join(30)
        try:
            assert not thread.is_alive()
            assert store.healthy()
            spooled = [j.id for j in store.spool_iter()]
            assert spooled[:len(accepted)] == accepted  # every accepted job, once, in order
            assert set(spooled) - set(accepted) <= {job(len(accepted)).id}  # the one in flight
            assert sum(store.spool_targets().values()) == len(spooled) == store.spool_count()
            store.deadletter_add(store.spool_pending(limit=1)[0], "still writable")
            assert store.deadletter_count() == 1
        finally:
            store.close()
        client = redis_set.replica.client()  # now the primary
        try:
            assert client.info("replication")["role"] == "master"
            assert client.hlen("sentinel:spool") == len(spooled) - 1
        finally:
            client.close()


def test_a_call_tried_again_goes_to_the_primary_sentinel_names_not_the_address_that_failed(
        tmp_path: Path) -> None:
    """A call that times out on a primary Sentinel no longer names is tried again on the one it
    names: redis-py's own retry reconnects to the address that failed, and a restarted old
    primary answers there as a second primary until Sentinel demotes it."""
    with SentinelSet(tmp_path / "sentinel") as redis_set:
        store = open_store(Settings(store=redis_set.url, cluster="stale"))
        old, new = redis_set.primary.client(), redis_set.replica.client()
        sentinel = redis_set.sentinel_client()
        try:
            wait_until(lambda: new.info("replication").get("master_link_status") == "up", 20,
                       0.05, "the replica to be in sync")
            assert store.spool_add(job(0))  # the store's connection is to the old primary
            # Sentinel names the replica now; the old primary goes on as a primary of its own
            new.replicaof("NO", "ONE")
            sentinel.execute_command("SENTINEL", "REMOVE", SentinelSet.SERVICE)
            sentinel.execute_command("SENTINEL", "MONITOR", SentinelSet.SERVICE, "127.0.0.1",
                                     redis_set.replica.port, 1)
            wait_until(lambda: redis_set.master_port() == redis_set.replica.port, 20, 0.05,
                       "Sentinel to name the replica primary")
            # the old primary holds every command past the store's timeout (2 s), then answers
            old.execute_command("CLIENT", "PAUSE", 3500, "ALL")
            assert store.spool_add(job(1))
            assert store.lease_acquire("lane:t1", "r1", 10.0) > 0
            wait_until(lambda: old.ping(), 10, 0.05, "the old primary to answer again")
            assert old.hkeys("stale:spool") == [job(0).id]  # nothing written there since
            assert not old.exists("stale:lease:lane:t1")
            assert new.hget("stale:spool", job(1).id) is not None
            assert new.hget("stale:lease:lane:t1", "owner") == "r1"
        finally:
            store.close()
            for client in (old, new, sentinel):
                client.close()


def test_after_a_failover_the_next_try_goes_to_the_new_primary_not_the_old_one_still_up(
        tmp_path: Path) -> None:
    """SENTINEL FAILOVER leaves the old primary a primary until Sentinel demotes it (~10 s): a
    spool_add there finds no replica for its WAIT. The try after that goes to the primary
    Sentinel names (where WAIT waits for the old one to become its replica), not again to the
    old one, whose writes its demotion throws away."""
    with SentinelSet(tmp_path / "sentinel") as redis_set:
        store = open_store(Settings(store=redis_set.url, cluster="moved"))
        old, new = redis_set.primary.client(), redis_set.replica.client()
        try:
            wait_until(lambda: new.info("replication").get("master_link_status") == "up", 20,
                       0.05, "the replica to be in sync")
            assert store.spool_add(job(0))
            redis_set.failover()
            assert old.info("replication")["role"] == "master"  # not demoted yet
            for n in (1, 2):  # neither confirmed by a replica: both StoreError
                with pytest.raises(StoreError):
                    store.spool_add(job(n))
            assert old.info("replication")["role"] == "master"  # still: the demotion is later
            # the first try went there, unless the store's own check of the primary (once a
            # second, while idle) moved it to the new one first
            assert old.hget("moved:spool", job(1).id) is not None \
                or new.hget("moved:spool", job(1).id) is not None
            assert old.hget("moved:spool", job(2).id) is None
            assert new.hget("moved:spool", job(2).id) is not None
        finally:
            store.close()
            old.close()
            new.close()


def _store_connections(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name") == name)


def test_an_idle_store_follows_a_failover_before_its_next_call(tmp_path: Path) -> None:
    """Sentinel fails over while the store makes no call: its pooled connections leave the old
    primary (a primary until Sentinel demotes it, ~10 s) within a check's period, so the next
    call, a read or a write without WAIT, goes to the new one rather than the old one."""
    with SentinelSet(tmp_path / "sentinel") as redis_set:
        store = open_store(Settings(store=redis_set.url, cluster="idle"))
        old, new = redis_set.primary.client(), redis_set.replica.client()
        name = f"eventd-idle-{os.getpid()}"
        try:
            wait_until(lambda: new.info("replication").get("master_link_status") == "up", 20,
                       0.05, "the replica to be in sync")
            assert store.spool_add(job(0)) and store.healthy()
            assert _store_connections(old, name) == 2  # the calls' pool and the health check's
            redis_set.failover()
            new.hset("idle:spool", "written-after", "{}")  # on the new primary only
            wait_until(lambda: _store_connections(old, name) == 0, 2 * PRIMARY_CHECK + 3, 0.05,
                       "the idle store's connections to leave the old primary")
            assert store.spool_count() == 2  # read where the job written after is
            assert store.lease_acquire("lane:t1", "r1", 10.0) > 0
            assert new.hget("idle:lease:lane:t1", "owner") == "r1"
            assert not old.exists("idle:lease:lane:t1")
            assert store.healthy() and _store_connections(new, name) == 2
        finally:
            store.close()
            old.close()
            new.close()
