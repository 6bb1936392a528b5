"""``bastion workspace``: templates and workspace creation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from bastion.cli.console import console
from bastion.workspace.templates import create_workspace, list_templates

app = typer.Typer(help="Create workspaces from templates.", no_args_is_help=True)


@app.command("templates")
def templates() -> None:
    """List the workspace templates that ship with Bastion."""
    table = Table("template", "description", "rounds", "collaborators")
    for template in list_templates():
        table.add_row(
            template.name, template.description, str(template.rounds), str(template.collaborators)
        )
    console.print(table)


@app.command("create")
def create(
    directory: Path = typer.Argument(..., help="New (or empty) directory for the workspace."),
    template: str = typer.Option(
        ..., "--template", "-t", help="Template name (see `workspace templates`)."
    ),
    collaborators: int | None = typer.Option(
        None, "--collaborators", "-n", help="Roster size (site-1..site-N)."
    ),
    rounds: int | None = typer.Option(None, "--rounds", "-r", help="Number of training rounds."),
) -> None:
    """Create a workspace: plan.yaml, task code and requirements from a template."""
    path = create_workspace(directory, template, collaborators=collaborators, rounds=rounds)
    console.print(f"[green]created[/] workspace {path} from template [bold]{template}[/]")
    console.print(
        "next: [bold]bastion pki init[/], issue identities, then [bold]bastion plan initialize[/] "
        f"(run them inside {path})"
    )
