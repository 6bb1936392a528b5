"""``bastion plan``: validate a plan and build the initial model."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.console import console
from bastion.cli.options import WorkspaceOption
from bastion.plan import load_plan
from bastion.workspace.initialize import initialize_plan

app = typer.Typer(help="Validate plans and create the initial model.", no_args_is_help=True)


@app.command("initialize")
def initialize(
    workspace: Path = WorkspaceOption,
    force: bool = typer.Option(False, "--force", help="Discard existing checkpoints and metrics."),
) -> None:
    """Validate plan.yaml, build the initial model from the task code, write save/initial.safetensors."""
    result = initialize_plan(workspace, force=force)
    console.print(
        f"[green]initialized[/] {result.checkpoint}: {result.tensors} tensors, "
        f"{result.parameters:,} parameters ({result.size_bytes / 1e6:.2f} MB); "
        f"plan hash {result.plan_hash[:16]}…"
    )


@app.command("validate")
def validate(workspace: Path = WorkspaceOption) -> None:
    """Check plan.yaml and print its canonical hash."""
    plan = load_plan(workspace)
    console.print(
        f"[green]valid[/] plan {plan.name!r}: {plan.rounds} rounds, {len(plan.collaborators)} collaborators, "
        f"strategy {plan.aggregation.strategy}; hash {plan.canonical_hash()}"
    )
