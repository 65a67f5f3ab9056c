"""One chaos run: the topology, the servers, the replicas, the load, and the history at the end.

    with ChaosCluster(Settings(replicas=3), workdir) as cluster:
        start = time.time()
        cluster.load.start(); Nemesis(cluster).hold("pause", "leader", 2 * ttl)
        cluster.settle()                 # heal, restart, one consumer per namespace, drained
        report = cluster.check(start)    # the checker's verdicts on that window

The emulator and the receiver run in this process, on hosts of their own; Redis (a primary,
and with `sentinel` a replica and a Sentinel) and the replicas are child processes on theirs.
The rules: every container event goes to the receiver's `/hook` (webhook, Idempotency-Key =
job id), a `Stopped` one also makes a REST call (`start` on its container, which the emulator
answers 404: it knows no object of these namespaces, and a 404 is an answer), and every
`connected` gap event goes to `/gap`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from eventd.emulator import Emulator
from eventd.emulator.fencing import HEADER as FENCING_HEADER
from eventd.emulator.fencing import Fences
from tests.chaos.checker import Report, check
from tests.chaos.history import History, Journal
from tests.chaos.hosts import FAST_FLAGS, OBSERVER, RedisNode, Replica, Sentinel
from tests.chaos.netns import Network
from tests.chaos.recorder import Load, RedisMonitor, replica_links, sentinel_primaries
from tests.daemon_helpers import emulator_env
from tests.receiver import WebhookReceiver
from tests.waiting import wait_until

logger = logging.getLogger(__name__)

CLUSTER = "chaos"
#: where failing runs' histories are kept (pytest's own temporary directories rotate)
HISTORY_ROOT = Path(os.environ.get("EVENTD_CHAOS_HISTORY")
                    or Path(tempfile.gettempdir()) / "eventd-chaos-history")
KEEP_RUNS = 10
#: the emulator's keepalive (ping interval, pong timeout): how soon it ends a dead connection
KEEPALIVE = (0.5, 1.0)


@dataclass(frozen=True)
class Settings:
    """The shape of a run."""

    replicas: int = 3
    namespaces: tuple[str, ...] = ("acme", "globex", "initech", "umbrella")
    rate: float = 100.0  # events per second, over all namespaces
    ttl: float = 3.0  # the lease TTL (eventd --lease-ttl)
    sentinel: bool = True  # Redis as primary + replica + Sentinel (else one server)
    seed: int = 1
    rest_share: float = 0.1  # events that also make a REST call
    redis_options: tuple[str, ...] = ()  # more redis-server flags, for both servers


RULES = """\
rules:
  - name: forward
    match: {{type: container}}
    actions:
      - webhook:
          url: "{receiver}/hook"
          json: {{ns: "{{{{ event.namespace }}}}", uuid: "{{{{ event.uuid }}}}"}}
  - name: restart
    match: {{type: container, state: Stopped}}
    actions:
      - dockercloud: {{call: start, target: "{{{{ event.resource_uri }}}}"}}
  - name: gap
    match: {{type: eventd, state: connected}}
    actions:
      - webhook:
          url: "{receiver}/gap"
          json: {{ns: "{{{{ event.namespace }}}}", gap: "{{{{ event.gap_seconds }}}}",
                 datetime: "{{{{ event.datetime }}}}"}}
"""


#: seconds without a failed accepting store call before the drain: more than the engine's
#: longest wait between tries (2 s) and a WAIT (1 s)
STORE_QUIET = 4.0


class ChaosCluster:
    """The topology and everything on it; `close()` (or the `with` block) removes it all."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.journal = Journal()
        self.roles = [f"r{i + 1}" for i in range(settings.replicas)]
        store = ["redis1", "redis2", "sentinel"] if settings.sentinel else ["redis1"]
        self.net = Network([OBSERVER, *store, "emu", "recv", *self.roles])
        self.redis_nodes: list[RedisNode] = []
        self.sentinel: Sentinel | None = None
        self.emulator: Any = None
        self.receiver: WebhookReceiver | None = None
        self.receiver_fences = Fences()
        self.receiver_delay = 0.0  # seconds each answer takes (the `slow-receiver` fault)
        self.monitor: RedisMonitor | None = None
        self.replicas: dict[str, Replica] = {}
        self.load: Any = None
        self.started = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> ChaosCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> ChaosCluster:
        """Build the network, start every server and replica; wait for one consumer each."""
        self.net.open()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        settings = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        options = settings.redis_options
        primary = RedisNode(self.net, "redis1", self.workdir / "redis1", options=options).start()
        self.redis_nodes = [primary]
        if settings.sentinel:
            replica = RedisNode(self.net, "redis2", self.workdir / "redis2",
                                replica_of=primary, options=options).start()
            self.redis_nodes.append(replica)
            wait_until(replica.in_sync, 30, 0.1, "the Redis replica's first sync")
            self.sentinel = Sentinel(self.net, "sentinel", self.workdir / "sentinel",
                                     primary).start()
        with self.net.inside("emu"):  # its sockets and threads live on the emu host
            self.emulator = Emulator(host=self.net.address("emu"), tick=0.05,
                                     namespaces=settings.namespaces, keepalive=KEEPALIVE,
                                     fencing=True, seed=settings.seed)
            self.emulator.start()
        with self.net.inside("recv"):
            self.receiver = WebhookReceiver(host=self.net.address("recv"), screen=self._screen)
            self.receiver.start()
        self.monitor = RedisMonitor(self.net, {n.role: n.address for n in self.redis_nodes},
                                    CLUSTER).start()
        rules = self.workdir / "rules.yaml"
        rules.write_text(RULES.format(receiver=self.receiver.url))
        store = self.sentinel.url if self.sentinel is not None else primary.url
        env = emulator_env(self.emulator, DOCKERCLOUD_NAMESPACE=",".join(settings.namespaces))
        for role in self.roles:
            # --allow-plaintext: the emulator's REST API is http:// on another host of this
            # closed test network (the gate refuses to send the credentials there otherwise).
            args = ["--rules", str(rules), "--state-dir", str(self.workdir / f"state-{role}"),
                    "--store", store, "--cluster", CLUSTER, "--lease-ttl", f"{settings.ttl}s",
                    "--allow-plaintext", *FAST_FLAGS]
            self.replicas[role] = Replica(self.net, role, self.workdir, self.journal, args,
                                          env).start()
        self.load = Load(self.emulator, settings.namespaces, settings.rate, self.journal,
                         settings.seed, settings.rest_share)
        self.started = time.time()
        self.steady(60)

    def _screen(self, request: Any) -> int | None:
        if self.receiver_delay:
            time.sleep(self.receiver_delay)  # a slow endpoint (the `slow-receiver` fault)
        return 409 if self.receiver_fences.refuses(request.header(FENCING_HEADER)) else None

    def close(self) -> None:
        """Stop everything (whatever state it is in) and remove the network."""
        if self.load is not None:
            self.load.stop()
        for replica in self.replicas.values():
            try:
                replica.stop(timeout=8)
            except Exception:  # noqa: BLE001 - teardown goes on
                logger.exception("stopping %s", replica.role)
        if self.monitor is not None:
            self.monitor.stop()
        if self.emulator is not None:
            self.emulator.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.sentinel is not None:
            self.sentinel.stop()
        for node in self.redis_nodes:
            node.stop()
        self.net.close()

    # -- the state of the cluster ---------------------------------------------------------------
    def replica(self, role: str) -> Replica:
        return self.replicas[role]

    def primary(self) -> RedisNode:
        """The Redis node that is primary now."""
        if self.sentinel is None:
            return self.redis_nodes[0]
        address = self.sentinel.master()
        return next((n for n in self.redis_nodes if n.address == address), self.redis_nodes[0])

    def a_leader(self, exclude: set[str] | None = None) -> str:
        """A live, unpaused replica that leads a stream now (else any live one)."""
        candidates = [r for role, r in self.replicas.items()
                      if r.alive() and not r.paused and role not in (exclude or set())]
        leaders = [r.role for r in candidates if r.leads()]
        return (leaders or [r.role for r in candidates] or self.roles)[0]

    def consumers(self) -> dict[str, int]:
        """Open stream connections per namespace, as the emulator counts them."""
        counts: dict[str, int] = self.emulator.namespace_counts()
        return counts

    def ready(self) -> bool:
        """Every replica runs and each namespace has exactly one consumer, that one replica
        says it leads."""
        if not all(r.alive() and not r.paused for r in self.replicas.values()):
            return False
        led = [ns for r in self.replicas.values() for ns in r.leads()]
        return self.consumers() == dict.fromkeys(self.settings.namespaces, 1) \
            and sorted(led) == sorted(self.settings.namespaces)

    def steady(self, timeout: float) -> None:
        """Wait until `ready`; AssertionError at the timeout."""
        wait_until(self.ready, timeout, 0.2, f"one consumer per namespace: {self.consumers()}")

    def recovered(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until `ready` again after a fault; False if it is not."""
        try:
            self.steady(timeout)
        except AssertionError:
            return False
        return True

    def settle(self, nemesis: Any = None, drain: float = 30.0) -> None:
        """After faults: stop the load, heal everything, bring every replica back, wait for
        one consumer per namespace and for the spool to drain."""
        if self.load is not None:
            self.load.stop()
        if nemesis is not None:
            nemesis.heal_all()
        self.net.heal()
        for replica in self.replicas.values():
            if replica.paused:
                replica.resume()
            if not replica.alive():
                replica.start()
        for node in self.redis_nodes:
            if node.process is None or node.process.poll() is not None:
                node.start()
        # A restarted old primary is a second one until Sentinel demotes it (~10 s) and it has
        # synced; until then a spool_add's WAIT finds no replica and its event is held: what
        # the drain waits for must be what the cluster can finish.
        if not self.agreed(60):
            logger.warning("the Redis nodes do not agree with Sentinel after 60 s")
        if not self.recovered(30):
            # Stuck (the checker reports the gap): start the replicas again, so that the
            # next window begins from a working cluster.
            logger.warning("cluster did not recover within 30 s (%s); restarting the replicas",
                           self.consumers())
            for replica in self.replicas.values():
                replica.stop(timeout=5)
                replica.start()
            self.steady(60)
        if not self.store_quiet(30):
            logger.warning("a replica's accepting store calls still failed after 30 s")
        self.drain(drain)

    def agreed(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until every Redis node agrees with Sentinel: the one it
        names says it is primary, the others are its synced replicas; False if they do not."""
        if self.sentinel is None:
            return True
        sentinel = self.sentinel

        def agree() -> bool:
            named = sentinel.master()
            return named is not None and all(node.follows(named) for node in self.redis_nodes)

        try:
            wait_until(agree, timeout, 0.2, "the Redis nodes to agree with Sentinel")
        except AssertionError:
            return False
        return True

    def store_quiet(self, timeout: float, quiet: float = STORE_QUIET) -> bool:
        """Wait (at most `timeout`) until no replica's accepting store call (spool_add,
        throttle_acquire) has failed for `quiet` seconds: none holds an event behind one (a
        held event is tried again every 2 s at most); False if that did not happen."""
        last: dict[str, tuple[float, float]] = {}

        def failures(replica: Replica) -> float:
            from prometheus_client.parser import text_string_to_metric_families

            return sum(sample.value for family in text_string_to_metric_families(replica.metrics())
                       for sample in family.samples if sample.name == "eventd_store_errors_total"
                       and sample.labels.get("op") in ("spool_add", "throttle_acquire"))

        def still() -> bool:
            now = time.monotonic()
            for role, replica in self.replicas.items():
                count = failures(replica)
                if last.get(role, (None, 0.0))[0] != count:
                    last[role] = (count, now)
            return all(now - since >= quiet for _, since in last.values())

        try:
            wait_until(still, timeout, 0.5, "the replicas' store calls to succeed")
        except AssertionError:
            return False
        return True

    def spool_size(self) -> int:
        def count() -> int:
            client = self.primary().client()
            try:
                return int(client.hlen(f"{CLUSTER}:spool"))
            finally:
                client.close()
        return self.net.call(OBSERVER, count)

    def drain(self, timeout: float, quiet: float = 3.0) -> bool:
        """Wait until the spool is empty and the receiver has heard nothing new for `quiet`
        seconds (a replica may still retry what it holds in memory: the checker judges a
        window by the jobs accepted in it); False if that did not happen within `timeout`."""
        assert self.receiver is not None
        receiver = self.receiver
        last = {"count": -1, "since": time.monotonic()}

        def drained() -> bool:
            count = len(receiver.requests)
            if count != last["count"]:
                last["count"], last["since"] = count, time.monotonic()
            return self.spool_size() == 0 and time.monotonic() - last["since"] > quiet

        try:
            wait_until(drained, timeout, 0.2, "the spool to drain")
        except AssertionError:
            return False
        return True

    # -- history --------------------------------------------------------------------------------
    def collect(self) -> History:
        """Everything the servers and the journal saw so far, in POSIX seconds."""
        assert self.receiver is not None and self.monitor is not None
        offset = time.time() - time.monotonic()
        hosts = {host.address: role for role, host in self.net.hosts.items()}

        def host(peer: str) -> str:
            return hosts.get(peer.rpartition(":")[0], peer)

        def wall(moment: float | None) -> float | None:
            return None if moment is None else moment + offset

        emu = self.emulator
        connections = [{"ns": c.namespace, "host": host(c.peer), "opened": wall(c.opened),
                        "closed": wall(c.closed), "last_pong": wall(c.last_pong),
                        "ended": c.ended, "token": c.token, "frames": c.frames}
                       for c in emu.stream_connections()]
        handshakes = [{"host": host(h.peer), "status": h.status, "at": wall(h.at),
                       "token": h.headers.get(FENCING_HEADER)}
                      for h in emu.handshakes() if h.status != 101]
        rest_calls = [{"method": c.method, "path": c.path, "query": dict(c.query),
                       "status": c.status, "host": host(c.peer), "at": wall(c.at),
                       "token": c.headers.get(FENCING_HEADER)} for c in emu.rest_calls()]
        requests = []
        for r in self.receiver.requests:
            try:
                body = r.json()
            except ValueError:
                body = {}
            body = body if isinstance(body, dict) else {}
            requests.append({"path": r.path, "key": r.header("Idempotency-Key"),
                             "ns": body.get("ns"), "uuid": body.get("uuid"),
                             "gap": body.get("gap"), "datetime": body.get("datetime"),
                             "status": r.status, "host": host(r.peer), "at": wall(r.at),
                             "token": r.header(FENCING_HEADER)})
        processes, faults, emitted = self.journal.snapshot()
        redis_records, blind = self.monitor.snapshot()
        fences = {"emulator": emu.fences.snapshot() if emu.fences else {},
                  "receiver": self.receiver_fences.snapshot()}
        meta = {"seed": self.settings.seed, "ttl": self.settings.ttl,
                "namespaces": list(self.settings.namespaces), "cluster": CLUSTER,
                "replicas": list(self.roles), "hosts": hosts, "rate": self.settings.rate,
                "sentinel": self.settings.sentinel, "started": self.started,
                "ended": time.time(), "fences": fences, "keepalive": list(KEEPALIVE),
                "copies": True,  # the replicas' copies of spool writes are recorded
                "links": True}  # and when each server was a synced replica of which
        return History(meta=meta, connections=connections, handshakes=handshakes,
                       rest_calls=rest_calls, requests=requests, emitted=emitted,
                       redis=redis_records, processes=processes, faults=faults,
                       store={**self.store_contents(), "blind": blind},
                       primaries=self.primaries(hosts), links=self.links(hosts))

    def links(self, hosts: dict[str, str]) -> list[dict[str, Any]]:
        """When each Redis server was a synced replica of which primary (their logs)."""
        out = []
        for node in self.redis_nodes:
            log = node.directory / "redis.log"
            if log.exists():
                out += replica_links(log.read_text(errors="replace"), node.role, hosts)
        return out

    def primaries(self, hosts: dict[str, str]) -> list[dict[str, Any]]:
        """Who Sentinel named primary, from when (the first node from the start; then its
        log's promotions); empty without Sentinel."""
        if self.sentinel is None:
            return []
        log = self.sentinel.directory / "sentinel.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [{"at": 0.0, "server": self.redis_nodes[0].role},
                *sentinel_primaries(text, hosts)]

    def store_contents(self) -> dict[str, Any]:
        """The spool's job ids and the dead letters' reasons, read from the primary."""
        def read() -> dict[str, Any]:
            client = self.primary().client()
            try:
                spool = sorted(client.hkeys(f"{CLUSTER}:spool"))
                dead = {}
                for job, record in client.hgetall(f"{CLUSTER}:dead").items():
                    try:
                        dead[job] = json.loads(record).get("reason")
                    except ValueError:
                        dead[job] = record[:200]
                return {"spool": spool, "dead": dead}
            finally:
                client.close()
        return self.net.call(OBSERVER, read)

    def check(self, start: float, end: float | None = None) -> tuple[Report, History]:
        """The checker's report on [start, end] (end: now), and the history it read."""
        history = self.collect()
        window = history.window(start, end if end is not None else history.meta["ended"])
        return check(window), window

    def keep(self, history: History, name: str) -> Path:
        """Save a history, the replicas' and Redis' logs under HISTORY_ROOT/<run>/<name>
        (the last KEEP_RUNS runs are kept); `python -m tests.chaos.checker DIR` reads it."""
        run = HISTORY_ROOT / time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        if not run.exists():
            runs = sorted(HISTORY_ROOT.glob("2*")) if HISTORY_ROOT.exists() else []
            for old in runs[:max(0, len(runs) - KEEP_RUNS + 1)]:
                shutil.rmtree(old, ignore_errors=True)
        directory = history.save(run / name)
        for replica in self.replicas.values():
            (directory / f"{replica.role}.log").write_text(replica.log())
        for node in self.redis_nodes:
            log = node.directory / "redis.log"
            if log.exists():
                shutil.copy(log, directory / f"{node.role}.log")
        if self.sentinel is not None and (self.sentinel.directory / "sentinel.log").exists():
            shutil.copy(self.sentinel.directory / "sentinel.log", directory / "sentinel.log")
        return directory
