"""Building real workspaces (templates, PKI, initial model) for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bastion.pki import Role, init_ca, issue
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace
from bastion.workspace.verify import measure, sign

MODEL_OWNER = "model-owner"


def deep_update(target: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
    return target


def edit_plan(workspace: Path, changes: dict[str, Any]) -> None:
    path = workspace / "plan.yaml"
    plan = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(plan, changes), sort_keys=False))


def issue_identities(
    workspace: Path, collaborators: list[str], aggregator: str = "aggregator"
) -> Path:
    pki = workspace / "pki"
    init_ca(pki)
    issue(pki, aggregator, Role.AGGREGATOR, hosts=["127.0.0.1", "localhost"])
    issue(pki, MODEL_OWNER, Role.MODEL_OWNER)
    for name in collaborators:
        issue(pki, name, Role.COLLABORATOR)
    return pki


def sign_workspace(workspace: Path) -> None:
    """Measure and sign as the model owner, as `bastion workspace measure` / `sign` do."""
    pki = workspace / "pki"
    measure(workspace)
    sign(workspace, pki / f"{MODEL_OWNER}.key", pki / f"{MODEL_OWNER}.crt")


def make_workspace(
    root: Path,
    template: str = "numpy_logreg_digits",
    collaborators: int = 3,
    rounds: int = 2,
    plan_changes: dict[str, Any] | None = None,
    task_code: str | None = None,
    initialize: bool = True,
    signed: bool = True,
    files: dict[str, str] | None = None,
) -> Path:
    """A ready-to-run workspace: template, optional plan edits and task code, PKI, initial model.

    ``task_code`` replaces the template's ``task.py``; ``files`` (name -> text) are added
    beside it, e.g. a module whose runner wraps the template's, named by ``plan_changes``.
    """
    workspace = create_workspace(root / "ws", template, collaborators=collaborators, rounds=rounds)
    if task_code is not None:
        (workspace / "task.py").write_text(task_code)
    for name, text in (files or {}).items():
        (workspace / name).write_text(text)
    if plan_changes:
        edit_plan(workspace, plan_changes)
    names = [f"site-{i}" for i in range(1, collaborators + 1)]
    issue_identities(workspace, names)
    if initialize:
        initialize_plan(workspace)
        # A workspace still being edited (initialize=False) is signed by its test when ready.
        if signed:
            sign_workspace(workspace)
    return workspace
