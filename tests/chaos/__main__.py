"""`make chaos`: a seeded random schedule of faults on a loaded cluster, then the checker.

    python -m tests.chaos --minutes 10 --seed 7        # 100 ev/s, 4 namespaces, 3 replicas

Prints the schedule, a verdict per property with the worst case, and figures per fault kind;
keeps the whole history (and every log) in a directory it names, whatever the verdict, so a
run can be checked again (`python -m tests.chaos.checker DIR`). Exit status 0 when every
property held, 1 when one did not, 2 when the test network cannot be made here.
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.checker import check
from tests.chaos.nemesis import Nemesis, random_schedule
from tests.chaos.netns import Unavailable, probe
from tests.chaos.run import ChaosCluster, Settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--namespaces", default="acme,globex,initech,umbrella")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second in all")
    parser.add_argument("--ttl", type=float, default=3.0, help="the lease TTL, seconds")
    parser.add_argument("--no-sentinel", action="store_true",
                        help="one Redis server (no failovers) instead of primary+replica+Sentinel")
    parser.add_argument("--redis-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a redis-server setting for both servers, e.g. "
                             "min-replicas-to-write=1 (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("eventd", "websockets", "eventd.emulator.stream_server.protocol"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        probe()
    except Unavailable as exc:
        print(f"chaos: network namespaces unavailable: {exc}", file=sys.stderr)
        return 2
    redis_options = tuple(part for option in args.redis_option
                          for part in (f"--{option.partition('=')[0]}", option.partition("=")[2]))
    settings = Settings(replicas=args.replicas, namespaces=tuple(args.namespaces.split(",")),
                        rate=args.rate, ttl=args.ttl, sentinel=not args.no_sentinel, seed=seed,
                        redis_options=redis_options)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"eventd-chaos-{seed}-"))
    duration = args.minutes * 60
    print(f"chaos: seed {seed}, {duration:.0f} s, {settings.rate:g} ev/s over "
          f"{len(settings.namespaces)} namespaces, {settings.replicas} replicas, lease TTL "
          f"{settings.ttl:g} s, {'Sentinel' if settings.sentinel else 'one Redis'}; "
          f"work in {workdir}", flush=True)
    with ChaosCluster(settings, workdir) as cluster:
        steps = random_schedule(seed, duration, settings.ttl, cluster.roles, settings.sentinel)
        kinds = collections.Counter(step.kind for step in steps)
        print(f"chaos: {len(steps)} faults: " + ", ".join(f"{k} {n}" for k, n in
                                                          sorted(kinds.items())), flush=True)
        start = time.time()
        cluster.load.start()
        nemesis = Nemesis(cluster)
        try:
            nemesis.run(steps)
        finally:
            cluster.settle(nemesis, drain=60)
        history = cluster.collect()
        window = history.window(start, history.meta["ended"])
        report = check(window)
        kept = cluster.keep(window, f"seed-{seed}")
    print(report.format(limit=12))
    print(f"chaos: {'every property held' if report.ok else 'FAILED: ' + ', '.join(report.failed())}"
          f"; history in {kept} (python -m tests.chaos.checker {kept})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
