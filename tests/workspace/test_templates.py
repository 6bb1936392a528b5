"""Templates produce valid workspaces whose task code builds a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import BastionError
from bastion.plan import load_plan
from bastion.storage.checkpoints import load_checkpoint
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace, list_templates


def test_templates_are_listed() -> None:
    names = {t.name for t in list_templates()}
    assert {"numpy_logreg_digits", "torch_cnn_mnist"} <= names


@pytest.mark.parametrize("template", ["numpy_logreg_digits", "torch_cnn_mnist"])
def test_create_and_initialize(template: str, tmp_path: Path) -> None:
    workspace = create_workspace(tmp_path / "ws", template, collaborators=4, rounds=7)
    plan = load_plan(workspace)
    assert plan.collaborator_names() == ["site-1", "site-2", "site-3", "site-4"]
    assert plan.rounds == 7
    assert (workspace / "task.py").exists() and (workspace / "requirements.txt").exists()
    result = initialize_plan(workspace)
    weights, metadata = load_checkpoint(result.checkpoint)
    assert metadata["bastion.plan_hash"] == plan.canonical_hash()
    assert result.parameters == sum(w.size for w in weights.values()) > 0


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(BastionError, match="--collaborators"):
        create_workspace(tmp_path / "a", "numpy_logreg_digits", collaborators=0)
    with pytest.raises(BastionError, match="--rounds"):
        create_workspace(tmp_path / "b", "numpy_logreg_digits", rounds=0)
