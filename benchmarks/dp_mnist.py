"""Accuracy of central DP-FedAvg on MNIST against the epsilon the accountant reports.

Runs the in-process simulation (the real aggregator and collaborator loop) of the
``torch_cnn_mnist`` template with ``aggregation.strategy: dp_fedavg``, Poisson sampling
of ``--fraction`` of ``--collaborators`` sites per round, and writes the accuracy of the
global model and epsilon after every round to ``benchmarks/results/dp_mnist.json``.

    .venv/bin/python benchmarks/dp_mnist.py --collaborators 1000 --fraction 0.1 \\
        --noise-multiplier 1.0 --clip-norm 1.0 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.inprocess import simulate_in_process
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace

RESULTS = Path(__file__).parent / "results" / "dp_mnist.json"


def run(args: argparse.Namespace, root: Path) -> dict:
    workspace = create_workspace(
        root / "ws", "torch_cnn_mnist", collaborators=args.collaborators, rounds=args.rounds
    )
    plan_path = workspace / "plan.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    plan["aggregation"] = {
        "strategy": "dp_fedavg",
        "args": {
            "noise_multiplier": args.noise_multiplier,
            "clip_norm": args.clip_norm,
            "server_learning_rate": args.server_lr,
        },
    }
    sampling = "poisson" if args.fraction < 1 else "fixed"
    plan["participation"] = {"fraction": args.fraction, "sampling": sampling}
    plan["differential_privacy"] = {"delta": args.delta, "accountant": "rdp"}
    plan["tasks"] = [
        {"name": "validate_global", "kind": "validate"},
        {
            "name": "train",
            "kind": "train",
            "args": {"epochs": 1, "batch_size": args.batch_size, "lr": args.lr},
        },
    ]
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    initialize_plan(workspace)
    started = time.monotonic()
    simulate_in_process(workspace)
    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    # Round r's global validation measures the model of round r - 1; that model was
    # released after r - 1 rounds of noise, so its epsilon is the one after round r - 1.
    spent = {0: 0.0}
    spent.update(
        {s["round"]: s["privacy"]["epsilon"] for s in summaries if not s["final_evaluation"]}
    )
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "seconds": round(time.monotonic() - started, 1),
        "models": [
            {
                "after_round": s["model_round"],
                "accuracy": s["tasks"]["validate_global"]["accuracy"],
                "validated_examples": int(s["tasks"]["validate_global"]["examples"]),
                "epsilon": spent[s["model_round"]],
                "delta": args.delta,
            }
            for s in summaries
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collaborators", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bastion-dp-mnist-") as folder:
        result = run(args, Path(folder))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model after round':>18} {'accuracy':>9} {'epsilon':>9}")
    for row in result["models"]:
        print(f"{row['after_round']:>18} {row['accuracy']:>9.4f} {row['epsilon']:>9.3f}")
    print(f"wrote {args.output} ({result['seconds']}s)")


if __name__ == "__main__":
    main()
