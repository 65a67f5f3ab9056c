"""`eventd check` and `eventd schema`: validate rule files, print their JSON Schema.

`check` prints one `FILE:LINE:COL: ...` line per problem (warnings say `warning:`), then a
summary: what it read when all is well, how many problems otherwise. Exit 1 on an error, or on
a warning with `--strict`; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import IO

EXIT_OK = 0
EXIT_PROBLEMS = 1


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
    from eventd.pipeline import rule_vocabulary
    from eventd.ruleset.loader import check

    out = out or sys.stdout
    err = err or sys.stderr
    source = getattr(args, "source", None) or environ.get("EVENTD_SOURCE", "").strip() or "dockercloud"
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


def schema(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """`eventd schema`: the JSON Schema that editors can validate rule files with."""
    from eventd.ruleset.loader import schema as rules_schema

    print(json.dumps(rules_schema(), indent=2), file=out or sys.stdout)
    return EXIT_OK
