"""``bastion collaborator``: run a data site."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.console import configure_logging
from bastion.cli.options import (
    AllowUnsignedWorkspaceOption,
    InsecureOption,
    VerboseOption,
    WorkspaceOption,
)

app = typer.Typer(help="Run a collaborator (a data site).", no_args_is_help=True)


@app.command("start")
def start(
    name: str = typer.Argument(
        ...,
        envvar="BASTION_COLLABORATOR_NAME",
        help="This site's name: on the plan's roster and its certificate's CN.",
    ),
    workspace: Path = WorkspaceOption,
    aggregator: str | None = typer.Option(
        None,
        envvar="BASTION_AGGREGATOR",
        help="Aggregator address HOST:PORT (default: plan network.host:port).",
    ),
    insecure: bool = InsecureOption,
    allow_unsigned_workspace: bool = AllowUnsignedWorkspaceOption,
    verbose: bool = VerboseOption,
) -> None:
    """Join the federation and run assigned tasks until it finishes (exit 0)."""
    configure_logging(verbose)
    from bastion.collaborator.service import run_collaborator

    run_collaborator(
        workspace,
        name,
        aggregator=aggregator,
        insecure=insecure,
        allow_unsigned_workspace=allow_unsigned_workspace,
    )
