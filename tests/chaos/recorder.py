"""Recording what the store did, and making the load.

`RedisMonitor` keeps, from each Redis server's MONITOR feed, the cluster's commands that tell
its history: the lease scripts' inner SET/PEXPIRE/DEL (who held which stream, until when, as
Redis saw it) and the spool's HSET/ZADD/HDEL (which job was accepted, in which order, and
finished). A replica's MONITOR shows its own clients' commands and, from its primary's
address, what it replicates: the union of the clients' commands over every server is what each
one ran, and a spool write's copy on a replica (kept as `copy`) is what the primary's WAIT
waits for, so the checker tells an acknowledged acceptance from a write no replica ever had.
A server that restarts leaves a blind moment until the monitor reconnects: it is measured and
kept with the history.

`Load` emits container events at a steady rate, round-robin over the namespaces, and
journals each one (a share are `Stopped`, which the REST rule acts on).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from tests.chaos.history import Journal
from tests.chaos.netns import Network

#: one MONITOR line: `1796416592.174551 [0 lua] "SET" "k" "v"`
_LINE = re.compile(r'^(?P<at>\d+\.\d+) \[(?P<db>\d+) (?P<client>[^\]]*)\] (?P<args>.*)$')
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_KEPT = {"SET", "PEXPIRE", "DEL", "HSET", "HDEL", "ZADD"}
#: a Sentinel log line that names a new primary: `1:X 06 Dec 2026 09:31:23.693 # +promoted-slave
#: slave 10.0.0.2:6379 10.0.0.2 6379 @ mymaster 10.0.0.1 6379` (from then on Sentinel answers
#: with its address), or `... # +switch-master mymaster 10.0.0.1 6379 10.0.0.2 6379`; and the
#: one that tells it to be one, `+failover-state-send-slaveof-noone slave 10.0.0.2:6379 ...`
_NAMED = re.compile(r'^\d+:X (?P<when>\d+ \w+ \d+ [\d:.]+) [#*] (?:(?P<event>\+promoted-slave|'
                    r'\+failover-state-send-slaveof-noone) slave \S+ (?P<promoted>\S+) \d+ @|'
                    r'\+switch-master \S+ \S+ \d+ (?P<switched>\S+) \d+)')


#: a Redis server's log line: `9590:S 06 Dec 2026 18:54:21.502 * MASTER MODE enabled (...)`
#: (the server's own lines, M or S; not those of its forked children, C)
_SERVER_LINE = re.compile(r'^(?P<pid>\d+):[MS] (?P<when>\d+ \w+ \d+ [\d:.]+) [.*#-] (?P<text>.*)$')
#: its replication, as a replica tells it: the primary it follows (`Connecting to MASTER
#: 10.0.0.1:6379`, `Reconnecting to MASTER ...`), when it holds the primary's data (a full
#: sync loaded, a partial one accepted) and when that ends (the link lost, made a primary)
_FOLLOWS = re.compile(r'(?:Re)?[Cc]onnecting to MASTER (?P<address>[^\s:]+):\d+')
_SYNCED = ("MASTER <-> REPLICA sync: Finished with success",
           "MASTER <-> REPLICA sync: Master accepted a Partial Resynchronization",
           "Successful partial resynchronization with master")
_UNLINKED = ("Connection with master lost", "MASTER MODE enabled")


def _log_time(when: str) -> float | None:
    """POSIX seconds of a Redis or Sentinel log's local time `06 Dec 2026 18:54:21.502`."""
    stamp, _, fraction = when.partition(".")
    try:
        return time.mktime(time.strptime(stamp, "%d %b %Y %H:%M:%S")) + float(f"0.{fraction}")
    except ValueError:
        return None


def replica_links(log: str, server: str, roles: dict[str, str]) -> list[dict[str, Any]]:
    """From Redis server `server`'s log, each time it was a replica holding a primary's data:
    [{replica, primary, synced, lost}] (`primary` by `roles`, address -> role; `lost` None if
    linked at the log's end). While linked, a write on that primary reaches it as a command
    its MONITOR shows; the sync that begins a link carries earlier writes unseen (its RDB).
    A new process (a new pid) ends its predecessor's link: that one was killed, at the
    latest then."""
    links: list[dict[str, Any]] = []
    linked: dict[str, Any] | None = None
    primary: str | None = None
    pid = None
    for line in log.splitlines():
        match = _SERVER_LINE.match(line)
        at = _log_time(match["when"]) if match else None
        if match is None or at is None:
            continue
        text = match["text"]
        ends = match["pid"] != pid or text.startswith(_UNLINKED)
        follows = _FOLLOWS.match(text)
        if follows is not None and roles.get(follows["address"], follows["address"]) != primary:
            ends = True
        if ends and linked is not None:
            linked["lost"] = at
            linked = None
        if match["pid"] != pid:
            pid, primary = match["pid"], None
        if follows is not None:
            primary = roles.get(follows["address"], follows["address"])
        elif text.startswith(_UNLINKED[1]):
            primary = None
        elif text.startswith(_SYNCED) and primary is not None and linked is None:
            linked = {"replica": server, "primary": primary, "synced": at, "lost": None}
            links.append(linked)
    return links


def parse_monitor_line(line: str) -> tuple[float, str, list[str]] | None:
    """(time, client, args) of one MONITOR line; None if it is not one. Arguments keep
    Redis' escapes (`\\"`, `\\xNN`): the keys and ids read here never hold any."""
    match = _LINE.match(line)
    if match is None:
        return None
    return float(match["at"]), match["client"], _ARG.findall(match["args"])


def interesting(cluster: str, args: list[str]) -> dict[str, Any] | None:
    """The part of one command the history keeps (None: not the cluster's, or not needed)."""
    if len(args) < 2 or args[0].upper() not in _KEPT:
        return None
    op, key = args[0].upper(), args[1]
    prefix = f"{cluster}:"
    if not key.startswith(prefix):
        return None
    name = key[len(prefix):]
    if name.startswith("cluster:lease:") and op in ("SET", "PEXPIRE", "DEL"):
        if op == "SET":  # SET key holder:token PX ms -> [holder:token, ms]
            ms = args[4] if len(args) >= 5 and args[3].upper() == "PX" else ""
            return {"op": op, "key": name, "args": [args[2] if len(args) > 2 else "", ms]}
        return {"op": op, "key": name, "args": args[2:3]}  # PEXPIRE's ms
    if name == "spool" and op in ("HSET", "HDEL") and len(args) >= 3:
        return {"op": op, "key": name, "args": [args[2]]}  # the job id (its JSON is not kept)
    if name in ("spool:target", "dead") and op == "HSET" and len(args) >= 4:
        return {"op": op, "key": name, "args": [args[2], args[3][:300]]}
    if name == "spool:order" and op == "ZADD" and len(args) >= 4:
        return {"op": op, "key": name, "args": [args[2], args[3]]}  # seq, id
    return None


def sentinel_primaries(log: str, roles: dict[str, str]) -> list[dict[str, Any]]:
    """From a Sentinel's log, each server it named primary and from when (its local time):
    [{at, server, from}], `server` the host's role by `roles` (address -> role), `from` when
    Sentinel sent it SLAVEOF NO ONE: between `from` and `at` (~1 s, when Sentinel sees it
    promoted) the command may have run or not, so either server may take writes."""
    named: list[dict[str, Any]] = []
    promoting: dict[str, float] = {}  # address -> when Sentinel made it a primary
    for line in log.splitlines():
        match = _NAMED.match(line)
        if match is None:
            continue
        at = _log_time(match["when"])
        if at is None:
            continue
        address = match["promoted"] or match["switched"]
        if match["event"] == "+failover-state-send-slaveof-noone":
            promoting[address] = at  # told to be a primary now, named once it is one
            continue
        server = roles.get(address, address)
        told = promoting.pop(address, at)
        if not named or named[-1]["server"] != server:
            named.append({"at": at, "server": server, "from": told})
    return named


class RedisMonitor:
    """MONITOR on each server, from the observer host, reconnecting after a restart."""

    def __init__(self, net: Network, servers: dict[str, str], cluster: str,
                 observer: str = "obs", port: int = 6379) -> None:
        self.net = net
        self.servers = servers  # role -> address
        self._nodes = set(servers.values())
        self._hosts = {host.address: role for role, host in net.hosts.items()}
        #: per server, the host whose EVAL/EVALSHA runs now: a script's inner commands follow
        #: its own line in the feed, so each kept record says which replica made it
        self._caller: dict[str, str] = {}
        self.cluster = cluster
        self.observer = observer
        self.port = port
        self.records: list[dict[str, Any]] = []
        #: [server, from, until]: moments a server may have run commands unseen
        self.blind: list[list[Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> RedisMonitor:
        ready = [threading.Event() for _ in self.servers]

        def spawn() -> None:  # on the observer: the threads inherit its namespace
            for (role, address), seen in zip(self.servers.items(), ready, strict=True):
                thread = threading.Thread(target=self._follow, args=(role, address, seen),
                                          name=f"monitor-{role}", daemon=True)
                self._threads.append(thread)
                thread.start()

        self.net.call(self.observer, spawn)
        for seen in ready:
            seen.wait(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _follow(self, role: str, address: str, ready: threading.Event) -> None:
        lost_at: float | None = None
        while not self._stop.is_set():
            connection = redis.Connection(host=address, port=self.port, socket_timeout=5,
                                          socket_connect_timeout=0.5, decode_responses=True)
            try:
                connection.connect()
                connection.send_command("MONITOR")
                connection.read_response()  # +OK
                if lost_at is not None:
                    with self._lock:
                        self.blind.append([role, lost_at, time.time()])
                    lost_at = None
                ready.set()
                while not self._stop.is_set():
                    if connection.can_read(0.5):  # (a timed-out read would drop the connection)
                        self.keep(role, str(connection.read_response()))
            except (redis.RedisError, OSError):
                if lost_at is None:
                    lost_at = time.time()
                self._stop.wait(0.02)
            finally:
                connection.disconnect()
        if lost_at is not None:
            with self._lock:
                self.blind.append([role, lost_at, time.time()])

    def keep(self, role: str, line: str) -> None:
        """Keep what the history needs of server `role`'s MONITOR `line`."""
        parsed = parse_monitor_line(line)
        if parsed is None:
            return
        at, client, args = parsed
        address = client.rpartition(":")[0]
        if address in self._nodes:  # a replica's copy of its primary's writes
            copied = interesting(self.cluster, args)
            if copied is not None and copied["key"] == "spool" and copied["op"] == "HSET":
                copied.update(at=at, server=role, client=client, by=None, copy=True)
                with self._lock:
                    self.records.append(copied)
            return  # the rest: the primary's feed has them
        if client != "lua" and args and args[0].upper() in ("EVALSHA", "EVAL"):
            self._caller[role] = self._hosts.get(address, address)
            return
        kept = interesting(self.cluster, args)
        if kept is None:
            return
        by = self._caller.get(role) if client == "lua" else self._hosts.get(address, address)
        kept.update(at=at, server=role, client=client, by=by)
        with self._lock:
            self.records.append(kept)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[list[Any]]]:
        """Copies of (records sorted by time, blind moments)."""
        with self._lock:
            return sorted(self.records, key=lambda r: r["at"]), [list(b) for b in self.blind]


class Load:
    """Container events at `rate` per second over `namespaces`, journalled as emitted."""

    def __init__(self, emulator: Any, namespaces: Sequence[str], rate: float, journal: Journal,
                 seed: int, rest_share: float = 0.1) -> None:
        self.emulator = emulator
        self.namespaces = list(namespaces)
        self.rate = rate
        self.journal = journal
        self.rest_share = rest_share
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Load:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        index = 0
        while not self._stop.is_set():
            namespace = self.namespaces[index % len(self.namespaces)]
            index += 1
            state = "Stopped" if self._random.random() < self.rest_share else "Running"
            at = time.time()
            event = self.emulator.emit_event(type="container", state=state, namespace=namespace)
            self.journal.emit(at, namespace, event)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind (a paused test process): no burst
