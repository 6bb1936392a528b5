"""The in-process simulation: the real aggregator and collaborator loop, without a network."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support.simulation import TORCH_MLP_TASK, Recorder, plain_workspace

from bastion.aggregator.assignment import sample_collaborators
from bastion.metrics.log import read_metrics, round_summaries
from bastion.plan import load_plan
from bastion.sim.inprocess import InProcessClient, InProcessFederation, simulate_in_process
from bastion.sim.shards import ShardIndex, load_plan_dataset
from bastion.storage.checkpoints import load_checkpoint
from bastion.tensors import Weights
from bastion.workspace.tasks import load_shard


@pytest.mark.parametrize(
    "partition",
    [
        {"method": "iid", "seed": 3},
        {"method": "dirichlet", "alpha": 0.3, "seed": 1},
        {"method": "shards", "shards_per_collaborator": 2, "seed": 2},
    ],
)
def test_index_shards_equal_the_shards_each_process_loads(tmp_path: Path, partition: dict) -> None:
    workspace = plain_workspace(
        tmp_path,
        collaborators=7,
        plan_changes={"data": {"partition": partition}},
        initialize=False,
    )
    plan = load_plan(workspace)
    index = ShardIndex(plan, load_plan_dataset(plan, workspace))
    for name in plan.collaborator_names():
        expected, got = load_shard(plan, name, workspace), index.shard(name)
        for part in ("x_train", "y_train", "x_valid", "y_valid"):
            np.testing.assert_array_equal(getattr(got, part), getattr(expected, part))


def test_stop_from_the_round_callback_ends_the_run_after_that_round(tmp_path: Path) -> None:
    workspace = plain_workspace(tmp_path, collaborators=3, rounds=5)

    def stop_after_two(number: int, federation: InProcessFederation) -> None:
        if number == 2:
            federation.stop()

    aggregator = InProcessFederation(workspace, on_round=stop_after_two).run()
    assert aggregator.state.round_completed == 2 and not aggregator.finished.is_set()
    _, metadata = load_checkpoint(workspace / "save" / "last.safetensors")
    assert json.loads(metadata["bastion.state"])["round_completed"] == 2  # resumable from here


def test_checkpoints_and_metrics_land_in_the_workspace_as_with_processes(tmp_path: Path) -> None:
    rounds = 3
    workspace = plain_workspace(
        tmp_path,
        collaborators=3,
        rounds=rounds,
        plan_changes={"data": {"partition": {"method": "dirichlet", "alpha": 0.5, "seed": 3}}},
    )
    recorder = Recorder()
    InProcessFederation(workspace, client_factory=recorder.client).run()

    final, metadata = load_checkpoint(workspace / "save" / "last.safetensors")
    state = json.loads(metadata["bastion.state"])
    assert state["round_completed"] == rounds and state["finished"] is True
    # FedAvg: the final model is the example-weighted average of the last round's updates.
    last = recorder.updates(rounds)
    assert len(last) == 3 and len({s.example_count for s in last}) > 1
    total = sum(s.example_count for s in last)
    for name in final:
        expected = sum(s.example_count * s.weights[name].astype(np.float64) for s in last) / total
        np.testing.assert_allclose(final[name], expected, rtol=1e-6, atol=1e-7)
    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    assert [s["round"] for s in summaries] == [1, 2, 3, 4]
    assert summaries[-1]["final_evaluation"] is True
    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in summaries]
    assert accuracy[-1] > accuracy[0] + 0.3
    assert summaries[-1]["tasks"]["validate_global"]["examples"] == 360  # the whole test split
    assert (workspace / "save" / "best.safetensors").exists()
    state = json.loads((workspace / "save" / "state.json").read_text())
    assert state["finished"] and sorted(state["collaborators_seen"]) == [
        "site-1",
        "site-2",
        "site-3",
    ]


COUNTING_TASK = """
from task import build_runner as build_template_runner

BUILT = []


def build_runner(seed=0):
    BUILT.append(seed)
    return build_template_runner(seed=seed)
"""


def test_120_clients_sampled_at_ten_percent_share_one_runner(tmp_path: Path) -> None:
    rounds = 3
    workspace = plain_workspace(
        tmp_path,
        collaborators=120,
        rounds=rounds,
        files={"counting_task.py": COUNTING_TASK},
        plan_changes={
            "task_runner": {"path": "counting_task:build_runner", "args": {}},
            "participation": {"fraction": 0.1, "seed": 7},
            "tasks": [{"name": "train", "kind": "train", "args": {"epochs": 1, "lr": 0.2}}],
        },
    )
    sys.modules["counting_task"].BUILT.clear()  # `plan initialize` built one in this process
    started = time.monotonic()
    federation = InProcessFederation(workspace)
    federation.run()
    elapsed = time.monotonic() - started

    roster = federation.plan.collaborator_names()
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    for round_number in range(1, rounds + 1):
        trained = sorted(
            r["collaborator"]
            for r in records
            if r["event"] == "task" and r["round"] == round_number
        )
        expected = sample_collaborators(roster, round_number, federation.plan.participation)
        assert trained == sorted(expected) and len(trained) == 12
    built = sys.modules["counting_task"].BUILT  # the workspace's module, as the simulation ran it
    assert built == [0], "one runner, built once, serves all 120 clients"
    # Speed targets live in benchmarks/, not in assertions: this only reports the figure.
    print(f"120 clients, {rounds} rounds of 12: {elapsed:.2f}s")


class WrongShapeClient(InProcessClient):
    """Sends a model whose first tensor has an extra row."""

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]:
        if weights and self.name == "site-2":
            first = next(iter(weights))
            weights = {**weights, first: np.vstack([weights[first], weights[first][:1]])}
        return super().send_result(round_number, task, example_count, metrics, weights)


def test_a_malformed_update_is_rejected_and_the_federation_goes_on(tmp_path: Path) -> None:
    workspace = plain_workspace(tmp_path, collaborators=3, rounds=2)
    InProcessFederation(workspace, client_factory=WrongShapeClient).run()
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    rejected = [r for r in records if r["event"] == "rejected"]
    assert [(r["round"], r["collaborator"]) for r in rejected] == [(1, "site-2"), (2, "site-2")]
    assert "shape" in rejected[0]["reason"]
    rounds = [s for s in round_summaries(records) if not s["final_evaluation"]]
    assert [s["accepted"] for s in rounds] == [2, 2]


@pytest.mark.parametrize(
    "optimizer",
    [{}, {"momentum": 0.9, "optimizer_state": "keep"}],
    ids=["fresh-optimizer", "kept-momentum"],
)
def test_a_shared_torch_runner_gives_the_same_models_as_one_runner_per_client(
    tmp_path: Path, optimizer: dict[str, object]
) -> None:
    """With optimizer_state: keep, each client's momentum must survive the swaps as well."""
    changes = {
        "task_runner": {"path": "mlp:build_runner", "args": {"seed": 0, "lr": 0.1, **optimizer}},
        "tasks": [
            {"name": "train", "kind": "train", "args": {"epochs": 2, "batch_size": 16}},
            {"name": "validate_global", "kind": "validate"},
        ],
    }
    finals = []
    for share, folder in ((True, "shared"), (False, "separate")):
        workspace = plain_workspace(
            tmp_path,
            collaborators=3,
            rounds=3,
            files={"mlp.py": TORCH_MLP_TASK},
            plan_changes=changes,
            folder=folder,
        )
        simulate_in_process(workspace, share_runner=share)
        finals.append(load_checkpoint(workspace / "save" / "last.safetensors")[0])
    shared, separate = finals
    assert list(shared) == list(separate)
    for name in shared:  # each client's shuffling stream survives the weight swaps exactly
        assert shared[name].tobytes() == separate[name].tobytes(), name


def test_on_round_sees_each_round_global_model(tmp_path: Path) -> None:
    workspace = plain_workspace(tmp_path, collaborators=2, rounds=3)
    seen: list[tuple[int, float]] = []

    def on_round(number: int, federation: InProcessFederation) -> None:
        seen.append((number, float(np.abs(federation.aggregator.model["w"]).sum())))

    aggregator = simulate_in_process(workspace, on_round=on_round)
    assert [n for n, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == float(np.abs(aggregator.model["w"]).sum())


def test_cli_simulate_in_process(tmp_path: Path) -> None:
    workspace = plain_workspace(tmp_path, collaborators=2, rounds=2)
    run = subprocess.run(
        [sys.executable, "-m", "bastion", "simulate", "--in-process", "--plot", "acc.png"],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(tmp_path / "mpl")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "round 2" in run.stdout and "final" in run.stdout
    assert "federation finished: accuracy" in run.stdout
    assert (workspace / "acc.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((workspace / "save" / "state.json").read_text())["finished"]
