"""requests loads charset_normalizer (2.1 MiB resident) for a guess eventd never needs at once.

requests imports it at its own import, but uses it only to guess the charset of a body that
names none (`Response.text`, `apparent_encoding`); eventd reads JSON (which requests decodes
without it) and keeps a few hundred characters of an error body. `defer()`, called before
requests is imported, puts a stand-in under the package's name that holds only its version
(requests checks it), read from the package's own `version.py`; the first use of anything
else executes the real package into that same module object, so a guess still happens when
a body asks for one, and any other importer gets the real package. Called when
`eventd.clients` is imported (docker-py imports requests at its own import) and again by
`http.new_session`. bench/memprobe.py measures what it saves; tests/test_footprint.py checks
that `eventd run`'s first HTTP call and the docker client leave the package unloaded.
"""

from __future__ import annotations

import importlib.util
import sys

from eventd.clients.deferred import DeferredModule

__all__ = ["NAME", "defer", "deferred"]

NAME = "charset_normalizer"


def deferred() -> bool:
    """Whether the package is imported but its code has not run (the stand-in is in place)."""
    return isinstance(sys.modules.get(NAME), DeferredModule)


def defer() -> None:
    """Install the stand-in, unless the package is already loaded or cannot be found."""
    if NAME in sys.modules or "requests" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(NAME)
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            return
        version_spec = importlib.util.spec_from_file_location(
            f"{NAME}.version", f"{list(spec.submodule_search_locations)[0]}/version.py")
        if version_spec is None or version_spec.loader is None:
            return
        version = importlib.util.module_from_spec(version_spec)
        version_spec.loader.exec_module(version)
        module = importlib.util.module_from_spec(spec)
    except (ImportError, OSError, SyntaxError):
        return  # requests imports the package itself, as it would without eventd
    module.__version__ = version.__version__  # type: ignore[attr-defined]
    module.__class__ = DeferredModule
    sys.modules[NAME] = module
    sys.modules[version_spec.name] = version  # the real __init__'s `from .version import` reuses it
