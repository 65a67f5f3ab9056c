"""Hypothesis profiles for the property-based tests in this directory.

`make test` uses "ci": derandomized (the same examples every run, so a failure reproduces) and
bounded (all fuzz tests together take well under a minute). `make fuzz` sets
HYPOTHESIS_PROFILE=fuzz: random, many more examples, failures kept in .hypothesis/.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "fuzz", max_examples=3000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
