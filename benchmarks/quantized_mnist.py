"""Accuracy and bytes per round of quantized messages on MNIST, against the unquantized run.

Runs the in-process simulation (the real aggregator and collaborator loop) of the
``torch_cnn_mnist`` template once per setting, with the same seeds, sites and rounds:
no compression; 8-bit (``blockwise8`` both ways); 4-bit NF4 and 4-bit uniform
(``nf4`` / ``blockwise4`` both ways), each with error feedback on the sites. The
accuracy is the final evaluation's (the exact global model, validated by every site on
its held-out split); bytes per round are the tensors' wire bytes, up (all sites' updates)
and down (the model to every site), from encoding the model with the setting's codecs
(their sizes depend only on the tensors' shapes). Writes
``benchmarks/results/quantized_mnist.json`` and prints a table.

    .venv/bin/python benchmarks/quantized_mnist.py --rounds 5 --collaborators 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bastion.compression.downstream import Downlink
from bastion.compression.wire import UpdateEncoder
from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.inprocess import simulate_in_process
from bastion.spec.compression import CompressionSpec
from bastion.storage.checkpoints import load_checkpoint
from bastion.tensors import total_bytes
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace

RESULTS = Path(__file__).parent / "results" / "quantized_mnist.json"

SETTINGS: dict[str, dict[str, Any] | None] = {
    "unquantized": None,
    "8-bit (blockwise8)": {
        "stages": [{"stage": "blockwise8"}],
        "downstream": {"stage": "blockwise8"},
    },
    "4-bit (nf4)": {"stages": [{"stage": "nf4"}], "downstream": {"stage": "nf4"}},
    "4-bit (blockwise4)": {
        "stages": [{"stage": "blockwise4"}],
        "downstream": {"stage": "blockwise4"},
    },
}


def _bytes_per_round(
    compression: dict[str, Any] | None, model: dict, sites: int
) -> tuple[int, int]:
    """(up, down) wire bytes of one training round with ``sites`` sites."""
    if compression is None:
        return sites * total_bytes(model), sites * total_bytes(model)
    spec = CompressionSpec.model_validate(compression)
    up = UpdateEncoder(spec).encode(model, {}, round_number=1)  # sizes depend on shapes only
    down = Downlink.for_spec(spec).payload(model, 1, ["train"])
    return sites * total_bytes(up), sites * total_bytes(down)


def run_one(
    args: argparse.Namespace, root: Path, compression: dict[str, Any] | None
) -> dict[str, Any]:
    workspace = create_workspace(
        root / "ws", "torch_cnn_mnist", collaborators=args.collaborators, rounds=args.rounds
    )
    plan_path = workspace / "plan.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    plan["tasks"] = [
        {"name": "validate_global", "kind": "validate"},
        {
            "name": "train",
            "kind": "train",
            "args": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_batches": args.max_batches},
        },
    ]
    if compression is not None:
        plan["compression"] = compression
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    model, _ = load_checkpoint(initialize_plan(workspace).checkpoint)
    up, down = _bytes_per_round(compression, model, args.collaborators)
    started = time.monotonic()
    simulate_in_process(workspace)
    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    final = next(s for s in summaries if s["final_evaluation"])
    return {
        "compression": compression,
        "final_accuracy": final["tasks"]["validate_global"]["accuracy"],
        "accuracy_per_round": [s["tasks"]["validate_global"]["accuracy"] for s in summaries],
        "bytes_up_per_round": up,
        "bytes_down_per_round": down,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--collaborators", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=200)
    parser.add_argument("--only", nargs="*", default=None, help="settings to run (names)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("only", "output")},
        "runs": {},
    }
    for name, compression in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results["runs"][name] = run_one(args, Path(tmp), compression)
        print(name, results["runs"][name], flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    base = results["runs"].get("unquantized", {}).get("final_accuracy")
    print(
        f"\n{'setting':<20} {'accuracy':>9} {'vs plain':>9} {'up B/round':>11} {'down B/round':>12}"
    )
    for name, run in results["runs"].items():
        gap = "" if base is None else f"{100 * (run['final_accuracy'] - base):+.2f}pt"
        print(
            f"{name:<20} {run['final_accuracy']:>9.4f} {gap:>9} "
            f"{run['bytes_up_per_round']:>11,} {run['bytes_down_per_round']:>12,}"
        )


if __name__ == "__main__":
    main()
