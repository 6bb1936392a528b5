"""``bastion status``: where a workspace's federation stands, read from its files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from bastion.cli.console import console
from bastion.cli.options import WorkspaceOption
from bastion.metrics.log import METRICS_FILE, read_metrics, round_summaries
from bastion.plan import Plan, load_plan
from bastion.storage.checkpoints import CheckpointStore


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    workspace: Path = WorkspaceOption,
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object: the status file and the last round's record."
    ),
    watch: float | None = typer.Option(
        None,
        "--watch",
        min=0.2,
        help="Redraw every SECONDS until the federation finishes (Ctrl-C stops watching).",
    ),
) -> None:
    """Round, collaborators seen, best model and the last round's metrics."""
    show = _print_json if as_json else _show
    if watch is None:
        show(workspace)
        return
    try:
        while True:
            if not as_json:
                console.clear()
            finished = show(workspace)
            if finished:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        return


def _print_json(workspace: Path) -> bool:
    """The status as one JSON line (``--watch``: one line per redraw)."""
    plan = load_plan(workspace)
    store = CheckpointStore(Path(workspace) / plan.output.checkpoints, plan.canonical_hash())
    summary = store.read_summary()
    rounds = round_summaries(read_metrics(_metrics_path(workspace, plan)))
    state = "not started" if summary is None else ("finished" if summary["finished"] else "running")
    print(
        json.dumps(
            {
                "plan": plan.name,
                "state": state,
                "rounds": plan.rounds,
                "collaborators": plan.collaborator_names(),
                "summary": summary,
                "last_round": rounds[-1] if rounds else None,
            },
            default=str,
            sort_keys=True,
        ),
        flush=True,
    )
    return bool(summary and summary["finished"])


def _show(workspace: Path) -> bool:
    plan = load_plan(workspace)
    store = CheckpointStore(Path(workspace) / plan.output.checkpoints, plan.canonical_hash())
    summary = store.read_summary()
    if summary is None:
        initialized = (store.directory / "initial.safetensors").exists()
        hint = "start the aggregator" if initialized else "run `bastion plan initialize`"
        console.print(f"plan [bold]{plan.name}[/]: not started yet; {hint}")
        return False
    if summary["finished"]:
        state = "finished"
    elif summary.get("final_evaluation"):
        state = "final evaluation"
    else:
        state = f"round {summary['current_round']} of {summary['rounds']}"
    console.print(
        f"plan [bold]{plan.name}[/]: {state}; {summary['round_completed']} rounds complete "
        f"(updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(summary['updated']))})"
    )
    privacy = summary.get("privacy")
    if privacy:
        console.print(_privacy_line(privacy))
    records = read_metrics(_metrics_path(workspace, plan))
    local = summary.get("local_privacy") or {}
    local_dp = local.get("epsilon") or _local_epsilons(records)
    if local_dp:
        console.print(_local_privacy_line(local_dp, local, plan))
    best = summary.get("best") or {}
    if best.get("value") is not None:
        console.print(f"best model: round {best['round']}, {best['metric']} = {best['value']:.4f}")
    attested = summary.get("attestation", {})
    failures = summary.get("failures") or {}
    lost = set(summary.get("lost") or [])
    columns = ["collaborator", "last seen", "assigned now", "failed tasks"] + (
        ["attestation"] if plan.attestation else []
    )
    seen = Table(*columns)
    seen_at = summary.get("collaborators_seen", {})
    for name in plan.collaborator_names():
        when = seen_at.get(name)
        row = [
            name,
            (time.strftime("%H:%M:%S", time.localtime(when)) if when else "never")
            + (" (lost)" if name in lost else ""),
            "yes" if name in summary.get("assigned", []) else "",
            _failures(failures.get(name)),
        ]
        if plan.attestation:
            row.append(_verdict(attested.get(name)))
        seen.add_row(*row)
    console.print(seen)
    rounds = round_summaries(records)
    if rounds:
        last = rounds[-1]
        title = (
            "final evaluation metrics"
            if last.get("final_evaluation")
            else f"round {last['round']} metrics"
        )
        table = Table("task", "metric", "value", title=title)
        for task, values in last.get("tasks", {}).items():
            for key, value in values.items():
                table.add_row(task, key, f"{value:.4f}" if key != "examples" else f"{int(value)}")
        console.print(table)
    return bool(summary["finished"])


def _failures(entry: dict[str, object] | None) -> str:
    """How often a site's tasks raised, and the last error (type and message)."""
    if not entry:
        return ""
    return escape(f"{entry['count']}: round {entry['round']} {entry['task']}: {entry['error']}")


def _metrics_path(workspace: Path, plan: Plan) -> Path:
    return Path(workspace) / plan.output.logs / METRICS_FILE


def _privacy_line(privacy: dict) -> str:
    """Central DP: epsilon spent so far, the budget, and why training stopped if it did."""
    budget = privacy.get("epsilon_budget")
    line = (
        f"privacy ({privacy['mechanism']}, {privacy['accountant']} accountant): epsilon "
        f"{privacy['epsilon']:.4g} at delta={privacy['delta']:g} after {privacy['rounds']} rounds"
        f" (noise multiplier {privacy['noise_multiplier']:g}, sampling rate "
        f"{privacy['sampling_rate']:g})"
    )
    if budget is not None:
        line += f"; budget epsilon {budget:g}"
    if privacy.get("stopped"):
        line += f"\n[bold yellow]stopped early[/]: {privacy['stopped']}"
    return line


def _local_privacy_line(epsilons: dict[str, float], local: dict, plan: Plan) -> str:
    """Local DP-SGD: the largest epsilon a site reported, each site's, its budget, the stop."""
    delta = plan.differential_privacy.delta if plan.differential_privacy else 1e-5
    worst = max(epsilons, key=lambda name: epsilons[name])
    line = f"local DP-SGD: epsilon up to {epsilons[worst]:.4g} ({worst}) at delta={delta:g}"
    if len(epsilons) > 1:
        line += " (" + ", ".join(f"{n} {e:.4g}" for n, e in sorted(epsilons.items())) + ")"
    if local.get("epsilon_budget") is not None:
        line += f"; budget epsilon {local['epsilon_budget']:g} per site"
    if local.get("declined"):
        line += f"; declined training: {', '.join(local['declined'])}"
    if local.get("stopped"):
        line += f"\n[bold yellow]stopped early[/]: {local['stopped']}"
    return line


def _local_epsilons(records: list[dict]) -> dict[str, float]:
    """The latest ``dp_epsilon`` each collaborator reported from local DP-SGD."""
    latest: dict[str, float] = {}
    for record in records:
        value = (
            record.get("metrics", {}).get("dp_epsilon") if record.get("event") == "task" else None
        )
        if isinstance(value, int | float):
            latest[str(record.get("collaborator"))] = float(value)
    return latest


def _verdict(result: dict | None) -> str:
    if not result:
        return "not yet"
    if not result.get("accepted"):
        return f"refused: {result.get('reason', '')}"
    label = "SIMULATED " if result.get("simulated") else ""
    field = {"tdx": "TDX mrtd", "snp": "SNP measurement"}.get(
        str(result.get("evidence")), "mrenclave"
    )
    return f"{label}ok, {field} {str(result.get('mr_enclave', ''))[:12]}…, TCB {result.get('tcb_status')}"
