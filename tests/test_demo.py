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
    assert summary_number(text, "audit file") > 0
    # The demo's temporary directory (state, log, audit file) is gone (issue 21.5).
    workdir = Path(re.search(r"state in (\S+)/state,", text).group(1))  # type: ignore[union-attr]
    assert workdir.name.startswith("eventd-demo-") and not workdir.exists()
    assert "removed with the demo's temporary directory (`eventd demo --keep` keeps it)" in text
    # No credential in what the user sees, and no stray log output on stderr.
    token = base64.b64encode(f"{demo.USER}:{APIKEY}".encode()).decode()
    captured = capsys.readouterr()
    for shown in (text, captured.out, captured.err):
        assert APIKEY not in shown
        assert token not in shown
        assert "Basic " not in shown
    assert captured.err == ""


def test_the_narration_does_not_read_log_text() -> None:
    """Reword every eventd log line: the story is told the same (it comes from hooks)."""
    import logging

    factory = logging.getLogRecordFactory()

    def reworded(*args, **kwargs):
        record = factory(*args, **kwargs)
        if record.name.startswith("eventd"):
            record.msg, record.args = "reworded", ()
        return record

    logging.setLogRecordFactory(reworded)
    try:
        out = io.StringIO()
        code = demo.run(argparse.Namespace(follow=False, speed=5.0), out=out, apikey=APIKEY)
    finally:
        logging.setLogRecordFactory(factory)
    text = out.getvalue()
    assert code == 0, text
    assert re.search(r"stream\s+connection lost \(\w+\); eventd reconnects in", text), text
    assert re.search(r"stream\s+reconnected after \d+\.\d s", text)
    assert re.search(r"action\s+webhook for rule container-crashed -> alert receiver: .*200", text)
    assert re.search(r"action\s+dockercloud for rule redeploy-stopped: .*202", text)
    assert re.search(r"log\s+container \S+ stopped with exit code 137", text)
    assert "reworded" not in text


def test_demo_is_a_subcommand_of_eventd() -> None:
    done = subprocess.run([sys.executable, "-m", "eventd", "demo", "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "--follow" in done.stdout and "--speed" in done.stdout


def test_the_packaged_scenario_and_sample_rules_are_found() -> None:
    assert demo.scenario_path().is_file()
    assert any(demo.rules_path().glob("*.yaml"))


ROOT = Path(__file__).resolve().parents[1]


def test_a_built_wheel_runs_the_demo_from_an_empty_directory(tmp_path: Path) -> None:
    """As users install: build a wheel, install it into a fresh venv, `eventd demo` elsewhere.

    Built from a copy of the tree whose rules/ has subfolders (rules/docker/, rules/tests/) that
    are not rule files for this source: they ship along and break nothing.
    """
    import shutil
    import sysconfig
    import venv

    source = tmp_path / "src"
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name if source.exists() else _mkdir(source) / name)
    shutil.copytree(ROOT / "eventd", source / "eventd",
                    ignore=shutil.ignore_patterns("__pycache__", "sample_rules"))
    shutil.copytree(ROOT / "rules", source / "rules")
    for sub, text in (("docker", "rules: not for this source\n"), ("tests", "cases: []\n")):
        _mkdir(source / "rules" / sub).joinpath("x.yaml").write_text(text)

    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                            str(wheels), str(source)],
                           capture_output=True, text=True, timeout=180, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "absent from the `packages`" not in built.stdout + built.stderr  # installs are quiet
    wheel = next(wheels.glob("eventd-*.whl"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies come from the suite's own venv (fast, offline); eventd from the wheel only.
    Path(site, "suite-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "--no-deps", "--no-index", "--quiet", str(wheel)],
                               capture_output=True, text=True, timeout=120, check=False)
    assert installed.returncode == 0, installed.stderr
    shipped = Path(site, "eventd", "sample_rules")
    assert sorted(p.name for p in shipped.glob("*.yaml")) == \
        sorted(p.name for p in (ROOT / "rules").glob("*.yaml"))
    assert (shipped / "docker" / "x.yaml").is_file() and (shipped / "tests" / "x.yaml").is_file()

    empty = _mkdir(tmp_path / "empty")
    demo_run = subprocess.run([str(env_dir / "bin" / "eventd"), "demo", "--speed", "5"],
                              cwd=empty, capture_output=True, text=True, timeout=120, check=False,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(empty)})
    assert demo_run.returncode == 0, demo_run.stdout[-3000:] + demo_run.stderr
    assert f"rules from {shipped}" in demo_run.stdout
    assert "alerts received" in demo_run.stdout
    assert list(empty.iterdir()) == []  # nothing written where the user stood


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
