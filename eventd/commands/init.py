"""`eventd init DIR`: write the sample rules and their tests into a directory, to start from.

After `pip install` there is no rules/ to check or run: `init` writes out the sample rules the
package ships (and the demo runs), with their tests, so that `eventd check DIR`, `eventd test
DIR/tests` and `eventd run --rules DIR` work at once. It never overwrites a file: one that
exists already is exit 2, before anything is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TextIO

from eventd.commands.samples import rules_path

EXIT_OK, EXIT_USAGE = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `init` subcommand's arguments."""
    parser.add_argument("directory", type=Path, metavar="DIR",
                        help="where to write them (created if missing; existing files are "
                             "never overwritten)")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Write the sample rules and tests into `args.directory`; 0, or 2 (one line) if it cannot."""
    out = out or sys.stdout
    target: Path = args.directory
    try:
        source = rules_path()
    except FileNotFoundError as exc:
        print(f"eventd init: {exc}", file=sys.stderr)
        return EXIT_USAGE
    files = sorted(path.relative_to(source) for path in source.rglob("*")
                   if path.is_file() and path.suffix in (".yaml", ".yml"))
    if target.exists() and not target.is_dir():
        print(f"eventd init: {target} is a file, not a directory", file=sys.stderr)
        return EXIT_USAGE
    taken = [name for name in files if (target / name).exists()]
    if taken:
        print(f"eventd init: {target / taken[0]} exists ({len(taken)} of the {len(files)} files "
              "do); nothing written: init never overwrites, give a new or empty directory",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        for name in files:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
    except OSError as exc:
        print(f"eventd init: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    tests = [name for name in files if name.parts[0] == "tests"]
    docker = [name for name in files if name.parts[0] == "docker"]
    print(f"wrote {len(files) - len(tests)} rule files and {len(tests)} rule test files to "
          f"{target}/", file=out)
    lines = [
        ("eventd check " + str(target), "validate the rules (no credentials needed)"),
        ("eventd test " + str(target / "tests"), "run their tests: events in, actions out"),
        ("eventd run --rules " + str(target), "run them against Docker Cloud or `eventd emulate`"),
    ]
    if docker:
        lines.append((f"eventd run --source docker --rules {target / 'docker'}",
                      "the Docker Engine's rules, on the local Engine's events"))
    width = max(len(command) for command, _ in lines)
    print("next:", file=out)
    for command, what in lines:
        print(f"  {command:<{width}}  {what}", file=out)
    return EXIT_OK
