"""`eventd init DIR`: the sample rules and their tests written out, ready to check, test and run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def eventd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventd", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={"PATH": os.environ.get("PATH", "")})


def test_init_writes_the_samples_and_what_it_wrote_checks_and_tests(tmp_path: Path) -> None:
    done = eventd("init", "rules", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shipped = sorted(p.relative_to(ROOT / "rules") for p in (ROOT / "rules").rglob("*.yaml"))
    written = sorted(p.relative_to(tmp_path / "rules") for p in (tmp_path / "rules").rglob("*"))
    assert [p for p in written if (tmp_path / "rules" / p).is_file()] == shipped
    assert all((tmp_path / "rules" / p).read_bytes() == (ROOT / "rules" / p).read_bytes()
               for p in shipped)
    tests = [p for p in shipped if p.parts[0] == "tests"]
    assert done.stdout.splitlines()[0] == \
        f"wrote {len(shipped) - len(tests)} rule files and {len(tests)} rule test files to rules/"
    assert "eventd check rules" in done.stdout and "eventd test rules/tests" in done.stdout
    checked = eventd("check", "rules", cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.strip() == "8 rules in 6 files: ok"
    tested = eventd("test", "rules/tests", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.splitlines()[-1].endswith("passed, 0 failed")


def test_init_never_overwrites_and_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "audit.yaml").write_text("# mine\n")
    done = eventd("init", "rules", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    shipped = len(list((ROOT / "rules").rglob("*.yaml")))
    assert done.stderr.splitlines() == [
        f"eventd init: rules/audit.yaml exists (1 of the {shipped} files do); nothing written: "
        "init never overwrites, give a new or empty directory"]
    assert sorted(p.name for p in (tmp_path / "rules").iterdir()) == ["audit.yaml"]
    assert (tmp_path / "rules" / "audit.yaml").read_text() == "# mine\n"
    (tmp_path / "file").write_text("")
    done = eventd("init", "file", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == "eventd init: file is a file, not a directory\n"
