"""requirements/: the lock agrees with setup.cfg's ranges, with itself, and pins every file by hash.

`make lock` writes runtime.txt (what the image installs) and dev.txt (the whole tree: the
runtime, the build backend, the test and lint extras, which make and CI install).
"""

from __future__ import annotations

import configparser
import re
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.image_build import DEV_LOCK, ROOT, RUNTIME_LOCK, canonical, lock_entries, locked_versions

BUILD_IN = ROOT / "requirements" / "build.in"


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def requirements(text: str) -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [Requirement(line) for line in lines if line]


def install_requires() -> list[Requirement]:
    return requirements(setup_cfg()["options"]["install_requires"])


def extra(name: str) -> list[Requirement]:
    return requirements(setup_cfg()["options.extras_require"][name])


def build_requires() -> list[Requirement]:
    return requirements(BUILD_IN.read_text())


def test_the_build_backend_in_the_lock_is_the_one_pyproject_names() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert sorted(map(str, build_requires())) == sorted(str(Requirement(r)) for r in declared)


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_each_range_in_setup_cfg_is_pinned_within_it(lock) -> None:
    wanted = install_requires() + build_requires()
    if lock == DEV_LOCK:
        wanted += extra("test") + extra("lint")
    pinned = locked_versions(lock)
    for requirement in wanted:
        name = canonical(requirement.name)
        assert name in pinned, f"{name} is not in {lock.name}: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"{lock.name} pins {name}=={pinned[name]}, outside setup.cfg's {requirement}"


def test_the_image_and_the_tree_name_the_same_versions_and_files() -> None:
    dev = {canonical(block.split("==", 1)[0]): block for block in lock_entries(DEV_LOCK.read_text())}
    for block in lock_entries(RUNTIME_LOCK.read_text()):
        name = canonical(block.split("==", 1)[0])
        assert name in dev, name
        assert _pin_and_hashes(block) == _pin_and_hashes(dev[name]), name


def _pin_and_hashes(block: str) -> tuple[str, set[str]]:
    return block.split(" ", 1)[0].strip(), set(re.findall(r"--hash=(sha256:[0-9a-f]{64})", block))


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_every_pin_is_exact_and_every_file_has_a_hash(lock) -> None:
    text = lock.read_text()
    entries = lock_entries(text)
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9]", text, re.M)), "a line is not a pin"
    for block in entries:
        assert re.match(r"^[A-Za-z0-9._-]+==[^ ,;<>=!~*]+( ;| \\)", block), block.splitlines()[0]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), block.splitlines()[0]


def test_lock_drift_names_each_library_that_moved_and_only_those(tmp_path):
    """`make test-latest` runs the suite again only when tests.lock_drift finds a difference."""
    from importlib import metadata

    from tests import lock_drift

    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()
                 if d.metadata["Name"]}
    lock = tmp_path / "lock.txt"
    lock.write_text("".join(f"{name}=={version} \\\n    --hash=sha256:00\n"
                            for name, version in installed.items()))
    assert lock_drift.drift(lock) == []
    assert lock_drift.main([str(lock)]) == 3
    moved = next(name for name in sorted(installed) if name not in lock_drift._TOOLS)
    lock.write_text(lock.read_text().replace(f"{moved}=={installed[moved]} ", f"{moved}==0.0.1 "))
    assert lock_drift.drift(lock) == [f"{moved} 0.0.1 -> {installed[moved]}"]
    assert lock_drift.main([str(lock)]) == 0
