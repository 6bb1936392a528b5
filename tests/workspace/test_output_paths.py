"""`output.*` paths stay inside the workspace: `plan initialize --force` cannot delete a
folder outside it (issue 15)."""

from __future__ import annotations

from pathlib import Path

from support.cli import run_bastion
from support.workspaces import edit_plan, make_workspace


def test_checkpoints_outside_the_workspace_are_refused(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2, rounds=1, initialize=False)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    edit_plan(workspace, {"output": {"checkpoints": "../precious"}})
    result = run_bastion("plan", "initialize", "--force", cwd=workspace)
    assert result.returncode != 0
    assert "must be a folder inside the workspace" in result.stdout + result.stderr
    assert (outside / "keep.txt").read_text() == "mine"
