"""Test-wide settings: nothing is written under the home directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SCRATCH = Path(tempfile.mkdtemp(prefix="bastion-tests-"))
for variable, sub in [
    ("BASTION_CACHE_DIR", "cache"),
    ("KERAS_HOME", "keras"),
    ("RAY_TMPDIR", "ray"),
    ("MPLCONFIGDIR", "matplotlib"),
    ("HF_HOME", "hf"),
    ("XDG_CACHE_HOME", "xdg-cache"),
]:
    os.environ.setdefault(variable, str(_SCRATCH / sub))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def scratch() -> Path:
    return _SCRATCH
