"""What happened in a run, as the servers saw it: the input of the checker, saved as a directory.

Every time is POSIX seconds of the one machine (the emulator's and the receiver's monotonic
times are converted when the history is collected). Hosts are the topology's roles: a
request's peer address names the replica that sent it. The `Journal` is the part written
while the run goes (processes started and ended, faults, events emitted); the rest is read
from the servers at the end (`collect` in `run`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILES = ("meta", "connections", "handshakes", "rest_calls", "requests", "emitted", "redis",
         "processes", "faults", "store", "primaries", "links")


@dataclass
class History:
    """Plain records (JSON-ready dicts), one list per source."""

    #: seed, lease TTL, namespaces, cluster, replica hosts by address, start and end
    meta: dict[str, Any] = field(default_factory=dict)
    #: the emulator's stream connections: ns, host, opened, closed, last_pong, ended, token
    connections: list[dict[str, Any]] = field(default_factory=list)
    #: stream handshakes refused (status != 101): host, status, token, at
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    #: the emulator's REST calls: method, path, query, status, host, at, token
    rest_calls: list[dict[str, Any]] = field(default_factory=list)
    #: the webhook receiver's requests: path, key, ns, uuid, gap, status, host, at, token
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: events the load emitted: at, ns, uuid, uri, state
    emitted: list[dict[str, Any]] = field(default_factory=list)
    #: the cluster's commands as Redis ran them (MONITOR): at, server, op, key, args
    redis: list[dict[str, Any]] = field(default_factory=list)
    #: eventd processes: host, pid, started, ended, how (exit, kill, stop)
    processes: list[dict[str, Any]] = field(default_factory=list)
    #: faults: kind, target, start, end, detail
    faults: list[dict[str, Any]] = field(default_factory=list)
    #: the store after the run: spool (ids left), dead ({id: reason}), blind (MONITOR gaps)
    store: dict[str, Any] = field(default_factory=dict)
    #: the server Sentinel named primary from `at` on (its log: +promoted-slave, +switch-master);
    #: empty without Sentinel (one server: every write is on the primary)
    primaries: list[dict[str, Any]] = field(default_factory=list)
    #: each time a Redis server was a replica holding a primary's data (their logs):
    #: replica, primary, synced, lost (None: still linked)
    links: list[dict[str, Any]] = field(default_factory=list)

    def save(self, directory: Path) -> Path:
        """Write one JSON file per source into `directory` (made if missing)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, value in asdict(self).items():
            (directory / f"{name}.json").write_text(json.dumps(value, indent=1, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> History:
        """Read a saved history back (to check it again: `python -m tests.chaos.checker DIR`)."""
        values = {name: json.loads((directory / f"{name}.json").read_text())
                  for name in FILES if (directory / f"{name}.json").exists()}
        return cls(**values)

    def window(self, start: float, end: float) -> History:
        """The part of the history that concerns [start, end]: what began in it, and the
        connections, processes and faults that overlap it."""
        def inside(at: float | None) -> bool:
            return at is not None and start <= at <= end

        def overlaps(begin: float, finish: float | None) -> bool:
            return begin <= end and (finish is None or finish >= start)

        return History(
            meta={**self.meta, "window": [start, end]},
            connections=[c for c in self.connections if overlaps(c["opened"], c["closed"])],
            handshakes=[h for h in self.handshakes if inside(h["at"])],
            rest_calls=[c for c in self.rest_calls if inside(c["at"])],
            requests=[r for r in self.requests if inside(r["at"])],
            emitted=[e for e in self.emitted if inside(e["at"])],
            redis=[r for r in self.redis if r["at"] <= end],  # the lease timeline needs the past
            processes=[p for p in self.processes if overlaps(p["started"], p["ended"])],
            faults=[f for f in self.faults if overlaps(f["start"], f["end"])],
            store={**self.store, "blind": [b for b in self.store.get("blind", [])
                                           if overlaps(b[1], b[2])]},
            primaries=list(self.primaries),
            links=[link for link in self.links if link["synced"] <= end])


class Journal:
    """The part of the history written during the run, from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.processes: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.emitted: list[dict[str, Any]] = []

    def started(self, host: str, pid: int) -> None:
        """An eventd process started on `host`."""
        with self._lock:
            self.processes.append({"host": host, "pid": pid, "started": time.time(),
                                   "ended": None, "how": None})

    def ended(self, pid: int, how: str) -> None:
        """That process ended (`exit`, `kill`)."""
        with self._lock:
            for record in self.processes:
                if record["pid"] == pid and record["ended"] is None:
                    record["ended"], record["how"] = time.time(), how

    def fault(self, kind: str, target: str, detail: str = "") -> dict[str, Any]:
        """A fault begins now; the record's `end` is set by `healed`."""
        record = {"kind": kind, "target": target, "start": time.time(), "end": None,
                  "detail": detail}
        with self._lock:
            self.faults.append(record)
        return record

    def healed(self, record: dict[str, Any]) -> None:
        """That fault ends now."""
        with self._lock:
            record["end"] = time.time()

    def emit(self, at: float, namespace: str, event: dict[str, Any]) -> None:
        """The load emitted `event` on `namespace`'s stream at `at`."""
        record = {"at": at, "ns": namespace, "uuid": event["uuid"],
                  "uri": event["resource_uri"], "state": event["state"]}
        with self._lock:
            self.emitted.append(record)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Copies of (processes, faults, emitted)."""
        with self._lock:
            return ([dict(p) for p in self.processes], [dict(f) for f in self.faults],
                    list(self.emitted))
