"""Thousands of simulated clients: in-process vs Ray, seconds per round and driver memory.

The NumPy digits template with 1,000 and 5,000 clients (digits has 1,437 training
examples, so clients share 100 IID shards), about 100 clients sampled per round, 3
rounds and the final evaluation (every client validates the final model). Each run is a
fresh process, so its peak resident set size (``ru_maxrss``) is the driver's alone; Ray's
actors are separate processes and not counted in it. Round 1 includes starting Ray and
its actors and the aggregator's first contact with every client.

    nice -n 10 .venv/bin/python benchmarks/ray_simulation.py --clients 1000 5000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace

RESULTS = Path(__file__).parent / "results" / "ray_simulation.json"
SHARDS = 100
PER_ROUND = 100
ROUNDS = 3


def build_workspace(root: Path, clients: int, epochs: int | None = None) -> Path:
    workspace = create_workspace(
        root / "ws", "numpy_logreg_digits", collaborators=clients, rounds=ROUNDS
    )
    plan_path = workspace / "plan.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    plan["collaborators"] = [
        {"name": f"site-{i}", "shard": (i - 1) % SHARDS} for i in range(1, clients + 1)
    ]
    plan["participation"] = {"fraction": PER_ROUND / clients, "seed": 1}
    if epochs is not None:  # more local work per client, where parallel workers can pay off
        for task in plan["tasks"]:
            if task["kind"] == "train":
                task.setdefault("args", {})["epochs"] = epochs
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    initialize_plan(workspace)
    return workspace


def run_one(clients: int, backend: str, workers: int, epochs: int | None) -> dict[str, Any]:
    """One federation in this process; returns its timings and this process's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as folder:
        workspace = build_workspace(Path(folder), clients, epochs)
        marks: list[float] = []

        def on_round(_number: int, _federation: object) -> None:
            marks.append(time.perf_counter())

        started = time.perf_counter()
        if backend == "ray":
            from bastion.sim.ray_backend import RayFederation

            RayFederation(workspace, workers=workers, on_round=on_round).run()
        else:
            from bastion.sim.inprocess import InProcessFederation

            InProcessFederation(workspace, on_round=on_round).run()
        ended = time.perf_counter()
        records = [json.loads(line) for line in (workspace / "logs" / "metrics.jsonl").open()]
    rounds = [b - a for a, b in zip([started, *marks], marks, strict=False)]
    summaries = [r for r in records if r["event"] == "round"]
    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in summaries]
    trained = [r for r in records if r["event"] == "task" and r["task"] == "train"]
    return {
        "clients": clients,
        "epochs": epochs,
        "backend": backend if backend != "ray" else f"ray ({workers} workers)",
        "round_seconds": [round(s, 2) for s in rounds],
        "steady_round_seconds": round(sum(rounds[1:]) / max(1, len(rounds) - 1), 2),
        "final_evaluation_seconds": round(ended - marks[-1], 2),
        "total_seconds": round(ended - started, 2),
        "trained_per_round": round(len(trained) / ROUNDS, 1),
        "accuracy_initial_final": [round(accuracy[0], 4), round(accuracy[-1], 4)],
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="local epochs per train task (template: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--one", choices=["in-process", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child run: one configuration, its figures as JSON on stdout
        print(json.dumps(run_one(args.clients[0], args.one, args.workers, args.epochs)))
        return
    rows = []
    for clients in args.clients:
        for backend in ("in-process", "ray"):
            command = [sys.executable, __file__, "--one", backend, "--clients", str(clients)]
            command += ["--workers", str(args.workers)]
            command += ["--epochs", str(args.epochs)] if args.epochs else []
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{backend} with {clients} clients failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"done: {clients} clients, {backend}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    args.out.write_text(json.dumps({"machine": machine, "rounds": ROUNDS, "runs": rows}, indent=2))
    header = (
        f"{'clients':>7} {'backend':<16} {'round 1 s':>9} {'rounds 2-3 s':>12} "
        f"{'final eval s':>12} {'total s':>8} {'trained/round':>13} {'driver RSS MB':>13}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['clients']:>7} {r['backend']:<16} {r['round_seconds'][0]:>9.2f} "
            f"{r['steady_round_seconds']:>12.2f} {r['final_evaluation_seconds']:>12.2f} "
            f"{r['total_seconds']:>8.2f} {r['trained_per_round']:>13} {r['driver_peak_rss_mb']:>13}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
