"""`eventd deadletter list|retry|purge`: look at, re-queue or delete actions that gave up.

`retry` moves dead letters back to the spool: a daemon delivers them on its next start, or
this command does it at once with `--now` (do not use `--now` while a daemon runs on the
same state directory: both would deliver the spool).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from eventd.actions import resolve
from eventd.actions.base import ActionContext
from eventd.stores.sqlite import SqliteStore

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
    parser.add_argument("--now", action="store_true",
                        help="retry: deliver now and exit when done, instead of at the next start")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="retry --now: give up waiting after this long (default 600)")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run `deadletter <command>`; 0 on success, 1 if something failed, 2 on bad usage."""
    out = out or sys.stdout
    state_dir = args.state_dir or Path(os.environ.get("EVENTD_STATE_DIR") or "state")
    if not (state_dir / "eventd.sqlite3").exists():
        print(f"no eventd state in {state_dir}", file=out)
        return EXIT_OK if args.command == "list" else EXIT_FAILED
    store = SqliteStore(state_dir)
    try:
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
        print(f"moved {len(moved)} dead letter(s) back to the spool", file=out)
        if not args.now:
            if moved:
                print("they are delivered when the daemon next starts (or use --now)", file=out)
            return EXIT_OK
        return _deliver_now(store, state_dir, args.timeout, out)
    finally:
        store.close()


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


def _deliver_now(store: SqliteStore, state_dir: Path, timeout: float, out: IO[str]) -> int:
    """Deliver the whole spool with a Dispatcher and exit when it is done."""
    from eventd.delivery.dispatcher import Dispatcher
    from eventd.errors import CredentialsMissing
    from eventd.ops.metrics import Metrics
    from eventd.settings import Settings
    from eventd.sources.dockercloud.auth import load_credentials
    from eventd.sources.dockercloud.rest import RestClient

    if not logging.getLogger().handlers:
        from eventd.ops.logconfig import configure

        configure("text", "INFO")
    settings = Settings.from_env(os.environ, state_dir=state_dir)
    pending = store.spool_pending()
    credentials = None
    if any(job.kind == "dockercloud" for job in pending):
        try:
            credentials = load_credentials(os.environ)
        except CredentialsMissing as exc:
            log.warning("%s: dockercloud actions will fail", exc)
    rest = RestClient(settings.rest_host, credentials) if credentials is not None else None
    metrics = Metrics()
    context = ActionContext(settings=settings, metrics=metrics, credentials=credentials,
                            rest=rest, state_dir=state_dir, stopping=threading.Event())
    kinds = {name: resolve(name)(context) for name in sorted({job.kind for job in pending})}
    dead_before = len(store.deadletter_list())
    dispatcher = Dispatcher(context, store, kinds)
    dispatcher.start()
    try:
        finished = dispatcher.wait_idle(timeout)
    finally:
        left = dispatcher.close(5.0)
        for kind in kinds.values():
            kind.close()
        if rest is not None:
            rest.close()
    dead = len(store.deadletter_list()) - dead_before
    delivered = len(pending) - dead - left
    print(f"delivered {delivered}, dead-lettered again {dead}, left in the spool {left}", file=out)
    return EXIT_OK if finished and not dead and not left else EXIT_FAILED
