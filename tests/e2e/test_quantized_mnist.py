"""Quantized messages on MNIST over real processes: the aggregator and 3 collaborators, mTLS.

Sites send 4-bit NF4 deltas with error feedback and train from the 8-bit model the
aggregator codes once per round; the final evaluation gets the exact model. The test
checks that every update was accepted and decoded, and that the model learned; the
accuracy against unquantized runs is measured by ``benchmarks/quantized_mnist.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation

SITES = ["site-1", "site-2", "site-3"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # four processes each parse MNIST; slow on a loaded machine
def test_quantized_messages_on_mnist_over_processes(tmp_path: Path) -> None:
    workspace = make_workspace(
        tmp_path,
        template="torch_cnn_mnist",
        collaborators=len(SITES),
        rounds=2,
        plan_changes={
            "timeouts": {"poll_seconds": 0.1},
            "compression": {
                "stages": [{"stage": "nf4", "block_size": 64}],
                "error_feedback": True,
                "downstream": {"stage": "blockwise8"},
            },
            "tasks": [
                {"name": "validate_global", "kind": "validate"},
                {
                    "name": "train",
                    "kind": "train",
                    "args": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_batches": 40},
                },
            ],
        },
    )
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=540)
    assert codes == {"aggregator": 0, **dict.fromkeys(SITES, 0)}, federation.log_text("aggregator")

    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    assert not [r for r in records if r["event"] == "rejected"]
    rounds = [r for r in records if r["event"] == "round" and r["round"] in (1, 2)]
    assert [r["accepted"] for r in rounds] == [3, 3]
    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in round_summaries(records)]
    print(f"quantized messages (nf4 up, blockwise8 down) over processes: accuracy {accuracy}")
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy  # from chance to a trained model
