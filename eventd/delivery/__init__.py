"""Delivery of accepted actions: per-target lanes, attempts, retries, breaker, limits, HTTP.

Takes jobs the engine accepted into the spool and runs them until delivered or dead-lettered.
Imports `actions`, `stores`, `ops`, `events`, `errors`; never `sources`, `ruleset`, `commands`
or `emulator`.
"""
