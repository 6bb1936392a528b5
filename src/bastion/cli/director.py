"""``bastion director``: run a federation service's director."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from bastion.cli.console import configure_logging, console
from bastion.cli.options import DashboardOption, DashboardTokensOption, VerboseOption

app = typer.Typer(help="Run the federation service's director.", no_args_is_help=True)


@app.command("start")
def start(
    name: str = typer.Option(
        ..., "--name", help="The director's certificate name (an aggregator certificate)."
    ),
    pki_dir: Path = typer.Option(
        ..., "--pki-dir", "--pki", file_okay=False, help="ca.crt and the director's key and cert."
    ),
    state_dir: Path = typer.Option(
        Path("director"), "--dir", help="Where the database and the jobs live."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (jobs listen there too)."),
    port: int = typer.Option(50051, help="Listen port (0 picks one)."),
    port_file: Path | None = typer.Option(None, help="Write the bound port here once listening."),
    dashboard: str | None = DashboardOption,
    dashboard_tokens: Path | None = DashboardTokensOption,
    dashboard_tls: bool = typer.Option(
        False,
        "--dashboard-tls",
        help="Serve the dashboard over HTTPS with the director's certificate (the federation CA).",
    ),
    dashboard_offline_after: float = typer.Option(
        15.0, help="The dashboard shows a site offline after this many silent seconds."
    ),
    mlflow_uri: str | None = typer.Option(
        None,
        "--mlflow-uri",
        help="Log every job to this MLflow tracking server (a plan's tracking.mlflow wins).",
    ),
    verbose: bool = VerboseOption,
) -> None:
    """Serve until SIGTERM; restarted, queued jobs stay queued and running jobs resume."""
    configure_logging(verbose)
    from bastion.director.service import Director

    if mlflow_uri:  # each job's aggregator process inherits it (bastion.aggregator.tracking)
        os.environ["BASTION_MLFLOW_URI"] = mlflow_uri

    director = Director(state_dir, pki_dir, name, host=host, port=port)
    server = None
    if dashboard is not None:
        from bastion.dashboard.server import DashboardServer, parse_address
        from bastion.dashboard.sources import DirectorSource

        source = DirectorSource(director.db, director.jobs_dir, dashboard_offline_after)
        dash_host, dash_port = parse_address(dashboard)
        tls = (director.tls.cert, director.tls.key) if dashboard_tls else (None, None)
        server = DashboardServer(source, dash_host, dash_port, dashboard_tokens, *tls).start()
        console.print(f"dashboard: {server.url}")
    try:
        director.run_forever(port_file)
    finally:
        if server is not None:
            server.stop()
