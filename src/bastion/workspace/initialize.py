"""``bastion plan initialize``: validate the plan and write the initial model checkpoint."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bastion.algorithms.registry import create_plan_strategy
from bastion.errors import BastionError
from bastion.plan import load_plan
from bastion.storage.checkpoints import INITIAL, CheckpointStore
from bastion.tensors import spec_of, total_bytes
from bastion.workspace.tasks import build_runner


@dataclass(frozen=True)
class Initialized:
    checkpoint: Path
    tensors: int
    parameters: int
    size_bytes: int
    plan_hash: str


def initialize_plan(workspace: Path, force: bool = False) -> Initialized:
    """Build the initial model from the task code and store it as round 0."""
    workspace = Path(workspace)
    plan = load_plan(workspace)
    create_plan_strategy(plan)  # fail early on a bad config
    save_dir = workspace / plan.output.checkpoints
    root = workspace.resolve()
    if (
        save_dir.is_symlink()
        or not save_dir.resolve().is_relative_to(root)
        or (save_dir.resolve() == root)
    ):
        raise BastionError(
            f"output.checkpoints {plan.output.checkpoints!r} must be a folder inside the "
            f"workspace {workspace}, not a link and not the workspace itself"
        )
    if save_dir.exists() and any(save_dir.iterdir()):
        if not force:
            raise BastionError(
                f"{save_dir} already holds checkpoints; pass --force to discard them and start over"
            )
        shutil.rmtree(save_dir)
        metrics = workspace / plan.output.logs / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
    runner = build_runner(plan, workspace)
    weights = runner.get_weights()
    if not weights:
        raise BastionError(f"{plan.task_runner.path} built a model with no tensors to federate")
    spec_of(weights)  # every dtype must be one the wire allows
    store = CheckpointStore(save_dir, plan.canonical_hash())
    path = store.save_initial(weights)
    assert path.name == INITIAL
    return Initialized(
        checkpoint=path,
        tensors=len(weights),
        parameters=sum(int(a.size) for a in weights.values()),
        size_bytes=total_bytes(weights),
        plan_hash=plan.canonical_hash(),
    )
