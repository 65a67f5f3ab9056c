"""Where the sample rules are: a checkout's top-level rules/, else the copy built into the package.

`setup.py` copies rules/ into `eventd/sample_rules/` when a wheel is built, so `pip install .`,
a wheel and the container image have them; an editable install reads the checkout's. The demo
runs them and `eventd init` writes them out.
"""

from __future__ import annotations

from pathlib import Path

import eventd


def rules_path() -> Path:
    """The sample rules' directory (FileNotFoundError if this install has none)."""
    package = Path(eventd.__file__).parent
    checkout = package.parent / "rules"
    candidates = [package / "sample_rules"]
    if (package.parent / "setup.cfg").is_file():
        candidates.insert(0, checkout)
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.y*ml")):
            return candidate
    raise FileNotFoundError("no sample rules in " + " or ".join(str(c) for c in candidates))
