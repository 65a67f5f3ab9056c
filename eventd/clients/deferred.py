"""A module object whose code runs on first use: the stand-in behind clients/charset.py and
clients/metadata.py, which keep libraries eventd rarely needs from loading at start.

`DeferredModule` is the class a module made by `importlib.util.module_from_spec` is given
before it goes into `sys.modules`: the first attribute asked (but for the probes of copy,
inspect and pickle) runs the real module's code into that same object, which becomes a plain
module, so whoever imported it meanwhile holds the real module.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["DeferredModule", "load"]


class DeferredModule(types.ModuleType):
    """A module before its code ran: the first attribute asked runs it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name != "__all__":
            raise AttributeError(name)  # probes (copy, inspect, pickle) load nothing
        load(self)
        return getattr(self, name)


def load(module: types.ModuleType) -> None:
    """Run the real module's code into `module`, once (nothing if it already ran)."""
    if not isinstance(module, DeferredModule):
        return
    module.__class__ = types.ModuleType  # type: ignore[assignment]  # a plain module from now on
    spec = module.__spec__
    assert spec is not None and spec.loader is not None
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)  # as a failed import leaves it: the next one retries
        raise
