"""``bastion aggregator``: run the federation's server."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer

from bastion.cli.console import configure_logging
from bastion.cli.options import (
    AllowUnsignedWorkspaceOption,
    DashboardOption,
    DashboardTokensOption,
    InsecureOption,
    PkiDirOption,
    VerboseOption,
    WorkspaceOption,
)

app = typer.Typer(help="Run the aggregator.", no_args_is_help=True)


@app.command("start")
def start(
    workspace: Path = WorkspaceOption,
    host: str | None = typer.Option(
        None, help="Interface to listen on (default: plan network.listen, all interfaces)."
    ),
    port: int | None = typer.Option(
        None, help="Listen port (default: plan network.port; 0 picks one)."
    ),
    port_file: Path | None = typer.Option(None, help="Write the bound port here once listening."),
    pki_dir: Path | None = PkiDirOption,
    insecure: bool = InsecureOption,
    allow_unsigned_workspace: bool = AllowUnsignedWorkspaceOption,
    dashboard: str | None = DashboardOption,
    dashboard_tokens: Path | None = DashboardTokensOption,
    dashboard_linger: float = typer.Option(
        0.0,
        min=0.0,
        help="Keep serving the dashboard this many seconds after the federation ends, so its "
        "final state can be read (Ctrl-C ends the wait).",
    ),
    verbose: bool = VerboseOption,
) -> None:
    """Serve the plan's rounds over mutual TLS; resumes from the last checkpoint if there is one."""
    configure_logging(verbose)
    from bastion.aggregator.events import RoundObserver
    from bastion.aggregator.service import run_aggregator

    observers: list[RoundObserver] = []
    server = None
    if dashboard is not None:
        from bastion.dashboard.standalone import start_standalone_dashboard

        feed, server = start_standalone_dashboard(workspace, dashboard, dashboard_tokens)
        observers.append(feed)
    try:
        run_aggregator(
            workspace,
            host=host,
            port=port,
            insecure=insecure,
            port_file=port_file,
            allow_unsigned_workspace=allow_unsigned_workspace,
            pki_dir=pki_dir,
            observers=observers,
            own_process=True,
        )
        if server is not None:
            _linger(server.url, dashboard_linger)
    finally:
        if server is not None:
            server.stop()


def _linger(url: str, seconds: float) -> None:
    """Serve the finished federation's page a while longer; a standalone dashboard otherwise
    vanishes the moment its last round ends."""
    if seconds <= 0:
        return
    from bastion.cli.console import console

    console.print(f"dashboard stays at {url} for {seconds:g} s (Ctrl-C to leave now)")
    with contextlib.suppress(KeyboardInterrupt):
        time.sleep(seconds)
