"""``bastion status`` as a user runs it: a fresh process over the workspace's files."""

from __future__ import annotations

from pathlib import Path

from support.cli import run_bastion


def bastion_status(workspace: Path, columns: int = 250) -> str:
    """The command's output; it must exit 0."""
    shown = run_bastion("status", "--workspace", str(workspace), columns=columns)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout
