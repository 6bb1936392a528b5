"""``bastion site``: a data site's agent, and its operator's approvals."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.console import configure_logging, console
from bastion.cli.options import VerboseOption

app = typer.Typer(help="Run a data site's agent; approve or reject jobs.", no_args_is_help=True)

StateOption = typer.Option(Path("site"), "--dir", help="The agent's folder (jobs, approvals).")


@app.command("start")
def start(
    name: str = typer.Option(..., "--name", help="This site's certificate name."),
    director: str = typer.Option(..., "--director", help="The director's host:port."),
    pki_dir: Path = typer.Option(
        ..., "--pki-dir", "--pki", file_okay=False, help="ca.crt and this site's key and cert."
    ),
    policy: Path = typer.Option(..., "--policy", help="This site's policy.yaml."),
    data: Path | None = typer.Option(None, "--data", help="This site's site.yaml."),
    state_dir: Path = StateOption,
    poll: float = typer.Option(1.0, help="Seconds between heartbeats."),
    verbose: bool = VerboseOption,
) -> None:
    """Register with the director and run the jobs this site's policy accepts."""
    configure_logging(verbose)
    from bastion.site.agent import SiteAgent
    from bastion.site.policy import load_policy

    SiteAgent(
        director, pki_dir, name, state_dir, load_policy(policy), data=data, poll_seconds=poll
    ).run_forever()


@app.command("jobs")
def jobs(state_dir: Path = StateOption) -> None:
    """Jobs waiting for this site's operator."""
    from bastion.site.agent import pending_jobs

    for job in pending_jobs(state_dir):
        console.print(
            f"{job['id']}  owner {job['owner']}  dataset {job['dataset']}  plan {job['plan_name']}"
        )


@app.command("approve")
def approve(job: str = typer.Argument(...), state_dir: Path = StateOption) -> None:
    """Let a job the policy allows run on this site's data."""
    from bastion.site.agent import decide_by_hand

    decide_by_hand(state_dir, job, approve=True)
    console.print(f"approved {job}")


@app.command("reject")
def reject(job: str = typer.Argument(...), state_dir: Path = StateOption) -> None:
    """Refuse a job; the director and its owner see that this site refused it."""
    from bastion.site.agent import decide_by_hand

    decide_by_hand(state_dir, job, approve=False)
    console.print(f"rejected {job}")
