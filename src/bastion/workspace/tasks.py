"""Building a collaborator's runner and data shard from a workspace's plan."""

from __future__ import annotations

from pathlib import Path

from bastion.data import check_dataset, load_dataset, make_shard
from bastion.data.types import DataShard
from bastion.errors import PlanError
from bastion.plan import Plan
from bastion.runners.base import LocalPrivacy, TaskRunner
from bastion.workspace.code import import_callable


def build_runner(plan: Plan, workspace: Path) -> TaskRunner:
    """Call the plan's ``task_runner.path`` with its ``args``; the result must be a TaskRunner."""
    factory = import_callable(plan.task_runner.path, workspace, "task_runner.path")
    try:
        runner = factory(**plan.task_runner.args)
    except TypeError as exc:
        raise PlanError(
            f"key 'task_runner.args': {plan.task_runner.path} rejected them: {exc}"
        ) from None
    if not isinstance(runner, TaskRunner):
        raise PlanError(
            f"key 'task_runner.path': {plan.task_runner.path} returned {type(runner).__name__}, "
            "which lacks get_weights/set_weights/train/validate (see bastion.runners.base.TaskRunner)"
        )
    privacy = plan.differential_privacy
    if privacy is not None and privacy.local is not None:
        if not isinstance(runner, LocalPrivacy):
            raise PlanError(
                f"key 'differential_privacy.local': {type(runner).__name__} cannot train with "
                "DP-SGD; local DP runs in the PyTorch runner (bastion.runners.torch, Opacus)"
            )
        runner.enable_local_dp(
            privacy.local.noise_multiplier,
            privacy.local.max_grad_norm,
            privacy.delta,
            secure_mode=privacy.local.secure_mode,
            accountant="rdp" if privacy.accountant == "rdp" else "prv",  # Opacus's PLD-style one
        )
    return runner


def load_shard(plan: Plan, collaborator: str, workspace: Path) -> DataShard:
    """This collaborator's part of the plan's dataset."""
    loader = plan.data.loader
    if ":" in loader:
        dataset = check_dataset(
            import_callable(loader, workspace, "data.loader")(**plan.data.args), loader
        )
    else:
        dataset = load_dataset(loader, **plan.data.args)
    partition = plan.data.partition
    return make_shard(
        dataset,
        index=plan.shard_of(collaborator),
        count=plan.shard_count(),
        method=partition.method,
        seed=partition.seed,
        alpha=partition.alpha,
        shards_per_part=partition.shards_per_collaborator,
    )
