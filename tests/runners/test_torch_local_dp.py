"""Local DP-SGD chosen in the plan: the PyTorch runner trains through Opacus and reports epsilon."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from support.simulation import TORCH_MLP_TASK, plain_workspace
from support.status import bastion_status

from bastion.errors import PlanError
from bastion.metrics.log import read_metrics, round_summaries
from bastion.plan import load_plan
from bastion.sim.inprocess import InProcessFederation
from bastion.workspace.tasks import build_runner

pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings(
    "ignore:Secure RNG turned off", "ignore:Full backward hook is firing"
)

Z, CLIP, DELTA, BATCH, ROUNDS = 1.0, 1.0, 1e-5, 32, 3
TASKS = [
    {"name": "validate_global", "kind": "validate"},
    {"name": "train", "kind": "train", "args": {"epochs": 1, "batch_size": BATCH, "lr": 0.1}},
]


def _workspace(root: Path, initialize: bool = True, **changes: Any) -> Path:
    plan: dict[str, Any] = {
        "tasks": TASKS,
        "differential_privacy": {
            "delta": DELTA,
            "local": {"noise_multiplier": Z, "max_grad_norm": CLIP},
        },
    }
    plan.update(changes)
    return plain_workspace(
        root,
        collaborators=2,
        rounds=ROUNDS,
        files={"task.py": TORCH_MLP_TASK},
        plan_changes=plan,
        initialize=initialize,
    )


def test_local_dp_sgd_reports_the_epsilon_opacus_accounts(tmp_path: Path) -> None:
    from opacus.accountants import RDPAccountant

    workspace = _workspace(tmp_path)
    federation = InProcessFederation(workspace)
    federation.run()
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    for name in federation.plan.collaborator_names():
        batches = math.ceil(federation.shards.shard(name).train_count / BATCH)
        reported = [
            r["metrics"]["dp_epsilon"]
            for r in records
            if r["event"] == "task" and r["task"] == "train" and r["collaborator"] == name
        ]
        assert len(reported) == ROUNDS
        for rounds_done, epsilon in enumerate(reported, start=1):
            # Every round is one epoch of Poisson batches (rate 1/batches) on the same data.
            direct = RDPAccountant()
            direct.history = [(Z, 1 / batches, rounds_done * batches)]
            assert epsilon == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    accuracy = [r["tasks"]["validate_global"]["accuracy"] for r in round_summaries(records)]
    assert accuracy[-1] > accuracy[0] + 0.1  # noisy, but it learns

    largest = max(
        r["metrics"]["dp_epsilon"] for r in records if r["event"] == "task" and r["task"] == "train"
    )
    shown = bastion_status(workspace, columns=200)
    assert f"local DP-SGD: epsilon up to {largest:.4g}" in shown


def test_local_dp_needs_the_pytorch_runner(tmp_path: Path) -> None:
    workspace = plain_workspace(
        tmp_path,
        plan_changes={
            "differential_privacy": {"local": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}
        },
        initialize=False,
    )
    with pytest.raises(PlanError, match="differential_privacy.local.*PyTorch runner"):
        build_runner(load_plan(workspace), workspace)


def test_local_dp_refuses_penalties_its_noise_would_not_cover(tmp_path: Path) -> None:
    workspace = _workspace(
        tmp_path,
        initialize=False,
        task_runner={"path": "task:build_runner", "args": {"proximal_mu": 0.1}},
    )
    with pytest.raises(PlanError, match="FedProx/FedCurv penalties would bypass its noise"):
        build_runner(load_plan(workspace), workspace)
