"""Importing task code from workspaces: each workspace gets its own modules, never a stale one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import PlanError
from bastion.workspace.code import import_callable


def _workspace(root: Path, value: str) -> Path:
    root.mkdir()
    (root / "task.py").write_text(f"VALUE = {value!r}\n")
    # The plan names `wrapper`, which imports `task` itself: the helper module must be fresh too.
    (root / "wrapper.py").write_text("from task import VALUE\n\ndef get():\n    return VALUE\n")
    return root


def test_a_second_workspace_gets_its_own_helper_modules(tmp_path: Path) -> None:
    first = _workspace(tmp_path / "first", "one")
    second = _workspace(tmp_path / "second", "two")
    assert import_callable("wrapper:get", first, "task_runner.path")() == "one"
    assert import_callable("wrapper:get", second, "task_runner.path")() == "two"
    assert import_callable("wrapper:get", first, "task_runner.path")() == "one"


def test_missing_module_names_the_plan_key(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="key 'data.loader': no module 'nowhere'"):
        import_callable("nowhere:load", tmp_path, "data.loader")


def test_malformed_path_names_the_plan_key(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="key 'task_runner.path'.*module:function"):
        import_callable("task.build_runner", tmp_path, "task_runner.path")
