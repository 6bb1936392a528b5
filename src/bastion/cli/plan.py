"""``bastion plan``: validate a plan and build the initial model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from bastion.cli.console import console, err_console
from bastion.cli.options import WorkspaceOption
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
    """Check plan.yaml and what it names (strategy, loader, task runner, assigner): every
    problem at once, each with its key path; print the canonical hash when it is valid."""
    from bastion.errors import PlanError
    from bastion.workspace.checks import validate_workspace_plan

    plan, problems = validate_workspace_plan(workspace)
    if plan is None:
        for problem in problems[:-1]:
            err_console.print(Text.assemble(("error: ", "bold red"), problem), soft_wrap=True)
        raise PlanError(
            problems[-1] + (f" ({len(problems)} problems)" if len(problems) > 1 else "")
        )
    console.print(
        f"[green]valid[/] plan {plan.name!r}: {plan.rounds} rounds, {len(plan.collaborators)} collaborators, "
        f"strategy {plan.aggregation.strategy}; hash {plan.canonical_hash()}"
    )


@app.command("export-model")
def export_model(
    out: Path = typer.Option(..., "--out", help="Folder to write the model into."),
    workspace: Path = WorkspaceOption,
    checkpoint: str = typer.Option("last", help="last (the final model) or best."),
) -> None:
    """Write the federation's model in its framework's own form (a PEFT runner: the adapter
    folder plus base_model.json, loadable with PeftModel.from_pretrained on the pinned base)."""
    from bastion.workspace.model_export import export_model as export

    folder = export(workspace, out, checkpoint)
    console.print(f"[green]exported[/] the {checkpoint} model to {folder}")
