"""`eventd run` tunes glibc malloc for a threaded daemon, unless the environment already does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eventd.ops import malloc

GLIBC = malloc._glibc_version() is not None
PROBE = ("import json, os, sys; from eventd.ops import malloc; "
         "print(json.dumps(malloc.tune(os.environ)))")


def tuned(**env: str) -> list[str]:
    """What `tune` applies in a fresh process with `env` on top of ours."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


@pytest.mark.skipif(not GLIBC, reason="glibc only (musl and others are left alone)")
def test_all_three_settings_are_applied_on_glibc() -> None:
    assert tuned() == ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_setting_the_environment_gives_is_left_to_glibc() -> None:
    assert tuned(MALLOC_ARENA_MAX="4") == ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
    assert tuned(GLIBC_TUNABLES="glibc.malloc.arena_max=4") == []


def test_run_does_not_load_ctypes_when_the_environment_sets_everything() -> None:
    env = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    code = ("import os, sys; from eventd.ops import malloc; malloc.tune(os.environ); "
            "print('ctypes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
