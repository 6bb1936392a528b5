"""``bastion collaborator``: run a data site."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.console import configure_logging
from bastion.cli.options import (
    AllowUnsignedWorkspaceOption,
    InsecureOption,
    PkiDirOption,
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
        help="Aggregator address HOST or HOST:PORT (default: plan network.address and "
        "network.port; a missing port is the plan's).",
    ),
    data: list[str] = typer.Option(
        [],
        "--data",
        metavar="NAME=PATH",
        help="This site's file or folder for the plan's dataset NAME (repeatable); never sent.",
    ),
    site_config: Path | None = typer.Option(
        None,
        "--site-config",
        envvar="BASTION_SITE_CONFIG",
        help="This site's site.yaml: datasets mapped to local files, validation files, options.",
    ),
    pki_dir: Path | None = PkiDirOption,
    insecure: bool = InsecureOption,
    allow_unsigned_workspace: bool = AllowUnsignedWorkspaceOption,
    verbose: bool = VerboseOption,
) -> None:
    """Join the federation and run assigned tasks until it finishes (exit 0)."""
    configure_logging(verbose)
    from bastion.collaborator.service import run_collaborator
    from bastion.data.site import SiteData, load_site_data, parse_data_options

    site = load_site_data(site_config) if site_config is not None else SiteData()
    run_collaborator(
        workspace,
        name,
        aggregator=aggregator,
        insecure=insecure,
        allow_unsigned_workspace=allow_unsigned_workspace,
        site_data=site.merged(parse_data_options(data)),
        pki_dir=pki_dir,
        own_process=True,
    )
