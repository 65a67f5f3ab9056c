"""`eventd status`: the cluster on a shared store: replicas, the namespaces each holds, spool depth
and dead letters, and who consumes which stream.

Exit 2, in one line, when there is nothing to show: no cluster store given, the store cannot
be reached (in the words every command uses), or no cluster of that name in it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from typing import IO, Any

from eventd.errors import ConfigError, StoreError

EXIT_OK, EXIT_USAGE = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `status` subcommand's arguments."""
    parser.add_argument("--store", metavar="URL", default=None,
                        help="the cluster's store, redis://... (env EVENTD_STORE)")
    parser.add_argument("--cluster", metavar="NAME", default=None,
                        help="the cluster's name (default eventd, env EVENTD_CLUSTER)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Print the cluster; 0, or 2 without a cluster store, an unreachable one or no such
    cluster."""
    from eventd.clients.dockercloud.namespaces import label
    from eventd.cluster.connection import connect, is_cluster_store
    from eventd.settings import Settings, parse_namespaces
    from eventd.stores.redis.connect import parse, unreachable

    out = out or sys.stdout
    env = os.environ
    try:
        settings = Settings.from_env(env, store=args.store or env.get("EVENTD_STORE"),
                                     cluster=args.cluster or env.get("EVENTD_CLUSTER"),
                                     lease_ttl=4.0)
    except ConfigError as exc:
        print(f"eventd status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store, cluster = settings.store, settings.cluster
    if not is_cluster_store(store):
        print("eventd status: give the cluster's store (--store redis://host:port/db or "
              "EVENTD_STORE); a single eventd with SQLite has no cluster", file=sys.stderr)
        return EXIT_USAGE
    try:
        names = [label(n) for n in parse_namespaces(env.get("DOCKERCLOUD_NAMESPACE") or "")]
        client = connect(settings)
    except ConfigError as exc:
        print(f"eventd status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import redis

    from eventd.cluster.status import read_state

    location = parse(store, settings.store_password)
    try:
        state = read_state(client, cluster, names)
        missing = not state.replicas and not _has_keys(client, cluster)
        others = _clusters(client) if missing else []
    except redis.RedisError as exc:
        print(f"eventd status: {unreachable(location, exc) or exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()
    if missing:
        close = difflib.get_close_matches(cluster, others, n=1)
        print(f"eventd status: there is no cluster {cluster!r} on {location.safe}"
              + (f" (did you mean {close[0]!r}?)" if close else "")
              + (f"; clusters there: {', '.join(others)}" if others else "; it holds none"),
              file=sys.stderr)
        return EXIT_USAGE
    counts = _store_counts(settings)
    if args.json:
        body = state.to_json()
        body["spool"] = counts
        print(json.dumps(body, indent=2, sort_keys=True), file=out)
        return EXIT_OK
    _print(state, counts, out)
    return EXIT_OK


def _has_keys(client: Any, cluster: str) -> bool:
    """Whether anything at all is stored under the cluster's prefix."""
    return next(iter(client.scan_iter(match=f"{cluster}:*", count=1000)), None) is not None


def _clusters(client: Any) -> list[str]:
    """The clusters a Redis holds (those whose replicas said hello), sorted."""
    from eventd.cluster.keys import Keys

    suffix = Keys("").replicas  # `<cluster>:cluster:replicas`, the cluster left out
    found = set()
    for key in client.scan_iter(match=f"*{suffix}", count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        found.add(text[:-len(suffix)])
    return sorted(found)


def _store_counts(settings: Any) -> dict[str, int] | None:
    """Spool depth and dead letters of the shared store (None if it cannot be read here)."""
    from eventd.stores import open_store

    try:
        store = open_store(settings)
    except (ConfigError, StoreError):
        return None
    try:
        return {"pending": store.spool_count(), "deadletters": store.deadletter_count()}
    except StoreError:
        return None
    finally:
        store.close()


def _print(state: Any, counts: dict[str, int] | None, out: IO[str]) -> None:
    now = time.time()
    print(f"cluster {state.cluster}: {len(state.replicas)} replica(s)", file=out)
    if counts is not None:
        print(f"spool: {counts['pending']} pending, {counts['deadletters']} dead letters",
              file=out)
    else:
        print("spool: (the store could not be read)", file=out)
    print("", file=out)
    print(f"{'REPLICA':<32} {'READY':<6} {'PID':>7}  NAMESPACES", file=out)
    for replica_id, info in sorted(state.replicas.items()):
        ready = "yes" if info.get("ready") else "no"
        held = ", ".join(info.get("namespaces") or []) or "(standby)"
        print(f"{replica_id:<32} {ready:<6} {_count(info.get('pid')):>7}  {held}", file=out)
    print("", file=out)
    print(f"{'NAMESPACE':<20} {'HOLDER':<32} {'TOKEN':>5} {'LEASE':>6}  LAST EVENT", file=out)
    for stream in state.streams:
        holder = stream.holder or "(free)"
        token = str(stream.token) if stream.token is not None else "-"
        lease = f"{stream.ttl_left:.1f}s" if stream.ttl_left is not None else "-"
        last = f"{now - stream.last_event:.1f}s ago" if stream.last_event else "-"
        print(f"{stream.namespace:<20} {holder:<32} {token:>5} {lease:>6}  {last}", file=out)


def _count(value: object) -> str:
    return str(value) if isinstance(value, int) and value >= 0 else "?"
