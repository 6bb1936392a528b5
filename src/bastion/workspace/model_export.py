"""Exporting a federation's model in its framework's own form (a PEFT adapter folder).

Checkpoints hold only the federated tensors; a runner that ``ExportsModel`` knows the rest
(an adapter's configuration, the base it belongs on). The task code is built from the plan
as a collaborator would, so the base model is checked against the plan's pins here too.
"""

from __future__ import annotations

from pathlib import Path

from bastion.errors import BastionError
from bastion.plan import load_plan
from bastion.runners.base import ExportsModel
from bastion.storage.checkpoints import BEST, LAST, STRATEGY_PREFIX, load_checkpoint
from bastion.workspace.tasks import build_runner

CHECKPOINTS = {"last": LAST, "best": BEST}


def export_model(workspace: Path, out: Path, checkpoint: str = "last") -> Path:
    """Write the ``last`` (or ``best``) global model of ``workspace`` into ``out``."""
    workspace = Path(workspace)
    plan = load_plan(workspace)
    if checkpoint not in CHECKPOINTS:
        raise BastionError(f"checkpoint {checkpoint!r}: use one of {', '.join(CHECKPOINTS)}")
    path = workspace / plan.output.checkpoints / CHECKPOINTS[checkpoint]
    if not path.is_file():
        raise BastionError(
            f"{path} does not exist: run the federation first (the aggregator writes it "
            "after each round)"
        )
    runner = build_runner(plan, workspace)
    if not isinstance(runner, ExportsModel):
        raise BastionError(
            f"{plan.task_runner.path} builds a {type(runner).__name__}, which has no export "
            f"form of its own; its model is the safetensors file {path}"
        )
    tensors, _ = load_checkpoint(path)
    runner.set_weights({k: v for k, v in tensors.items() if not k.startswith(STRATEGY_PREFIX)})
    return runner.export(Path(out))
