"""Build deploy/Dockerfile with no registry and no network inside the build, as tests/test_image.py does.

- `base_tarball()`: a Debian bookworm root made by `debootstrap --variant=minbase` with python3,
  python3-venv and ca-certificates, as a tar in the tests' cache (~/.cache/eventd-test, or
  $XDG_CACHE_HOME), named by a hash of its recipe: a machine builds it once (about a minute,
  from Debian's archive), every later session imports the same file.
- `wheelhouse()`: the wheels of requirements/runtime.txt (pip checks each hash), cached the same
  way under the lock's hash; the image installs them with `--no-index`.
- `build_context()`: exactly what deploy/Dockerfile.dockerignore lets into the context, plus
  the wheelhouse in deploy/wheels/, as a tar for the Engine's /build.

Without debootstrap (or not root) the image tests skip naming the package; CI=true fails.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "python3,python3-venv,ca-certificates"
RECIPE = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, MIRROR]
# What the base does not need at run time (apt's downloads and lists, documentation).
TRIM = ["var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/doc/*",
        "usr/share/man/*", "usr/share/info/*"]
BASE_IMAGE = "eventd-test-base"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def cache_dir() -> Path:
    """The tests' own cache, outside the work tree, kept between runs."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "eventd-test"
    path.mkdir(parents=True, exist_ok=True)
    return path


def recipe_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def require_debootstrap() -> str:
    """debootstrap, as root; skip (fail under CI=true) naming the package otherwise."""
    found = shutil.which("debootstrap", path=SEARCH_PATH)
    problem = None
    if found is None:
        problem = "debootstrap not found; install with: apt-get install debootstrap"
    elif os.geteuid() != 0:
        problem = "debootstrap needs root to build the image's base"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (CI=true: CI must run the image tests, not skip them)",
                        pytrace=False)
        pytest.skip(problem)
    assert found is not None
    return found


def base_tarball() -> Path:
    """The cached base root as a tar (built with debootstrap on the first call on a machine)."""
    debootstrap = require_debootstrap()
    target = cache_dir() / f"base-{SUITE}-{recipe_key(RECIPE, TRIM)}.tar"
    if target.exists():
        return target
    work = Path(tempfile.mkdtemp(prefix="eventd-base-", dir=cache_dir()))
    try:
        root = work / "root"
        done = subprocess.run([debootstrap, *RECIPE[1:4], str(root), MIRROR],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PATH": SEARCH_PATH})
        if done.returncode != 0:
            raise AssertionError(f"debootstrap failed ({done.returncode}):\n{done.stdout[-3000:]}"
                                 f"\n{done.stderr[-3000:]}")
        for pattern in TRIM:
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        partial = target.with_suffix(".part")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
                       check=True, timeout=300)
        partial.rename(target)  # whole or absent: a run that died leaves no half base behind
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def wheelhouse(target: Path | None = None) -> Path:
    """requirements/runtime.txt's wheels for Linux CPython 3.11 (cached unless `target`).

    The lock is universal: an entry such as `async-timeout ; python_full_version < '3.11.3'`
    is needed by Debian bookworm's 3.11.2 and not by this machine's Python, so the wheels are
    fetched for every entry that some 3.11 release on Linux needs, not by this one's markers.
    """
    lock = RUNTIME_LOCK.read_text()
    if target is None:
        target = cache_dir() / f"wheels-{recipe_key(lock, 'linux-cp311')}"
        if target.exists():
            return target
    wanted = set(locked_versions(RUNTIME_LOCK, "3.11.0")) | set(locked_versions(RUNTIME_LOCK, "3.11.99"))
    partial = Path(tempfile.mkdtemp(prefix="eventd-wheels-", dir=cache_dir()))
    try:
        requirements = partial / "requirements.txt"
        requirements.write_text("".join(
            re.sub(r" ; [^\\\n]+", "", block) for block in lock_entries(lock)
            if canonical(block.split("==", 1)[0]) in wanted))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--require-hashes",
                        "--no-deps", "--only-binary=:all:", "-r", str(requirements),
                        "-w", str(partial)], check=True, timeout=900, capture_output=True)
        requirements.unlink()
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, target)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(
            f"pip wheel failed:\n{exc.stderr.decode(errors='replace')[-3000:]}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def lock_entries(lock: str) -> list[str]:
    """Each `name==version ... \\` line of a lock with its `--hash` lines, as one text."""
    return re.findall(r"^[A-Za-z0-9][^\n]*==[^\n]*\n(?:[ \t]+--hash[^\n]*\n)*", lock, re.M)


def context_files() -> list[Path]:
    """Files of the repository that deploy/Dockerfile.dockerignore lets into the context."""
    patterns = [line.strip() for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    tops = {p.lstrip("!").split("/")[0] for p in patterns if p.startswith("!")}
    chosen = []
    for directory, subdirs, files in os.walk(ROOT):
        if Path(directory) == ROOT:  # .git, .venv and the like: nothing in them is let in
            subdirs[:] = [d for d in subdirs if d in tops]
        for file in files:
            path = Path(directory, file)
            relative = path.relative_to(ROOT).as_posix()
            included = False
            for pattern in patterns:  # the last matching line wins, as Docker reads the file
                if _matches(relative, pattern.lstrip("!").rstrip("/")):
                    included = pattern.startswith("!")
            if included:
                chosen.append(path)
    return sorted(chosen)


def _matches(relative: str, pattern: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent directories."""
    if pattern.startswith("**/"):
        parts = relative.split("/")
        return any(fnmatch.fnmatch("/".join(parts[i:]), pattern[3:]) for i in range(len(parts)))
    parts = relative.split("/")
    return any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def build_context(wheels: Path) -> bytes:
    """The context as a tar: the repository's allowed files, the wheels in deploy/wheels/,
    and deploy/Dockerfile (BuildKit reads it apart from the context; the Engine's /build
    finds it inside)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(ROOT / "deploy" / "Dockerfile", arcname="deploy/Dockerfile")
        for path in context_files():
            tar.add(path, arcname=path.relative_to(ROOT).as_posix(), recursive=False)
        for wheel in sorted(wheels.glob("*.whl")):
            tar.add(wheel, arcname=f"deploy/wheels/{wheel.name}")
    return buffer.getvalue()


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path, python_full_version: str | None = None) -> dict[str, str]:
    """{name: version} of every `name==version ; marker` a lock pins, less those whose
    marker leaves them out on Linux CPython `python_full_version` (all when None)."""
    from packaging.markers import Marker

    found = {}
    for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\\n]+)(?: ; ([^\\\n]+))?",
                         lock.read_text(), re.M):
        name, version, marker = m[1], m[2], (m[3] or "").strip()
        if marker and python_full_version is not None:
            environment = {"python_full_version": python_full_version,
                           "python_version": ".".join(python_full_version.split(".")[:2]),
                           "sys_platform": "linux", "platform_system": "Linux",
                           "os_name": "posix", "platform_python_implementation": "CPython",
                           "implementation_name": "cpython"}
            if not Marker(marker).evaluate(environment):
                continue
        found[canonical(name)] = version
    return found


def eventd_version() -> str:
    match = re.search(r'__version__ = "([^"]+)"', (ROOT / "eventd" / "__init__.py").read_text())
    assert match is not None
    return match[1]


if __name__ == "__main__":  # `make wheelhouse`: the image's wheels into a folder of the context
    print(wheelhouse(Path(sys.argv[1])))
