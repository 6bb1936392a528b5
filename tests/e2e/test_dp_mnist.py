"""Central DP on MNIST over real processes: the aggregator and 3 collaborators, mutual TLS.

Collaborators send their deltas float16-compressed; the aggregator decodes them first.

DP-FedAvg noises the average of clipped deltas; the accountant's epsilon lands in the
metrics log every round, and the plan's budget stops training after round 3 of 5 with
a clean final evaluation. Three sites give user-level DP little room (the noise is
z * S / 3 per coordinate), so the noise multiplier is small and the epsilon large:
the test checks the mechanism and the accounting, and prints the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint

Z, CLIP, DELTA = 0.05, 1.0, 1e-5


def _epsilon(rounds: int) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(Z), rounds))
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.slow
def test_central_dp_on_mnist_over_processes_stops_at_the_budget(tmp_path: Path) -> None:
    budget = (_epsilon(3) + _epsilon(4)) / 2  # rounds 1-3 fit, round 4 would not
    workspace = make_workspace(
        tmp_path,
        template="torch_cnn_mnist",
        collaborators=3,
        rounds=5,
        plan_changes={
            "aggregation": {
                "strategy": "dp_fedavg",
                "args": {"noise_multiplier": Z, "clip_norm": CLIP},
            },
            "differential_privacy": {"delta": DELTA, "epsilon_budget": budget},
            # Deltas travel as float16 over gRPC; the aggregator decodes before clipping.
            "compression": {"stages": [{"stage": "float16"}]},
            "tasks": [
                {"name": "validate_global", "kind": "validate"},
                {
                    "name": "train",
                    "kind": "train",
                    "args": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_batches": 100},
                },
            ],
        },
    )
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=420)
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0, "site-3": 0}, federation.log_text(
        "aggregator"
    )

    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    summaries = round_summaries(records)
    training = [s for s in summaries if not s["final_evaluation"]]
    assert [s["round"] for s in training] == [1, 2, 3]
    for summary in training:
        assert summary["accepted"] == 3 and not summary["rejected"]
        assert summary["privacy"]["epsilon"] == pytest.approx(_epsilon(summary["round"]), rel=1e-12)
    final = summaries[-1]
    assert final["final_evaluation"] and final["model_round"] == 3
    assert "round 4 would bring epsilon" in records[-1]["stopped"]
    _, metadata = load_checkpoint(workspace / "save" / "last.safetensors")
    assert json.loads(metadata["bastion.state"])["round_completed"] == 3

    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in summaries]
    print(
        f"central DP MNIST over processes: accuracy per round {[round(a, 4) for a in accuracy]}, "
        f"epsilon {training[-1]['privacy']['epsilon']:.4g} at delta={DELTA:g} "
        f"(z={Z}, S={CLIP}, 3 sites)"
    )
    assert accuracy[-1] > accuracy[0] + 0.3  # noisy, and still learning
