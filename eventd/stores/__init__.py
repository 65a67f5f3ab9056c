"""Durable state: the spool, dead letters, throttle windows, loop-guard marks, de-dup snapshot.

Imports only `eventd.errors`, `eventd.events` and the standard library (plus each driver);
never the pipeline, `commands` or `emulator`.
"""
