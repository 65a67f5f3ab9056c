"""A Docker Cloud emulator (Stream API + REST API) for tests, demos and local runs.

    from eventd.emulator import Emulator
    with Emulator() as emu:
        ...  # point a client at emu.rest_url / emu.stream_url with emu.auth_header
"""

from __future__ import annotations

from eventd.emulator.core import Emulator
from eventd.emulator.errors import ScenarioError
from eventd.emulator.faults import Faults
from eventd.emulator.records import Handshake, Headers, RecordedCall
from eventd.emulator.scenario import Scenario, load_scenario

__all__ = ["Emulator", "Faults", "Handshake", "Headers", "RecordedCall", "Scenario",
           "ScenarioError", "load_scenario"]
