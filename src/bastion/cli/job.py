"""``bastion job`` and ``bastion sites``: a model owner's view of a federation service."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bastion.cli.console import console

if TYPE_CHECKING:
    from bastion.director.api import Federation

app = typer.Typer(help="Submit and control jobs on a federation service.", no_args_is_help=True)

DirectorOption = typer.Option(
    ..., "--director", envvar="BASTION_DIRECTOR", help="The director's host:port."
)
OwnerPki = typer.Option(
    ...,
    "--pki-dir",
    "--pki",
    envvar="BASTION_PKI_DIR",
    file_okay=False,
    help="ca.crt and the model owner's key and certificate.",
)
OwnerName = typer.Option(None, "--name", help="The model owner's certificate name.")


def _connect(director: str, pki: Path, name: str | None) -> Federation:
    from bastion.director.api import Federation

    return Federation.connect(director, pki, name)


@app.command("submit")
def submit(
    workspace: Path = typer.Argument(..., help="A signed workspace folder or its export."),
    sites: str | None = typer.Option(None, "--sites", help="Comma-separated site names."),
    dataset: str | None = typer.Option(None, "--dataset", help="Every site offering it."),
    min_sites: int = typer.Option(1, "--min-sites"),
    director: str = DirectorOption,
    pki: Path = OwnerPki,
    name: str | None = OwnerName,
) -> None:
    """Queue a job; prints its id."""
    with _connect(director, pki, name) as fed:
        names = [s for s in (sites or "").split(",") if s]
        job = fed.submit(workspace, sites=names, dataset=dataset, min_sites=min_sites)
    console.print(job.id)


@app.command("list")
def list_jobs(
    director: str = DirectorOption, pki: Path = OwnerPki, name: str | None = OwnerName
) -> None:
    """Your jobs."""
    with _connect(director, pki, name) as fed:
        for job in fed.jobs():
            console.print(
                f"{job['id']}  {job['state']:<9} {job['plan_name']}  rounds {job['rounds_done']}/"
                f"{job['rounds']}  {job['reason']}",
                markup=False,
            )


@app.command("status")
def status(
    job: str, director: str = DirectorOption, pki: Path = OwnerPki, name: str | None = OwnerName
) -> None:
    """One job's state, sites and last round, as JSON."""
    with _connect(director, pki, name) as fed:
        console.print_json(json.dumps(fed.job(job).status()))


@app.command("logs")
def logs(
    job: str,
    follow: bool = typer.Option(False, "--follow", "-f"),
    director: str = DirectorOption,
    pki: Path = OwnerPki,
    name: str | None = OwnerName,
) -> None:
    """The job's aggregator log, then its per-round metrics (live with --follow)."""
    with _connect(director, pki, name) as fed:
        handle = fed.job(job)
        for line in handle.logs(follow=follow):
            console.print(line, markup=False, highlight=False)
        for event in handle.rounds(follow=follow):
            console.print(json.dumps(event), markup=False, highlight=False)


@app.command("stop")
def stop(
    job: str, director: str = DirectorOption, pki: Path = OwnerPki, name: str | None = OwnerName
) -> None:
    """Stop a job at the director and at every site."""
    with _connect(director, pki, name) as fed:
        handle = fed.job(job)
        handle.stop()
        for _ in range(600):
            if handle.state in ("finished", "failed", "stopped"):
                break
            time.sleep(0.2)
        console.print(f"{job} {handle.state}")


@app.command("download")
def download(
    job: str,
    best: bool = typer.Option(True, "--best/--last"),
    out: Path = typer.Option(Path("."), "--out"),
    director: str = DirectorOption,
    pki: Path = OwnerPki,
    name: str | None = OwnerName,
) -> None:
    """The job's checkpoint and metrics (only its owner may)."""
    with _connect(director, pki, name) as fed:
        weights = fed.job(job).download(best=best, out=out)
    console.print(f"{len(weights)} tensors and metrics.jsonl in {out}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="job")

    @root.command("sites")
    def sites(
        director: str = DirectorOption, pki: Path = OwnerPki, name: str | None = OwnerName
    ) -> None:
        """Registered sites, when each was last seen, and what each offers."""
        with _connect(director, pki, name) as fed:
            for site in fed.sites():
                seen = time.time() - site["last_seen"]
                console.print(
                    f"{site['name']}  last seen {seen:.0f}s ago  {json.dumps(site['offers'])}",
                    markup=False,
                    highlight=False,
                )
