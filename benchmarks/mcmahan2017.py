"""Reproduction of McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data" (FedAvg), MNIST: rounds to reach a target test accuracy.

100 clients; IID (600 examples each) or pathological non-IID (the training set sorted by
label, cut into 200 shards of 300, two shards per client); C = 0.1 (10 clients a round);
the 2NN (target 97%) and the CNN (target 99%); E local epochs of SGD with batch size B.
Each row is a real Bastion workspace run by the in-process simulation: the aggregator with
the fedavg strategy, seeded participation sampling, the ``iid``/``shards`` partitioners and
the collaborator loop with one shared PyTorch runner. After every round the global model
is evaluated once on the 10,000 MNIST test images (outside the federation).

    nice -n 10 .venv/bin/python benchmarks/mcmahan2017.py --rows 2nn-iid-e1,cnn-iid-e1

Rows run one after another; each finished row is merged into benchmarks/results/
mcmahan2017.json, and the table (mcmahan2017.md) and plot (mcmahan2017.png) are rebuilt
from every row recorded so far, so rows can be run separately (e.g. two processes side by
side, one per core). A row stops at its target or at its round cap.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bastion.sim.inprocess import InProcessFederation
from bastion.workspace.code import import_callable
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODELS_FILE = HERE / "mcmahan_models.py"
CLIENTS = 100
FRACTION = 0.1
BATCH = 10
TARGETS = {"2nn": 0.97, "cnn": 0.99}


@dataclass(frozen=True)
class Row:
    """One setting of Table 2, with the learning rate and round cap this run uses."""

    key: str
    model: str
    partition: str  # "iid" or "shards"
    epochs: int
    lr: float
    cap: int
    paper: str  # the paper's rounds to target for this setting, with where it comes from


# Learning rates: one value per row from the paper's tuned range for B = 10 (it tuned η per
# setting; we do not). At the CPU time per round measured here the caps bound the whole run
# at about 90 minutes of one core; stopping at the targets, it took 51.
ROWS = {
    row.key: row
    for row in [
        Row("2nn-iid-e1", "2nn", "iid", 1, 0.1, 300, "92 (Table 2); 87 (Table 1, C=0.1)"),
        Row("2nn-iid-e5", "2nn", "iid", 5, 0.1, 150, "not in Table 2 (E=10: 34)"),
        Row("2nn-noniid-e1", "2nn", "shards", 1, 0.1, 600, "831 (Table 2); 664 (Table 1, C=0.1)"),
        Row("2nn-noniid-e5", "2nn", "shards", 5, 0.1, 250, "not in Table 2 (E=10: 497)"),
        Row("cnn-iid-e1", "cnn", "iid", 1, 0.1, 60, "34 (Table 2)"),
        Row("cnn-iid-e5", "cnn", "iid", 5, 0.1, 50, "20 (Table 2)"),
    ]
}


class TestSetAccuracy:
    """The global model's accuracy on the whole test split, with a model of its own."""

    def __init__(self, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> None:
        self.model = model.eval()
        self.channels_last = x.ndim == 4  # about 1.7x faster convolutions on this CPU
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.ascontiguousarray(y)).long()

    @torch.inference_mode()
    def __call__(self, weights: dict[str, np.ndarray]) -> float:
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        correct = 0
        for start in range(0, len(self.y), 1000):
            x = self.x[start : start + 1000]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            correct += int((self.model(x).argmax(dim=1) == self.y[start : start + 1000]).sum())
        return correct / len(self.y)


def make_workspace(row: Row, root: Path, cap: int, threads: int, seed: int) -> Path:
    """A workspace for ``row``: 100 collaborators, C = 0.1, FedAvg, E epochs of B = 10."""
    workspace = create_workspace(
        root / row.key, "torch_cnn_mnist", collaborators=CLIENTS, rounds=cap
    )
    shutil.copy(MODELS_FILE, workspace / MODELS_FILE.name)
    plan_path = workspace / "plan.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    plan["tasks"] = [
        {"name": "train", "kind": "train", "args": {"epochs": row.epochs, "batch_size": BATCH}}
    ]
    plan["task_runner"] = {
        "path": "mcmahan_models:build_runner",
        "args": {"model": row.model, "lr": row.lr, "seed": seed, "threads": threads},
    }
    partition: dict[str, Any] = {"method": row.partition, "seed": seed}
    if row.partition == "shards":
        partition["shards_per_collaborator"] = 2  # 200 shards of 300
    plan["data"] = {"loader": "mnist", "partition": partition}
    plan["participation"] = {"fraction": FRACTION, "min_collaborators": 1, "seed": seed}
    plan["aggregation"] = {"strategy": "fedavg"}
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    initialize_plan(workspace)
    return workspace


def run_row(row: Row, cap: int, threads: int, seed: int, stop_at_target: bool) -> dict[str, Any]:
    target = TARGETS[row.model]
    history: list[float] = []
    reached: list[int] = []
    evaluation_seconds = 0.0
    evaluators: list[TestSetAccuracy] = []

    def on_round(number: int, federation: InProcessFederation) -> None:
        nonlocal evaluation_seconds
        before = time.monotonic()
        if not evaluators:  # the federation's own copy of MNIST, loaded once
            data = federation.shards.dataset
            build_model = import_callable(
                "mcmahan_models:build_model", federation.workspace, "benchmark"
            )
            evaluators.append(
                TestSetAccuracy(build_model(row.model, seed), data.x_test, data.y_test)
            )
        history.append(evaluators[0](federation.aggregator.model))
        evaluation_seconds += time.monotonic() - before
        if history[-1] >= target and not reached:
            reached.append(number)
        if number % 10 == 0 or reached == [number] or number == cap:
            print(
                f"  {row.key} round {number}: accuracy {history[-1]:.4f} (best {max(history):.4f}), "
                f"{(time.monotonic() - started) / number:.1f}s/round",
                flush=True,
            )
        if reached and stop_at_target:
            federation.stop()

    with tempfile.TemporaryDirectory(prefix="mcmahan2017-") as root:
        workspace = make_workspace(row, Path(root), cap, threads, seed)
        started, cpu_started = time.monotonic(), time.process_time()
        federation = InProcessFederation(workspace, on_round=on_round)
        sizes = sorted(
            {len(federation.shards.train_indices(n)) for n in federation.plan.collaborator_names()}
        )
        print(
            f"{row.key}: {row.model}, {row.partition}, E={row.epochs}, B={BATCH}, lr={row.lr}, "
            f"cap {cap} rounds; examples per client {sizes[0]}..{sizes[-1]}",
            flush=True,
        )
        federation.run()  # on_round stops it at the target
        seconds = time.monotonic() - started
        cpu_seconds = time.process_time() - cpu_started
    best = max(history)
    return {
        **asdict(row),
        "cap": cap,
        "batch_size": BATCH,
        "fraction": FRACTION,
        "clients": CLIENTS,
        "target": target,
        "rounds_to_target": reached[0] if reached else None,
        "best_accuracy": best,
        "best_round": history.index(best) + 1,
        "rounds_run": len(history),
        "seconds": round(seconds, 1),
        "seconds_per_round": round(seconds / len(history), 2),
        "cpu_seconds": round(cpu_seconds, 1),
        "cpu_seconds_per_round": round(cpu_seconds / len(history), 2),
        "evaluation_seconds_per_round": round(evaluation_seconds / len(history), 2),
        "threads": threads,
        "seed": seed,
        "accuracy": [round(a, 4) for a in history],
    }


def outcome(result: dict[str, Any]) -> str:
    if result["rounds_to_target"] is not None:
        return str(result["rounds_to_target"])
    return f"not reached in {result['rounds_run']} rounds (best {result['best_accuracy']:.2%})"


def write_results(results: dict[str, dict[str, Any]]) -> str:
    """Write JSON, the markdown table and the plot from every recorded row; return the table."""
    RESULTS.mkdir(exist_ok=True)
    ordered = [results[k] for k in ROWS if k in results]
    (RESULTS / "mcmahan2017.json").write_text(
        json.dumps(
            {"python": sys.version.split()[0], "torch": torch.__version__, "rows": ordered},
            indent=2,
        )
        + "\n"
    )
    lines = [
        "| model | data | E | B | lr | target | rounds to target (Bastion) | paper | CPU s/round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ordered:
        data = "IID" if r["partition"] == "iid" else "non-IID"
        lines.append(
            f"| {r['model'].upper()} | {data} | {r['epochs']} | {r['batch_size']} | {r['lr']} "
            f"| {r['target']:.0%} | {outcome(r)} | {ROWS[r['key']].paper} "
            f"| {r['cpu_seconds_per_round']} |"
        )
    table = "\n".join(lines)
    (RESULTS / "mcmahan2017.md").write_text(
        "# McMahan et al. 2017 on Bastion: rounds to target test accuracy on MNIST\n\n"
        f"{CLIENTS} clients, C = {FRACTION}, FedAvg, written by `benchmarks/mcmahan2017.py` "
        "(plot: `mcmahan2017.png`, figures and accuracy curves: `mcmahan2017.json`).\n\n"
        + table
        + "\n\n"
        + NOTES
    )
    plot(ordered)
    return table


NOTES = """\
- Rounds to target: the first round whose global model reaches the target accuracy on the
  10,000 MNIST test images; a row stops there or at its round cap.
- Learning rate: plain SGD at lr 0.1 on every row, the top of the 0.05-0.1 range taken
  for B = 10 (a 40-round check on 2NN non-IID: best accuracy 89.9% at lr 0.1, 87.1% at
  0.05). The paper tuned lr for each setting over a grid; we did not, so ours are one
  setting each, not the best of a search.
- Paper column: Table 2 of McMahan et al. (rounds of FedAvg to the target, C = 0.1);
  its 2NN rows have E = 1, 10, 20 only, so E = 5 has no paper figure and the E = 10, B = 10
  figure is shown instead. Table 1 of the paper reports 87 (IID) and 664 (non-IID)
  rounds for the same 2NN setting (C = 0.1, E = 1, B = 10).
- Non-IID accuracy swings by one to two points from round to round (see the plot), so
  its first crossing of the target comes well before the model stays above it.
- CPU s/round: process CPU time per round (one torch thread), including the evaluation
  on the test set; wall-clock time depends on what else runs on the machine. Seed 0
  throughout (initial model, partition, sampling, shuffling): a rerun repeats a row.
"""


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, model in zip(axes, ("2nn", "cnn"), strict=True):
        for r in (r for r in rows if r["model"] == model):
            label = f"{'IID' if r['partition'] == 'iid' else 'non-IID'}, E={r['epochs']}"
            axis.plot(range(1, len(r["accuracy"]) + 1), r["accuracy"], label=label)
        axis.axhline(TARGETS[model], color="gray", linestyle="--", linewidth=1)
        axis.set_title(f"MNIST {model.upper()}, B={BATCH}, C={FRACTION}")
        axis.set_xlabel("communication rounds")
        axis.set_ylabel("test accuracy")
        axis.set_ylim(TARGETS[model] - 0.07, 1.0)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(RESULTS / "mcmahan2017.png", dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated: {', '.join(ROWS)}"
    )
    parser.add_argument(
        "--cap", type=int, help="round cap for every selected row (default: per row)"
    )
    parser.add_argument(
        "--lr", type=float, help="learning rate for every selected row (default: per row)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-stop", action="store_true", help="run to the cap past the target")
    parser.add_argument(
        "--dry-run", action="store_true", help="print results, keep the files as they are"
    )
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the table and plot from the JSON"
    )
    options = parser.parse_args()
    keys = [k.strip() for k in options.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    torch.set_num_threads(options.threads)
    path = RESULTS / "mcmahan2017.json"
    if options.report:
        print(write_results({r["key"]: r for r in json.loads(path.read_text())["rows"]}))
        return
    for key in keys:
        row = ROWS[key] if options.lr is None else replace(ROWS[key], lr=options.lr)
        result = run_row(
            row, options.cap or row.cap, options.threads, options.seed, not options.no_stop
        )
        print(f"{key}: {outcome(result)} ({result['seconds']:.0f}s)", flush=True)
        if options.dry_run:
            continue
        # Merge under a lock: another process may be finishing a row at the same time.
        RESULTS.mkdir(exist_ok=True)
        with (Path(tempfile.gettempdir()) / "bastion-mcmahan2017.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            recorded = json.loads(path.read_text())["rows"] if path.exists() else []
            merged = {r["key"]: r for r in recorded}
            merged[key] = result
            table = write_results(merged)
        print(table, flush=True)


if __name__ == "__main__":
    main()
