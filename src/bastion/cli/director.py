"""``bastion director``: run a federation service's director."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.console import configure_logging
from bastion.cli.options import VerboseOption

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
    verbose: bool = VerboseOption,
) -> None:
    """Serve until SIGTERM; restarted, queued jobs stay queued and running jobs resume."""
    configure_logging(verbose)
    from bastion.director.service import Director

    Director(state_dir, pki_dir, name, host=host, port=port).run_forever(port_file)
