"""`eventd demo` and `eventd receive`: the story, its narrator and the alert receiver.

The narrator listens to `eventd.hooks`, the metrics and the emulator's records, never to log
text. Imports the daemon and the emulator; nothing in the core imports this package.
"""

from eventd.commands.demo.story import USER, add_arguments, run, scenario_path
from eventd.commands.samples import rules_path

__all__ = ["USER", "add_arguments", "rules_path", "run", "scenario_path"]
