"""`eventd demo` tells its story to the end, and what a newcomer reads holds no secret."""

from __future__ import annotations

import argparse
import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eventd.commands import demo

APIKEY = "demo-test-apikey-5f1c0ffee"


def summary_number(text: str, label: str) -> int:
    match = re.search(rf"^\s+{re.escape(label)}\s+(\d+)", text, re.MULTILINE)
    assert match, f"no {label!r} line in the summary:\n{text}"
    return int(match.group(1))


def test_the_demo_runs_to_the_end_and_shows_the_story(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    code = demo.run(argparse.Namespace(follow=False, speed=5.0), out=out, apikey=APIKEY)
    text = out.getvalue()
    assert code == 0, text
    # The crash: one event, one alert about it, one redeploy over REST (202).
    assert re.search(r"event\s+container web-1 Stopped \(exit 137\)", text), text
    assert re.search(r"match\s+rule container-crashed", text)
    assert re.search(r'alert\s+received: "container web-1 crashed: exit code 137"', text)
    assert re.search(r"rest\s+POST /api/app/v1/demo/service/\S+/redeploy/ -> 202", text)
    # The fault: the stream drops and eventd comes back by itself.
    assert re.search(r"stream\s+connection lost", text)
    assert re.search(r"stream\s+reconnected after \d+\.\d s", text)
    # The summary.
    assert summary_number(text, "alerts received") >= 1
    assert "(about the crash: 1)" in text  # alerted once, not once per event
    assert re.search(r"REST calls made by eventd\s+\d+\s+\(redeploys: 1\)", text)
    assert summary_number(text, "stream reconnects") >= 1
    audit = Path(re.search(r"audit file\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    assert audit.is_file() and audit.stat().st_size > 0
    # No credential in what the user sees, and no stray log output on stderr.
    token = base64.b64encode(f"{demo.USER}:{APIKEY}".encode()).decode()
    captured = capsys.readouterr()
    for shown in (text, captured.out, captured.err):
        assert APIKEY not in shown
        assert token not in shown
        assert "Basic " not in shown
    assert captured.err == ""


def test_demo_is_a_subcommand_of_eventd() -> None:
    done = subprocess.run([sys.executable, "-m", "eventd", "demo", "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "--follow" in done.stdout and "--speed" in done.stdout


def test_the_packaged_scenario_and_sample_rules_are_found() -> None:
    assert demo.scenario_path().is_file()
    assert any(demo.rules_path().glob("*.yaml"))
