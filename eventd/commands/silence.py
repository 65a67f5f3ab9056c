"""`eventd silence add|list|expire`: mute matching actions for a while, beside a running eventd.

Silences live in the store (`--state-dir`'s SQLite, or the cluster's Redis), so this works
beside a running daemon, which reads them within a second. Exit codes: 0 done, 2 bad input
(a matcher, a time, an unknown id) or a store that cannot be opened.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import getpass
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from eventd.errors import ConfigError, StoreError
from eventd.settings import Settings, parse_duration
from eventd.silences.book import SilenceBook
from eventd.silences.model import BadSilence, Silence, new_silence
from eventd.stores import open_store

EXIT_OK, EXIT_USAGE = 0, 2

EPILOG = """matchers (all must hold; a regex matches the whole value, RE2 syntax as Alertmanager's):
  rule=NAME  kind=webhook  type=container  state!=Running  namespace=~acme|globex
  label.severity=page          an alert label an alertmanager action sends
  attributes."com.docker.compose.service"=web    any event field, as rules name it

examples:
  eventd silence add rule=container-crash --duration 2h --comment "deploy of web"
  eventd silence list
  eventd silence expire 3f2a9c0d51b4e6a7"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `silence` subcommand's arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("command", choices=("add", "list", "expire"),
                        help="add a silence, list them, or end some now")
    parser.add_argument("items", nargs="*", metavar="MATCHER|ID",
                        help="add: matchers (name=value, name!=value, name=~regex, name!~regex); "
                             "expire: silence ids")
    parser.add_argument("--duration", metavar="DURATION", default=None,
                        help="add: how long from the start (e.g. 30m, 2h; default 1h)")
    parser.add_argument("--start", metavar="TIME", default=None,
                        help="add: when it starts, RFC 3339 (default now)")
    parser.add_argument("--end", metavar="TIME", default=None,
                        help="add: when it ends, RFC 3339 (instead of --duration)")
    parser.add_argument("--comment", metavar="TEXT", default=None,
                        help="add: why (required, as Alertmanager asks)")
    parser.add_argument("--author", metavar="NAME", default=None,
                        help="add: who (default USER@HOST)")
    parser.add_argument("--all", action="store_true",
                        help="list: ended silences too (kept 7 days)")
    parser.add_argument("--json", action="store_true", help="list: JSON instead of a table")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="state directory (default ./state, env EVENTD_STATE_DIR)")
    parser.add_argument("--store", metavar="URL",
                        help="sqlite (default), redis://..., rediss://..., redis+sentinel://... "
                             "(env EVENTD_STORE)")
    parser.add_argument("--cluster", metavar="NAME",
                        help="the shared store's key prefix (default eventd, env EVENTD_CLUSTER)")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run `silence <command>`; 0 on success, 2 on bad input or an unusable store."""
    out = out or sys.stdout
    state_dir = args.state_dir or Path(os.environ.get("EVENTD_STATE_DIR") or "state")
    try:
        settings = Settings.from_env(os.environ, state_dir=state_dir,
                                     store=getattr(args, "store", None),
                                     cluster=getattr(args, "cluster", None))
        silence = _new(args) if args.command == "add" else None
        store = open_store(settings)
    except (ConfigError, StoreError, BadSilence) as exc:
        print(f"eventd silence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        book = SilenceBook(store)
        if silence is not None:
            book.add(silence)
            print(f"silence {silence.id} added: {silence.describe()} until "
                  f"{_utc(silence.ends_at)}", file=out)
            return EXIT_OK
        if args.command == "expire":
            return _expire(book, args.items, out)
        book.refresh()
        now = time.time()
        shown = [s for s in book.silences() if args.all or s.state(now) != "expired"]
        if args.json:
            print(json.dumps([dict(s.to_record(), state=s.state(now)) for s in shown],
                             indent=2, sort_keys=True), file=out)
        elif not shown:
            print("no silences" if args.all else "no silences in force or pending", file=out)
        for silence in [] if args.json else shown:
            print(_line(silence, now), file=out)
        return EXIT_OK
    except StoreError as exc:
        print(f"eventd silence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


def _new(args: argparse.Namespace) -> Silence:
    if not args.items:
        raise BadSilence("give at least one matcher, e.g. rule=container-crash")
    now = time.time()
    start = _when(args.start, "--start") if args.start else now
    if args.end and args.duration:
        raise BadSilence("give --end or --duration, not both")
    try:
        end = _when(args.end, "--end") if args.end else start + parse_duration(
            args.duration or "1h", "--duration")
    except ConfigError as exc:
        raise BadSilence(str(exc)) from None
    author = args.author or f"{_user()}@{socket.gethostname()}"
    return new_silence(list(args.items), starts_at=start, ends_at=end, created_by=author,
                       comment=args.comment, now=now)


def _expire(book: SilenceBook, ids: list[str], out: IO[str]) -> int:
    if not ids:
        print("eventd silence: give the ids to expire (eventd silence list shows them)",
              file=sys.stderr)
        return EXIT_USAGE
    book.refresh()
    known = [s.id for s in book.silences()]
    chosen = []
    for prefix in ids:
        matches = [ident for ident in known if ident == prefix] or \
            [ident for ident in known if ident.startswith(prefix)]
        if len(matches) != 1:
            print(f"eventd silence: {'no' if not matches else 'more than one'} silence "
                  f"matches {prefix!r}", file=sys.stderr)
            return EXIT_USAGE
        chosen.append(matches[0])
    for ident in chosen:
        ended = book.expire(ident)
        if ended is not None:
            print(f"silence {ident} expired at {_utc(ended.ends_at)}", file=out)
    return EXIT_OK


def _when(text: str, flag: str) -> float:
    try:
        value = _dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise BadSilence(f"{flag}: {text!r} is not an RFC 3339 time "
                         "(e.g. 2026-05-01T14:00:00Z)") from None
    if value.tzinfo is None:
        raise BadSilence(f"{flag}: {text!r} needs a time zone (Z or +02:00)")
    return value.timestamp()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _line(silence: Silence, now: float) -> str:
    return (f"{silence.id}  {silence.state(now):<8} {_utc(silence.starts_at)} -> "
            f"{_utc(silence.ends_at)}  by {silence.created_by}  {silence.describe()}  "
            f"# {silence.comment}")
