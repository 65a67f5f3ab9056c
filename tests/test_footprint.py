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
import tempfile
from pathlib import Path
from eventd.actions.base import ActionContext
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
context = ActionContext(settings=Settings(), metrics=Metrics(), state_dir=Path(tempfile.mkdtemp()))
kinds = [resolve(name)(context) for name in ACTIONS]  # as the daemon builds them: every kind
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


HTTP = """
import json, sys
from eventd.clients import charset
from eventd.clients.http import new_session, send
session = new_session()  # as the daemon's first HTTP call: requests is imported here
import requests
try:
    send(session, "GET", "http://127.0.0.1:1/", "probe", timeout=1)  # refused: no body to read
except Exception:
    pass
first = [charset.deferred(), sorted(name for name in sys.modules if name.startswith(charset.NAME))]
body = requests.models.Response()
body._content, body.encoding = "caf\\u00e9".encode("utf-8"), None  # a body naming no charset
guessed = [body.apparent_encoding, body.text, charset.deferred()]
import charset_normalizer
print(json.dumps([first, guessed, charset_normalizer.__version__ == charset_normalizer.VERSION[0]
                  + "." + ".".join(charset_normalizer.VERSION[1:])]))
"""


def test_http_leaves_charset_detection_unloaded_until_a_body_needs_a_guess() -> None:
    out = subprocess.run([sys.executable, "-W", "error::Warning", "-c", HTTP], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, check=True)
    first, guessed, same_version = json.loads(out.stdout.strip().splitlines()[-1])
    # requests is in use, charset_normalizer is only its stand-in (and its version module)
    assert first == [True, ["charset_normalizer", "charset_normalizer.version"]]
    # the first body that asks for a guess loads the real package into the same module
    assert guessed == ["utf-8", "caf\u00e9", False]
    assert same_version


def test_the_docker_clients_import_leaves_charset_detection_unloaded() -> None:
    code = ("import json, sys\nimport eventd.clients.docker\nfrom eventd.clients import charset\n"
            "print(json.dumps(['requests' in sys.modules, charset.deferred()]))")
    out = subprocess.run([sys.executable, "-W", "error::Warning", "-c", code],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True]


METADATA = """
import json, sys
from eventd.clients import metadata
from eventd.clients.http import new_session
new_session()  # as the daemon's first HTTP call: requests and urllib3 are imported here
first = [metadata.deferred(), "urllib3.http2" in sys.modules]
from urllib3.http2 import version  # what urllib3 took from the stand-in
import importlib.metadata
same = version("urllib3") == importlib.metadata.version("urllib3")
print(json.dumps([first, same, metadata.deferred(),
                  importlib.metadata.distribution("requests").metadata["Name"]]))
"""


def test_http_leaves_importlib_metadata_unloaded_until_something_asks() -> None:
    out = subprocess.run([sys.executable, "-W", "error::Warning", "-c", METADATA],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    first, same, still_deferred, name = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == [True, True]  # urllib3 is loaded, importlib.metadata is only its stand-in
    assert same and not still_deferred  # the first call ran the real module, which answers
    assert name == "requests"
