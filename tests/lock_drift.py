"""Which installed libraries differ from the lock: `make test-latest` runs the suite only then.

`python -m tests.lock_drift LOCK` (run by the fresh .venv-latest interpreter) compares what
pip installed there (the newest releases setup.cfg's ranges allow) with the pins of LOCK.
Exit 0 with the list of differences when any library moved (or is new); exit 3 when every
one is the lock's own version, since `make test` has just run the whole suite on exactly
those: running it again would only double CI's time.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from tests.image_build import canonical, locked_versions

#: the installer's own tools: the latest venv upgrades them, the lock does not pin pip
_TOOLS = {"pip", "setuptools", "wheel", "eventd"}


def drift(lock: Path) -> list[str]:
    """One line per installed library whose version is not the lock's, or that it lacks."""
    locked = {canonical(name): version for name, version in locked_versions(lock).items()}
    lines = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if not name or name in _TOOLS:
            continue
        if locked.get(name) != dist.version:
            lines.append(f"{name} {locked.get(name, '(not in the lock)')} -> {dist.version}")
    return sorted(set(lines))


def main(argv: list[str]) -> int:
    """Print the drift; 0 when there is some, 3 when there is none."""
    changed = drift(Path(argv[0]))
    if not changed:
        print(f"every library is at the version {argv[0]} pins: make test ran the suite on them")
        return 3
    print("newer than the lock:", "; ".join(changed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
