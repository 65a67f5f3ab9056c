"""`eventd deadletter list|retry|purge`: look at, re-queue or delete actions that gave up.

`retry` moves dead letters back to the spool: a daemon delivers them on its next start, or
this command does it at once with `--now`, which takes the state directory as a daemon does
(exit 2, naming the process, while a daemon runs on it: both would deliver the spool).
Retrying is the operator vouching for those jobs: they are signed again with the job key
(eventd.delivery.signing), so one refused for its MAC (written by hand, by an older eventd,
under another key) runs; the gate still checks it against the loaded rules and the policy.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

from eventd.errors import ConfigError, StoreError
from eventd.settings import Settings
from eventd.stores import open_store, store_exists
from eventd.stores.base import Store

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `deadletter` subcommand's arguments."""
    parser.add_argument("command", choices=("list", "retry", "purge"),
                        help="list dead letters, move them back to the spool, or delete them")
    parser.add_argument("ids", nargs="*", metavar="ID",
                        help="dead letter ids or unique prefixes (default: all)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="state directory (default ./state, env EVENTD_STATE_DIR)")
    parser.add_argument("--store", metavar="URL",
                        help="sqlite (default), redis://..., rediss://..., redis+sentinel://... "
                             "(env EVENTD_STORE)")
    parser.add_argument("--cluster", metavar="NAME",
                        help="the shared store's key prefix (default eventd, env EVENTD_CLUSTER)")
    parser.add_argument("--now", action="store_true",
                        help="retry: deliver now and exit when done, instead of at the next start")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="retry --now: give up waiting after this long (default 600)")
    parser.add_argument("--rules", nargs="+", action="extend", type=Path, metavar="PATH",
                        help="retry --now: the rules whose jobs may run (the gate refuses a job "
                             "no loaded rule can produce; default ./rules, env EVENTD_RULES)")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run `deadletter <command>`; 0 on success, 1 if something failed, 2 on bad usage."""
    out = out or sys.stdout
    state_dir = args.state_dir or Path(os.environ.get("EVENTD_STATE_DIR") or "state")
    deliver = args.command == "retry" and args.now
    rules = getattr(args, "rules", None) or [
        Path(p) for p in os.environ.get("EVENTD_RULES", "").split(os.pathsep) if p]
    try:
        settings = Settings.from_env(os.environ, state_dir=state_dir,
                                     store=getattr(args, "store", None),
                                     cluster=getattr(args, "cluster", None),
                                     rules=tuple(rules) if rules else None)
        if not store_exists(settings):
            where = state_dir if settings.store == "sqlite" else f"cluster {settings.cluster!r}"
            print(f"no eventd state in {where}", file=out)
            return EXIT_OK if args.command == "list" else EXIT_FAILED
        # Only delivering needs the state to itself; looking and purging work beside a daemon.
        store = open_store(settings, exclusive=deliver)
    except (ConfigError, StoreError) as exc:
        print(f"eventd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _command(args, store, settings, deliver, out)
    except StoreError as exc:  # e.g. the store went away since it was opened
        print(f"eventd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


def _command(args: argparse.Namespace, store: Store, settings: Settings, deliver: bool,
             out: IO[str]) -> int:
    """list, purge or retry on an open store."""
    letters = store.deadletter_list()
    ids = _resolve_ids(args.ids, [letter.job.id for letter in letters], out)
    if ids is None:
        return EXIT_USAGE
    if args.command == "list":
        for letter in letters:
            if ids == [] or letter.job.id in ids:
                print(_line(letter), file=out)
        if not letters:
            print("no dead letters", file=out)
        return EXIT_OK
    if args.command == "purge":
        count = store.deadletter_purge(ids or None)
        print(f"purged {count} dead letter(s)", file=out)
        return EXIT_OK
    moved = store.deadletter_take(ids or None)
    signed = _sign(moved, store, settings) if moved else True
    print(f"moved {len(moved)} dead letter(s) back to the spool", file=out)
    if not signed:
        print("not signed again: set EVENTD_JOB_KEY (or the Docker Cloud credentials the "
              "replicas use), else the gate refuses those without a valid MAC", file=out)
    if not deliver:
        if moved:
            print("they are delivered when the daemon next starts (or use --now)", file=out)
        return EXIT_OK
    return _deliver_now(store, settings, args.timeout, out)


def _sign(jobs: list[Any], store: Store, settings: Settings) -> bool:
    """Sign retried jobs again with the job key the daemons use (the operator vouches); False
    when that key cannot be known here (a shared store, no EVENTD_JOB_KEY, no credentials:
    a key of this machine's own would help no replica)."""
    from eventd.clients.dockercloud.auth import load_credentials
    from eventd.delivery.signing import load_signer
    from eventd.errors import CredentialsMissing
    from eventd.stores.base import CallLimits

    try:
        credentials = load_credentials(os.environ)
    except CredentialsMissing:
        credentials = None
    shared = isinstance(store, CallLimits)
    if shared and not settings.job_key and credentials is None:
        return False
    signer = load_signer(job_key=settings.job_key, store=settings.store, cluster=settings.cluster,
                         state_dir=settings.state_dir,
                         credentials_header=credentials.header if credentials else None,
                         shared=shared)
    for job in jobs:
        job.mac = signer.sign(job)
        store.spool_update(job)
    return True


def _resolve_ids(given: list[str], known: list[str], out: IO[str]) -> list[str] | None:
    """Expand unique prefixes; None (after saying why) if one is unknown or ambiguous."""
    resolved = []
    for prefix in given:
        if prefix in known:
            resolved.append(prefix)
            continue
        matches = [job_id for job_id in known if job_id.startswith(prefix)]
        if len(matches) != 1:
            print(f"{'no' if not matches else 'more than one'} dead letter matches {prefix!r}",
                  file=out)
            return None
        resolved.append(matches[0])
    return resolved


def _line(letter: Any) -> str:
    job = letter.job
    when = _dt.datetime.fromtimestamp(letter.at, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{job.id}  rule={job.rule}  kind={job.kind}  target={job.target}  " \
           f"attempts={job.attempts}  at={when}  reason={letter.reason}"


def _deliver_now(store: Store, settings: Settings, timeout: float, out: IO[str]) -> int:
    """Deliver the whole spool with the daemon's pipeline (no engine) and exit when done."""
    from eventd.clients.dockercloud.auth import load_credentials
    from eventd.errors import CredentialsMissing
    from eventd.ops.metrics import Metrics
    from eventd.pipeline import build_pipeline

    if not logging.getLogger().handlers:
        from eventd.ops.logconfig import configure

        configure("text", "INFO")
    pending = store.spool_count()
    needed = {job.kind for job in store.spool_iter()}  # paged: a deep spool costs no memory
    credentials = None
    if "dockercloud" in needed:
        try:
            credentials = load_credentials(os.environ)
        except CredentialsMissing as exc:
            log.warning("%s: dockercloud actions will fail", exc)
    metrics = Metrics()
    pipeline = build_pipeline(settings, metrics=metrics, credentials=credentials,
                              environ=os.environ, store=store, kinds=sorted(needed))
    finished = False
    try:
        pipeline.use_rules(_load_rules(settings))
        pipeline.start()
        finished = pipeline.dispatcher.wait_idle(timeout)
    finally:
        left = pipeline.close(5.0)
    dead = int(metrics.registry.get_sample_value("eventd_deadletter_total") or 0)
    delivered = pending - dead - left
    print(f"delivered {delivered}, dead-lettered again {dead}, left in the spool {left}", file=out)
    return EXIT_OK if finished and not dead and not left else EXIT_FAILED


def _load_rules(settings: Settings) -> Any:
    """The rules the gate checks retried jobs against; an unusable rule set is no rule at all
    (every job then stays a dead letter, saying why)."""
    from eventd.errors import RuleError
    from eventd.pipeline import rule_vocabulary, rules_environ
    from eventd.ruleset.index import RuleSet
    from eventd.ruleset.loader import load_rules

    try:
        return load_rules(settings.rules, rules_environ(settings, os.environ),
                          rule_vocabulary(settings.source))
    except (RuleError, OSError) as exc:
        log.error("rules in %s not loaded (%s): no job can pass the gate",
                  ", ".join(str(p) for p in settings.rules), str(exc).splitlines()[0])
        return RuleSet(())
