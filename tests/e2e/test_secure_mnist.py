"""Secure aggregation on MNIST over real processes: the aggregator and 3 collaborators, mutual TLS.

Every training round's updates reach the aggregator only as one masked sum, unmasked when
the round's session closes; the tests check that each session succeeded with all three
sites and that the global model learned, and print the accuracy per round. The second
test composes it with central DP-FedAvg: sites clip their own deltas under the masks, the
aggregator noises the unmasked sum, and the accountant's epsilon lands in every round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dp_accounting
import pytest
from dp_accounting import rdp
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation

SITES = ["site-1", "site-2", "site-3"]


TRAIN = {
    "name": "train",
    "kind": "train",
    "args": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_batches": 100},
}


def _run(tmp_path: Path, changes: dict[str, Any]) -> tuple[list[dict], list[float]]:
    """Run a 3-round secure federation; its metrics records and global accuracy per round."""
    workspace = make_workspace(
        tmp_path,
        template="torch_cnn_mnist",
        collaborators=len(SITES),
        rounds=3,
        plan_changes={
            "secure_aggregation": {"stage_seconds": 180},
            "timeouts": {"poll_seconds": 0.1},
            "tasks": [{"name": "validate_global", "kind": "validate"}, TRAIN],
            **changes,
        },
    )
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=420)
        logs = {site: federation.log_text(site) for site in SITES}
    assert codes == {"aggregator": 0, **dict.fromkeys(SITES, 0)}, federation.log_text("aggregator")

    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    sessions = [r for r in records if r["event"] == "secure_aggregation"]
    assert [s["round"] for s in sessions] == [1, 2, 3]
    for session in sessions:
        assert session["outcome"] == "ok" and session["contributors"] == SITES
    # No collaborator ever handed in a training result on its own.
    assert not [
        r for r in records if r["event"] == "task" and r["task"] == "train" and r["examples"]
    ]
    for site in SITES:
        assert "handed in through secure aggregation" in logs[site]
    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in round_summaries(records)]
    return records, accuracy


@pytest.mark.slow
def test_secure_aggregation_on_mnist_over_processes(tmp_path: Path) -> None:
    records, accuracy = _run(tmp_path, {})
    sessions = [r for r in records if r["event"] == "secure_aggregation"]
    assert accuracy[-1] > accuracy[0] + 0.5, accuracy
    overhead = [s["client_seconds_mean"] for s in sessions]
    print(
        f"secure aggregation MNIST over processes: accuracy per round "
        f"{[round(a, 4) for a in accuracy]}, client secure aggregation seconds per round "
        f"{[round(o, 3) for o in overhead]}, bits {sessions[0]['bits']}, "
        f"error bound of the average {sessions[0]['error_bound_average']:.2e}"
    )


Z, CLIP, DELTA = 0.05, 1.0, 1e-5


def _epsilon(rounds: int) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(Z), rounds))
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.slow
def test_secure_aggregation_with_central_dp_on_mnist_over_processes(tmp_path: Path) -> None:
    records, accuracy = _run(
        tmp_path,
        {
            "aggregation": {
                "strategy": "dp_fedavg",
                "args": {"noise_multiplier": Z, "clip_norm": CLIP},
            },
            "differential_privacy": {"delta": DELTA},
        },
    )
    training = [s for s in round_summaries(records) if not s["final_evaluation"]]
    assert [s["round"] for s in training] == [1, 2, 3]
    for summary in training:
        assert summary["privacy"]["epsilon"] == pytest.approx(_epsilon(summary["round"]), rel=1e-12)
    print(
        f"secure aggregation + central DP MNIST over processes: accuracy per round "
        f"{[round(a, 4) for a in accuracy]}, epsilon {training[-1]['privacy']['epsilon']:.4g} "
        f"at delta={DELTA:g} (z={Z}, S={CLIP}, 3 sites)"
    )
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy  # clipped and noised, and still learning
