"""Asynchronous (FedBuff) against synchronous rounds with one site ten times slower.

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation": the
synchronous federation waits for its slowest site every round; the buffered one publishes
a new version as soon as K updates are in, weighting late ones by their staleness.

Both runs use the same workspace (softmax regression on scikit-learn's digits, IID
shards), the real round engine and the real collaborator loop: each site is a thread
talking to the aggregator through the in-process port (no network, so the figures are
the protocols' own). Local training sleeps ``--seconds`` (the slow site ten times as
long) on top of its few milliseconds of compute. Every published model is timed when it
closes and evaluated afterwards on the union of the sites' validation splits; the table
gives the synchronous run's final accuracy, and the wall time each run needs to reach it.

    .venv/bin/python benchmarks/fedbuff.py
    .venv/bin/python benchmarks/fedbuff.py --sites 4 --slow-factor 10 --sync-rounds 12
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.events import RoundClosed, RoundEvent, RoundObserver
from bastion.aggregator.service import build_aggregator
from bastion.collaborator.factory import build_collaborator
from bastion.data.types import DataShard
from bastion.metrics.log import read_metrics
from bastion.plan import load_plan
from bastion.runners.base import TaskResult, TaskRunner
from bastion.sim.inprocess import InProcessClient
from bastion.sim.shards import ShardIndex, load_plan_dataset
from bastion.tensors import Weights
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.tasks import build_runner
from bastion.workspace.templates import create_workspace

RESULTS = Path(__file__).parent / "results" / "fedbuff.json"
TRAIN_ARGS = {"epochs": 1, "batch_size": 32, "lr": 0.05}


class Paced:
    """A runner whose training takes ``seconds`` longer (a slower site)."""

    def __init__(self, inner: TaskRunner, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def get_weights(self) -> Weights:
        return self.inner.get_weights()

    def set_weights(self, weights: Weights) -> None:
        self.inner.set_weights(weights)

    def train(self, data: DataShard, **args: Any) -> TaskResult:
        time.sleep(self.seconds)
        return self.inner.train(data, **args)

    def validate(self, data: DataShard, **args: Any) -> TaskResult:
        return self.inner.validate(data, **args)


@dataclass
class Versions(RoundObserver):
    """When each global model was published, and the model itself (for evaluation later)."""

    started: float = field(default_factory=time.monotonic)
    aggregator: Aggregator | None = None
    published: list[tuple[int, float, Weights]] = field(default_factory=list)

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, RoundClosed) and not event.progress.final_evaluation:
            assert self.aggregator is not None
            seconds = time.monotonic() - self.started
            self.published.append((event.round_completed, seconds, dict(self.aggregator.model)))


def _workspace(root: Path, sites: int, rounds: int, asynchronous: dict[str, Any] | None) -> Path:
    workspace = create_workspace(root, "numpy_logreg_digits", collaborators=sites, rounds=rounds)
    path = workspace / "plan.yaml"
    plan = yaml.safe_load(path.read_text())
    plan["tasks"] = [{"name": "train", "kind": "train", "args": TRAIN_ARGS}]
    plan["timeouts"] = {"round_seconds": 600, "poll_seconds": 0.02}
    plan["best_model"] = {"metric": "accuracy", "mode": "max"}
    if asynchronous is not None:
        plan["asynchronous"] = asynchronous
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    initialize_plan(workspace)
    return workspace


def run(workspace: Path, seconds: float, slow_factor: float) -> dict[str, Any]:
    """Run one federation to the end with real concurrency; time and evaluate its versions."""
    plan = load_plan(workspace)
    names = plan.collaborator_names()
    shards = ShardIndex(plan, load_plan_dataset(plan, workspace))
    versions = Versions()
    aggregator = build_aggregator(plan, workspace, observers=[versions])
    versions.aggregator = aggregator
    versions.started = time.monotonic()

    def site(name: str) -> None:
        pace = seconds * (slow_factor if name == names[-1] else 1.0)
        runner = Paced(build_runner(plan, workspace), pace)
        build_collaborator(
            plan, name, InProcessClient(aggregator, name), runner, shards.shard(name)
        ).run()

    threads = [threading.Thread(target=site, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - versions.started

    evaluator = build_runner(plan, workspace)
    curve = []
    for number, at, model in versions.published:
        evaluator.set_weights(model)
        results = [evaluator.validate(shards.shard(n)) for n in names]
        total = sum(r.example_count for r in results)
        accuracy = sum(r.metrics["accuracy"] * r.example_count for r in results) / total
        curve.append({"version": number, "seconds": round(at, 3), "accuracy": round(accuracy, 4)})
    buffered = [
        r
        for r in read_metrics(workspace / plan.output.logs / "metrics.jsonl")
        if r["event"] == "buffered_version"
    ]
    staleness = [tau for r in buffered for tau in r["staleness"]]
    return {
        "wall_seconds": round(wall, 3),
        "updates_folded": len(staleness),
        "stale_updates_folded": sum(tau > 0 for tau in staleness),
        "max_staleness_folded": max(staleness, default=0),
        "versions": curve,
    }


def time_to(curve: list[dict[str, float]], target: float) -> float | None:
    """The first time a published model reached ``target`` accuracy."""
    return next((p["seconds"] for p in curve if p["accuracy"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.2, help="a fast site's training time")
    parser.add_argument("--slow-factor", type=float, default=10.0)
    parser.add_argument("--sync-rounds", type=int, default=12)
    parser.add_argument("--async-versions", type=int, default=60)
    parser.add_argument("--buffer-size", type=int, default=3)
    parser.add_argument("--max-staleness", type=int, default=20)
    args = parser.parse_args()

    asynchronous = {
        "buffer_size": args.buffer_size,
        "max_staleness": args.max_staleness,
        "staleness": {"function": "polynomial", "a": 0.5},
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sync = run(
            _workspace(root / "sync", args.sites, args.sync_rounds, None),
            args.seconds,
            args.slow_factor,
        )
        buffered = run(
            _workspace(root / "async", args.sites, args.async_versions, asynchronous),
            args.seconds,
            args.slow_factor,
        )
    target = sync["versions"][-1]["accuracy"]
    sync_time = time_to(sync["versions"], target)
    async_time = time_to(buffered["versions"], target)
    figures = {
        "setup": {
            "sites": args.sites,
            "fast_site_train_seconds": args.seconds,
            "slow_factor": args.slow_factor,
            "sync_rounds": args.sync_rounds,
            "async_versions": args.async_versions,
            "asynchronous": asynchronous,
            "train_args": TRAIN_ARGS,
            "machine": platform.platform(),
        },
        "target_accuracy": target,
        "sync": {
            **sync,
            "final_accuracy": target,
            "seconds_to_target": sync_time,
        },
        "async": {
            **buffered,
            "final_accuracy": buffered["versions"][-1]["accuracy"],
            "best_accuracy": max(p["accuracy"] for p in buffered["versions"]),
            "seconds_to_target": async_time,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"target: the synchronous run's final accuracy {target:.4f}")
    print(f"{'run':<8} {'models':>6} {'final acc':>9} {'to target s':>11} {'wall s':>8}")
    for label, key, count in (
        ("sync", "sync", args.sync_rounds),
        ("async", "async", args.async_versions),
    ):
        row = figures[key]
        reach = row["seconds_to_target"]
        shown = f"{reach:.2f}" if reach is not None else "never"
        print(
            f"{label:<8} {count:>6} {row['final_accuracy']:>9.4f} {shown:>11} "
            f"{row['wall_seconds']:>8.2f}"
        )
    print(
        f"async: {buffered['updates_folded']} updates folded, "
        f"{buffered['stale_updates_folded']} of them stale (τ up to "
        f"{buffered['max_staleness_folded']})"
    )
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
