"""Running the ``bastion`` command the way a user does: a separate process, output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_bastion(
    *args: str, cwd: Path | None = None, columns: int = 200, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m bastion ARGS`` with this interpreter, wide enough that lines do not wrap."""
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": str(columns), "PYTHONUNBUFFERED": "1"},
    )
