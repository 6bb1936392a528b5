"""Byzantine robustness on MNIST: 10 collaborators, 2 of them send sign-flipped ×10 updates.

Runs the real aggregator, strategies and collaborator loop in process. The attackers are
collaborators whose runner trains honestly and then returns global − 10·(local − global).
FedAvg follows them off a cliff; median, trimmed mean and Krum stay near the clean run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.simulation import plain_workspace

from bastion.data.types import DataShard
from bastion.metrics.log import read_metrics, round_summaries
from bastion.runners.base import TaskResult, TaskRunner
from bastion.sim.inprocess import InProcessFederation

COLLABORATORS = 10
ATTACKERS = ("site-3", "site-8")
SCALE = 10.0
ROUNDS = 12

# Softmax regression (the NumPy template's model) on the first 10,000 training and
# 2,000 test images of MNIST.
MNIST_TASK = """
from bastion.data import load_dataset
from bastion.data.types import Dataset
from bastion.runners.numpy import NumpyRunner
from task import SoftmaxRegression


def load(train=10000, test=2000):
    full = load_dataset("mnist", flatten=True)
    return Dataset("mnist-subset", full.x_train[:train], full.y_train[:train],
                   full.x_test[:test], full.y_test[:test], full.num_classes)


def build_runner(seed=0):
    return NumpyRunner(SoftmaxRegression(num_features=784, seed=seed))
"""


class SignFlipRunner:
    """Trains honestly, then reports global − scale·(local − global): the flipped, scaled update."""

    def __init__(self, inner: TaskRunner, scale: float) -> None:
        self.inner, self.scale = inner, scale

    def get_weights(self) -> dict[str, Any]:
        return self.inner.get_weights()

    def set_weights(self, weights: dict[str, Any]) -> None:
        self.inner.set_weights(weights)

    def validate(self, data: DataShard, **args: Any) -> TaskResult:
        return self.inner.validate(data, **args)

    def train(self, data: DataShard, **args: Any) -> TaskResult:
        start = self.inner.get_weights()
        result = self.inner.train(data, **args)
        local = self.inner.get_weights()
        self.inner.set_weights(
            {
                n: (start[n] - self.scale * (local[n] - start[n])).astype(start[n].dtype)
                for n in start
            }
        )
        return result


class AttackedFederation(InProcessFederation):
    """The attackers' collaborators run the shared runner wrapped in ``SignFlipRunner``."""

    def runner(self, name: str) -> TaskRunner:
        honest = super().runner(name)
        return SignFlipRunner(honest, SCALE) if name in ATTACKERS else honest


def final_accuracy(root: Path, folder: str, strategy: str, args: dict, attacked: bool) -> float:
    workspace = plain_workspace(
        root,
        collaborators=COLLABORATORS,
        rounds=ROUNDS,
        files={"mnist_task.py": MNIST_TASK},
        plan_changes={
            "data": {"loader": "mnist_task:load", "args": {}},
            "task_runner": {"path": "mnist_task:build_runner", "args": {"seed": 0}},
            "tasks": [
                {
                    "name": "train",
                    "kind": "train",
                    "args": {"epochs": 1, "batch_size": 32, "lr": 0.05},
                },
                {"name": "validate_global", "kind": "validate"},
            ],
            "aggregation": {"strategy": strategy, "args": args},
        },
        folder=folder,
    )
    federation = (AttackedFederation if attacked else InProcessFederation)(workspace)
    federation.run()
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    final = round_summaries(records)[-1]
    assert final["final_evaluation"] and final["tasks"]["validate_global"]["examples"] == 2000
    if attacked:  # the attackers' updates were accepted and aggregated, not rejected
        trained = {
            r["collaborator"] for r in records if r["event"] == "task" and r["task"] == "train"
        }
        assert set(ATTACKERS) <= trained
        assert not [r for r in records if r["event"] == "rejected"]
    return float(final["tasks"]["validate_global"]["accuracy"])


@pytest.mark.slow
def test_robust_rules_hold_up_where_fedavg_collapses(tmp_path: Path) -> None:
    clean = final_accuracy(tmp_path, "clean", "fedavg", {}, attacked=False)
    attacked = {
        "fedavg": final_accuracy(tmp_path, "fedavg", "fedavg", {}, attacked=True),
        "median": final_accuracy(tmp_path, "median", "median", {}, attacked=True),
        "trimmed_mean (β=0.2)": final_accuracy(
            tmp_path, "trimmed", "trimmed_mean", {"beta": 0.2}, attacked=True
        ),
        "krum (f=2)": final_accuracy(tmp_path, "krum", "krum", {"f": 2}, attacked=True),
    }
    print(
        f"\nMNIST, {COLLABORATORS} collaborators, {len(ATTACKERS)} sending −{SCALE:g}× updates, {ROUNDS} rounds"
    )
    print(f"  clean FedAvg: {clean:.2%}")
    for name, accuracy in attacked.items():
        print(f"  attacked {name}: {accuracy:.2%} ({(accuracy - clean) * 100:+.1f} points)")

    assert clean > 0.8
    assert attacked["fedavg"] < clean - 0.3, "FedAvg should not survive the attack"
    for name in ("median", "trimmed_mean (β=0.2)", "krum (f=2)"):
        assert abs(attacked[name] - clean) <= 0.03, name
