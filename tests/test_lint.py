"""The house's lint rules hold: `ruff check eventd tests bench` and `mypy eventd` (strict).

They run with the versions requirements/dev.txt pins (ruff, mypy, the type stubs, and the
libraries whose own annotations mypy reads, such as redis): a verdict that changes with an
installed version is settled by the lock, not by whoever ran it last. `make test` installs
exactly the lock; a virtualenv that differs skips here (CI=true fails), and `make test-latest`
leaves these out (-m 'not locked').
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest

from tests.image_build import DEV_LOCK, ROOT, locked_versions

pytestmark = pytest.mark.locked


def drift() -> list[str]:
    """`name: installed (lock: pinned)` for each package this Python has at another version."""
    python = ".".join(map(str, sys.version_info[:3]))
    found = []
    for name, pinned in locked_versions(DEV_LOCK, python).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pinned:
            found.append(f"{name}: {installed} (lock: {pinned})")
    return found


@pytest.fixture(scope="module")
def locked_environment() -> None:
    differs = drift()
    if differs:
        message = ("this virtualenv is not the lock (`make test` installs it): "
                   + "; ".join(differs[:8]))
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def lint(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False)


def test_the_environment_is_the_lock(locked_environment: None) -> None:
    assert not drift()


def test_ruff_finds_nothing(locked_environment: None) -> None:
    done = lint("ruff", "check", "--no-cache", "eventd", "tests", "bench")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


@pytest.mark.timeout(900)
def test_mypy_strict_finds_nothing(locked_environment: None) -> None:
    done = lint("mypy", "eventd")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
