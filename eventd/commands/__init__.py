"""The sub-commands beside `run`: check, replay, deadletter, demo.

Each is a thin user-facing layer over the core; the core never imports from here.
"""
