"""`eventd run` loads only what its rules need: no HTTP stack, no jsonschema, no other subcommand.

Each of these cost several MiB of a daemon whose target is 40 MiB (bench/memprobe.py measures
it). The check runs in a fresh interpreter what `eventd run` does before its first event:
parse the command line, import the daemon, instantiate every action kind, load valid rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STARTUP = """
import json, os, sys
from eventd.cli import build_parser
build_parser().parse_args(["run", "--rules", "rules/"])
import eventd.daemon
from eventd.actions import ACTIONS, resolve
from eventd.ruleset.loader import load_rules
kinds = [resolve(name) for name in ACTIONS]
rules = load_rules([sys.argv[1]], os.environ)
heavy = ("requests", "urllib3", "jsonschema", "asyncio", "websockets", "eventd.emulator.core")
other_commands = ("eventd.commands.", "eventd.emulator.")  # imported when their subcommand runs
print(json.dumps(sorted(name for name in sys.modules
                        if name in heavy or name.startswith(other_commands))))
"""


def loaded_at_startup(rules: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", STARTUP, str(rules)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_run_with_valid_rules_loads_no_http_stack_jsonschema_or_other_subcommand() -> None:
    assert loaded_at_startup(ROOT / "rules") == []


def test_invalid_rules_still_get_jsonschemas_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: r\n    match: {}\n    actions: [{log: {mesage: x}}]\n")
    out = subprocess.run([sys.executable, "-m", "eventd", "check", str(bad)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1
    assert "unknown key 'mesage' (did you mean 'message'?)" in out.stdout + out.stderr
