"""``bastion status`` as a user runs it: a fresh process over the workspace's files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def bastion_status(workspace: Path, columns: int = 250) -> str:
    """The command's output; it must exit 0."""
    shown = subprocess.run(
        [sys.executable, "-m", "bastion", "status", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": str(columns), "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout
