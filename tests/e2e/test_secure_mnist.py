"""Secure aggregation on MNIST over real processes: the aggregator and 3 collaborators, mutual TLS.

Every training round's updates reach the aggregator only as one masked sum, unmasked when
the round's session closes; the test checks that each session succeeded with all three
sites and that the global model learned, and prints the accuracy per round.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation

SITES = ["site-1", "site-2", "site-3"]


@pytest.mark.slow
def test_secure_aggregation_on_mnist_over_processes(tmp_path: Path) -> None:
    workspace = make_workspace(
        tmp_path,
        template="torch_cnn_mnist",
        collaborators=len(SITES),
        rounds=3,
        plan_changes={
            "secure_aggregation": {"stage_seconds": 180},
            "timeouts": {"poll_seconds": 0.1},
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
        assert "handed in through secure aggregation" in federation.log_text(site)

    summaries = round_summaries(records)
    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in summaries]
    assert accuracy[-1] > accuracy[0] + 0.5, accuracy
    overhead = [s["client_seconds_mean"] for s in sessions]
    print(
        f"secure aggregation MNIST over processes: accuracy per round "
        f"{[round(a, 4) for a in accuracy]}, client secure aggregation seconds per round "
        f"{[round(o, 3) for o in overhead]}, bits {sessions[0]['bits']}, "
        f"error bound of the average {sessions[0]['error_bound_average']:.2e}"
    )
