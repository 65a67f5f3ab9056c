"""A Docker Cloud emulator (Stream API + REST API) for tests, demos and local runs.

    from eventd.emulator import Emulator
    with Emulator() as emu:
        ...  # point a client at emu.rest_url / emu.stream_url with emu.auth_header

The names below load on first use: `eventd run` imports `eventd.emulator.cli` to build its
command line, and must not pay for the emulator's servers (asyncio, websockets: ~17 MiB).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventd.emulator.core import Emulator
    from eventd.emulator.errors import ScenarioError
    from eventd.emulator.faults import Faults
    from eventd.emulator.records import Handshake, Headers, RecordedCall
    from eventd.emulator.scenario import Scenario, load_scenario

_WHERE = {"Emulator": "eventd.emulator.core", "Faults": "eventd.emulator.faults",
          "Handshake": "eventd.emulator.records", "Headers": "eventd.emulator.records",
          "RecordedCall": "eventd.emulator.records", "Scenario": "eventd.emulator.scenario",
          "load_scenario": "eventd.emulator.scenario", "ScenarioError": "eventd.emulator.errors"}

__all__ = ["Emulator", "Faults", "Handshake", "Headers", "RecordedCall", "Scenario",
           "ScenarioError", "load_scenario"]


def __getattr__(name: str) -> Any:
    """Import an exported name's module when the name is first asked for."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
