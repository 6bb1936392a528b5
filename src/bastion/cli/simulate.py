"""``bastion simulate``: the whole federation on this machine, one OS process per role or in-process."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bastion.cli.console import console
from bastion.cli.options import InsecureOption, WorkspaceOption
from bastion.errors import BastionError
from bastion.metrics.log import METRICS_FILE, read_metrics, round_summaries
from bastion.metrics.plot import metric_series, plot_metric
from bastion.plan import Plan, load_plan

if TYPE_CHECKING:
    from bastion.sim.inprocess import InProcessFederation
    from bastion.sim.ray_backend import RayFederation


class Backend(str, Enum):
    """Where the collaborators run."""

    processes = "processes"
    in_process = "in-process"
    ray = "ray"


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    workspace: Path = WorkspaceOption,
    plot: Path | None = typer.Option(None, help="Write a PNG of the global metric per round here."),
    require_improvement: bool = typer.Option(
        False, help="Exit 1 unless the final global metric beats the initial model's."
    ),
    timeout: float = typer.Option(
        1800.0, help="Give up (and stop every process) after this many seconds."
    ),
    in_process: bool = typer.Option(
        False,
        "--in-process",
        help="Run every role in this process (no network, no certificates): fast, and cheap "
        "for hundreds of simulated collaborators (short for --backend in-process).",
    ),
    backend: Backend | None = typer.Option(
        None,
        help="processes (default), in-process, or ray: the aggregator here and the "
        "collaborators on Ray actors, for thousands of simulated clients.",
    ),
    workers: int | None = typer.Option(
        None, min=1, help="--backend ray: Ray actors running clients (default: one per CPU)."
    ),
    address: str | None = typer.Option(
        None, help="--backend ray: join this Ray cluster instead of starting one here."
    ),
    insecure: bool = InsecureOption,
) -> None:
    """Run the aggregator and every collaborator of the plan on this machine.

    By default each role is a separate process (the real `bastion aggregator start` /
    `bastion collaborator start` over mutual TLS on 127.0.0.1; logs go to the workspace's
    logs/ folder): issue certificates and run `bastion plan initialize` first. With
    --in-process the same aggregator and collaborator code runs in this process; with
    --backend ray the aggregator runs here and the collaborators on Ray actors.
    """
    if in_process and backend not in (None, Backend.in_process):
        raise BastionError(f"--in-process and --backend {backend.value} disagree; give one")
    chosen = Backend.in_process if in_process else backend or Backend.processes
    if chosen is not Backend.ray and (workers is not None or address is not None):
        raise BastionError("--workers and --address apply only to --backend ray")
    if chosen is not Backend.processes:
        if insecure:
            console.print(f"[yellow]--insecure has no effect with --backend {chosen.value}[/]")
        plan, metrics_path = _run_in_process(workspace, chosen, workers, address)
    else:
        plan, metrics_path = _run_processes(workspace, timeout, insecure)
    _report(plan, metrics_path, plot, require_improvement)


def _run_in_process(
    workspace: Path, backend: Backend, workers: int | None, address: str | None
) -> tuple[Plan, Path]:
    """The aggregator in this process; the collaborators here too, or on Ray actors."""
    plan = load_plan(workspace)
    metrics_path = Path(workspace).resolve() / plan.output.logs / METRICS_FILE
    shown = len(round_summaries(read_metrics(metrics_path)))
    task, metric = plan.best_task(), plan.best_model.metric

    def show(_round: int = 0, _federation: object = None) -> None:
        nonlocal shown
        summaries = round_summaries(read_metrics(metrics_path))
        for summary in summaries[shown:]:
            console.print(_describe(summary, task, metric))
        shown = len(summaries)

    federation: InProcessFederation | RayFederation
    if backend is Backend.ray:
        from bastion.sim.ray_backend import RayFederation  # needs bastion-fl[ray]

        federation = RayFederation(workspace, workers=workers, address=address, on_round=show)
        where = f"on Ray ({workers} workers)" if workers else "on Ray (a worker per CPU)"
    else:
        from bastion.sim.inprocess import InProcessFederation

        federation = InProcessFederation(workspace, on_round=show)
        where = "in this process"
    console.print(
        f"federation [bold]{plan.name}[/]: {len(plan.collaborators)} collaborators {where}, "
        f"{plan.rounds} rounds; metrics in {metrics_path}"
    )
    federation.run()
    show()  # the final evaluation
    return plan, metrics_path


def _run_processes(workspace: Path, timeout: float, insecure: bool) -> tuple[Plan, Path]:
    from bastion.sim.processes import LocalFederation

    with LocalFederation(workspace, insecure=insecure) as federation:
        plan = federation.plan
        task, metric = plan.best_task(), plan.best_model.metric
        port = federation.start_aggregator()
        for name in federation.collaborators or []:
            federation.start_collaborator(name)
        console.print(
            f"federation [bold]{plan.name}[/]: aggregator on 127.0.0.1:{port}, "
            f"{len(federation.collaborator_processes)} collaborators, {plan.rounds} rounds "
            f"({'INSECURE' if insecure else 'mutual TLS'}); logs in {federation.logs}"
        )
        metrics_path = federation.logs / METRICS_FILE
        shown = 0
        deadline = time.monotonic() + timeout
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=console, transient=True) as progress:
            bar = progress.add_task("rounds", total=plan.rounds + 1)
            while True:
                summaries = round_summaries(read_metrics(metrics_path))
                for summary in summaries[shown:]:
                    progress.console.print(_describe(summary, task, metric))
                shown = len(summaries)
                progress.update(bar, completed=min(shown, plan.rounds + 1))
                failed = federation.failed()
                if failed:
                    raise BastionError(
                        f"{', '.join(failed)} exited with an error; see {federation.logs}/<role>.log"
                    )
                if not federation.running():
                    break
                if time.monotonic() > deadline:
                    raise BastionError(f"the federation did not finish within {timeout:.0f}s")
                time.sleep(0.25)
        codes = federation.wait(timeout=60)
    if any(codes.values()):
        raise BastionError(f"exit codes {codes}; see {federation.logs}")
    return plan, metrics_path


def _report(plan: Plan, metrics_path: Path, plot: Path | None, require_improvement: bool) -> None:
    task, metric = plan.best_task(), plan.best_model.metric
    records = read_metrics(metrics_path)
    if task is None:
        console.print("[green]federation finished[/] (no global validation task to report)")
        return
    series = metric_series(records, task, metric)
    if plot is not None and series:
        plot_metric(series, plot, f"{plan.name}: {task} {metric}", metric)
        console.print(f"plot written to {plot}")
    if len(series) >= 2:
        first, last = series[0][1], series[-1][1]
        console.print(
            f"[bold green]federation finished[/]: {metric} {first:.4f} (initial) → {last:.4f} "
            f"(after round {series[-1][0]})"
        )
        better = last > first if plan.best_model.mode == "max" else last < first
        if require_improvement and not better:
            console.print(f"[bold red]{metric} did not improve[/]")
            raise typer.Exit(1)


def _describe(summary: dict[str, Any], task: str | None, metric: str) -> str:
    tasks = summary.get("tasks", {})
    parts = []
    for name, values in tasks.items():
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items() if k != "examples")
        parts.append(f"{name}: {shown}")
    label = "final" if summary.get("final_evaluation") else f"round {summary['round']}"
    rejected = summary.get("rejected") or {}
    extra = f" [yellow]rejected: {', '.join(rejected)}[/]" if rejected else ""
    return f"[bold]{label}[/] ({summary.get('seconds', 0):.1f}s) " + "; ".join(parts) + extra
