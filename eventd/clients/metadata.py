"""urllib3 loads importlib.metadata (0.34 MiB resident) for one call eventd never makes.

urllib3 2.x imports `version` from importlib.metadata in `urllib3.http2`, at its own import
(requests imports urllib3), and calls it only in `inject_into_urllib3()`, which turns HTTP/2
on; eventd never does. `defer()`, called before requests is imported, puts a stand-in under
the module's name whose `version` runs the real module first; the first use of anything else
runs the real module into that same module object, as clients/charset.py does for
charset_normalizer, so any importer still gets the real module. tests/test_footprint.py
checks that the daemon's first HTTP call leaves it unloaded and that it still works.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from eventd.clients.deferred import DeferredModule, load

__all__ = ["NAME", "defer", "deferred", "version"]

NAME = "importlib.metadata"


def version(distribution_name: str) -> str:
    """`importlib.metadata.version`, the real module loaded first (what urllib3 imports)."""
    module = sys.modules.get(NAME)
    if module is None:
        module = importlib.import_module(NAME)
    load(module)
    result: str = module.version(distribution_name)
    return result


def deferred() -> bool:
    """Whether the module is imported but its code has not run (the stand-in is in place)."""
    return isinstance(sys.modules.get(NAME), DeferredModule)


def defer() -> None:
    """Install the stand-in, unless the module is already loaded or urllib3 already is."""
    if NAME in sys.modules or "urllib3" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(NAME)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
    except (ImportError, OSError):
        return  # urllib3 imports it itself, as it would without eventd
    module.version = version  # type: ignore[attr-defined]
    module.__class__ = DeferredModule
    sys.modules[NAME] = module
    importlib.metadata = module  # as an import sets it on its package
