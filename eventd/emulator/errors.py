"""The emulator's one exception: it stands apart from the daemon and imports nothing of it."""


class ScenarioError(Exception):
    """An emulator scenario file that does not load; the message names file and line."""
