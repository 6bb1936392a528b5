"""The in-process simulation runs secure aggregation through the same classes as processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.simulation import plain_workspace

from bastion.metrics.log import read_metrics
from bastion.sim.inprocess import InProcessFederation, simulate_in_process
from bastion.storage.checkpoints import load_checkpoint
from bastion.tensors import Weights


def _first_round_model(workspace: Path) -> Weights:
    models: dict[int, Weights] = {}

    def on_round(number: int, federation: InProcessFederation) -> None:
        models[number] = {k: v.copy() for k, v in federation.aggregator.model.items()}

    simulate_in_process(workspace, on_round=on_round)
    return models[1]


def test_secure_rounds_give_plain_fedavg_within_the_quantization_bound(tmp_path: Path) -> None:
    plain = plain_workspace(tmp_path, collaborators=4, rounds=2, folder="plain")
    secure = plain_workspace(
        tmp_path,
        collaborators=4,
        rounds=2,
        folder="secure",
        plan_changes={"secure_aggregation": {"neighbours": 2}},
    )
    expected, got = _first_round_model(plain), _first_round_model(secure)
    events = [r for r in read_metrics(secure / "logs" / "metrics.jsonl")]
    sessions = [r for r in events if r["event"] == "secure_aggregation"]
    assert [s["outcome"] for s in sessions] == ["ok", "ok"]
    assert all(len(s["contributors"]) == 4 and s["neighbours"] == 2 for s in sessions)
    bound = sessions[0]["error_bound_average"]
    for key in expected:
        assert np.max(np.abs(got[key] - expected[key])) <= bound + 1e-6
    rounds = [r for r in events if r["event"] == "round" and not r["final_evaluation"]]
    plain_rounds = [
        r
        for r in read_metrics(plain / "logs" / "metrics.jsonl")
        if r["event"] == "round" and not r["final_evaluation"]
    ]
    # The train task's example total is the unmasked weight sum, equal to the plain one.
    assert rounds[0]["tasks"]["train"]["examples"] == plain_rounds[0]["tasks"]["train"]["examples"]
    assert rounds[0]["accepted"] == 4


def test_randomk_compression_composes_with_secure_aggregation(tmp_path: Path) -> None:
    changes = {
        "secure_aggregation": {},
        "compression": {"stages": [{"stage": "randomk", "fraction": 0.5, "seed": 3}]},
    }
    workspace = plain_workspace(tmp_path, collaborators=3, rounds=2, plan_changes=changes)
    start = {
        k: v.copy()
        for k, v in load_checkpoint(workspace / "save" / "initial.safetensors")[0].items()
    }
    aggregator = simulate_in_process(workspace)
    sessions = [
        r
        for r in read_metrics(workspace / "logs" / "metrics.jsonl")
        if r["event"] == "secure_aggregation"
    ]
    assert [s["outcome"] for s in sessions] == ["ok", "ok"]
    changed = np.mean([not np.array_equal(aggregator.model[k], start[k]) for k in start])
    assert changed == 1.0
    rounds = [
        r for r in read_metrics(workspace / "logs" / "metrics.jsonl") if r["event"] == "round"
    ]
    assert rounds[-1]["tasks"]["validate_global"]["accuracy"] > 0.5
