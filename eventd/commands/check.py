"""`eventd check` and `eventd schema`: validate rule files, print their JSON Schema.

`check` prints one `FILE:LINE:COL: ...` line per problem (warnings say `warning:`), then a
summary: what it read when all is well, how many problems otherwise. Exit 1 on an error, or on
a warning with `--strict`; 0 otherwise; 2, before reading anything, when a path does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `eventd check`."""
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 1) on warnings too: fields, types or states "
                             "the source's reference does not list")
    parser.add_argument("--source", default=None, metavar="NAME",
                        help="the source whose events the rules are for: dockercloud (default) "
                             "or docker (env EVENTD_SOURCE)")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def run(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str] | None = None,
        err: IO[str] | None = None) -> int:
    """`eventd check PATH ...`: one line per problem, exit 1 if any error (or warning, strict)."""
    from eventd.errors import ConfigError
    from eventd.pipeline import INCIDENT_SECRETS, rule_vocabulary
    from eventd.ruleset.loader import check
    from eventd.settings import read_secret_files

    out = out or sys.stdout
    err = err or sys.stderr
    missing = [path for path in args.paths if not Path(path).exists()]
    for path in missing:
        hint = "" if Path(path).suffix in (".yaml", ".yml") else (
            f" (`eventd init {path}` writes the sample rules and their tests there)")
        print(f"eventd check: {path}: no such file or directory{hint}", file=err)
    unreadable = [(path, why) for path in args.paths if path not in missing
                  for why in [_unreadable(Path(path))] if why]
    for path, why in unreadable:
        print(f"eventd check: {path}: cannot read: {why}", file=err)
    if missing or unreadable:
        return EXIT_USAGE
    source = getattr(args, "source", None) or environ.get("EVENTD_SOURCE", "").strip() or "dockercloud"
    try:  # the incident kinds' secrets may come from <VAR>_FILE, as `eventd run` reads them
        environ = read_secret_files(environ, INCIDENT_SECRETS)
    except ConfigError as exc:
        print(f"eventd check: {exc}", file=err)
        return EXIT_USAGE
    result = check(args.paths, environ, rule_vocabulary(source))
    for problem in result.problems:
        print(problem, file=out)
    errors, warnings = len(result.errors), len(result.warnings)
    read = f"{_plural(result.rules, 'rule')} in {_plural(result.files, 'file')}"
    if errors or (warnings and args.strict):
        found = [_plural(errors, "error")] if errors else []
        found += [_plural(warnings, "warning")] if warnings else []
        print(f"{read}: {', '.join(found)}" + (" (--strict)" if not errors else ""), file=err)
        return EXIT_PROBLEMS
    print(f"{read}: ok" + (f", {_plural(warnings, 'warning')}" if warnings else ""), file=out)
    return EXIT_OK


def _unreadable(path: Path) -> str:
    """Why a path named on the command line cannot be read ("" if it can): one line, exit 2."""
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with path.open("rb"):
                pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""


def schema(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """`eventd schema`: the JSON Schema that editors can validate rule files with."""
    from eventd.ruleset.loader import schema as rules_schema

    print(json.dumps(rules_schema(), indent=2), file=out or sys.stdout)
    return EXIT_OK
