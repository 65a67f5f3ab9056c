"""The sub-commands beside `run`: check, test, replay, deadletter, demo (story, narrator,
receiver), receive.

Each is a thin user-facing layer over the core (it may import the daemon, the stores, the
emulator); the core never imports from here. They listen to the daemon through `eventd.hooks`
and its metrics, never by reading its log text.
"""
