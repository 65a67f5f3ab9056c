"""`eventd audit verify PATH|DSN`: walk an audit trail's hash chain and name its first break.

A file trail is `PATH.N` ... `PATH.1`, `PATH` (rotation's names), one chain across them; a
table trail is `--table` (eventd_audit) in the DSN's database, in `seq` order. With
`--state-dir`, the head eventd saved must be in the trail unchanged (this catches a change to
the last records, which no later record points at). Exit 0: the trail is whole (its length
and last hash are printed); 1: the first record changed, removed or inserted is named; 2: the
trail cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from eventd.errors import ActionError, ConfigError

if TYPE_CHECKING:
    from eventd.actions.chain import Walk

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`audit verify PATH|DSN [--table T] [--state-dir DIR] [--password-file F]`."""
    parser.add_argument("audit_command", choices=("verify",), metavar="verify",
                        help="walk the trail's hash chain")
    parser.add_argument("trail", metavar="PATH|DSN",
                        help="an audit file (its rotated files are read too), or a "
                             "postgresql://... DSN")
    parser.add_argument("--table", default="eventd_audit", metavar="NAME",
                        help="with a DSN: the trail's table (default eventd_audit)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", default=None,
                        help="also check the head eventd saved there (its audit-chain.json)")
    parser.add_argument("--password-file", metavar="FILE", default=None,
                        help="with a DSN: read the password from this file")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Walk the trail; print what was found."""
    from eventd.actions import chain

    out = out or sys.stdout
    saved = None
    if args.state_dir is not None:
        if not args.state_dir.is_dir():
            print(f"eventd audit verify: --state-dir {args.state_dir} is not a directory",
                  file=sys.stderr)
            return EXIT_USAGE
        heads = chain.Heads(args.state_dir)
    if "://" in args.trail:
        try:
            walk, name = _walk_table(args, lambda trail: heads.head(trail)
                                     if args.state_dir is not None else None)
        except ConfigError as exc:
            print(f"eventd audit verify: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ActionError as exc:
            print(f"eventd audit verify: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        path = Path(args.trail)
        files = chain.trail_files(path)
        if not files:
            print(f"eventd audit verify: {path}: no such file", file=sys.stderr)
            return EXIT_USAGE
        if args.state_dir is not None:
            saved = heads.head(str(path)) or heads.head(str(path.absolute()))
        try:
            walk = chain.walk_lines(chain.file_lines(files), saved)
        except OSError as exc:
            print(f"eventd audit verify: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        name = f"{path} ({len(files)} file{'s' if len(files) > 1 else ''})"
    for note in walk.notes or []:
        print(f"note: {note}", file=out)
    if walk.finding is not None:
        print(f"{walk.finding.where}: {walk.finding.what}", file=out)
        print(f"{name}: NOT whole: the chain breaks at {walk.finding.where}", file=out)
        return EXIT_BROKEN
    begins = "" if walk.first_prev in (None, chain.GENESIS) else \
        f"; it begins at seq {walk.first_seq} (older records were rotated away)"
    legacy = f"; {walk.unchained} line(s) before the chain began" if walk.unchained else ""
    torn = f"; {walk.torn} torn line(s) marked" if walk.torn else ""
    print(f"{name}: whole: {walk.records} records, last seq {walk.head.seq}, last hash "
          f"{walk.head.hash}{begins}{legacy}{torn}", file=out)
    return EXIT_OK


def _walk_table(args: argparse.Namespace, saved_for: Any) -> tuple[Walk, str]:
    from eventd.actions.audit_table import walk_table

    return walk_table(args.trail, args.table, args.password_file, saved_for)
