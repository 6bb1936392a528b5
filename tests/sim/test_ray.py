"""Simulation on Ray: the aggregator in this process, the clients on Ray actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.simulation import TORCH_MLP_TASK, plain_workspace

from bastion.aggregator.assignment import sample_collaborators
from bastion.errors import BastionError
from bastion.metrics.log import read_metrics, round_summaries
from bastion.plan import load_plan
from bastion.sim.inprocess import simulate_in_process
from bastion.storage.checkpoints import load_checkpoint
from bastion.tensors import Weights

pytest.importorskip("ray")
from bastion.sim.ray_backend import RayFederation, ray_session, simulate_on_ray  # noqa: E402

# A NumPy runner with per-client state: each client shuffles with its own generator and
# counts the rounds it trained; its train metrics report that count and the worker's pid.
PER_CLIENT_TASK = """
import os

import numpy as np

from bastion.runners.numpy import NumpyRunner
from task import SoftmaxRegression


class PerClientRunner(NumpyRunner):
    def __init__(self, seed=0):
        super().__init__(SoftmaxRegression(seed=seed))
        self.seed = seed
        self.rounds_trained = 0

    def train(self, data, **args):
        self.rounds_trained += 1
        result = super().train(data, **args)
        result.metrics.update(rounds_trained=self.rounds_trained, worker_pid=os.getpid())
        return result

    def client_state(self):
        return {"rng": self.model._rng.bit_generator.state, "rounds": self.rounds_trained}

    def load_client_state(self, state):
        fresh = {"rng": np.random.default_rng(self.seed).bit_generator.state, "rounds": 0}
        state = state or fresh
        self.model._rng.bit_generator.state = state["rng"]
        self.rounds_trained = state["rounds"]


def build_runner(seed=0):
    return PerClientRunner(seed)
"""

PER_CLIENT_PLAN = {
    "task_runner": {"path": "per_client:build_runner", "args": {"seed": 0}},
    "participation": {"fraction": 0.5, "seed": 4},
    "data": {"partition": {"method": "dirichlet", "alpha": 0.5, "seed": 2}},
    # Top-k with error feedback: each client's residual must follow it too; the model goes
    # down in NF4, coded on the workers as the aggregator codes it in-process.
    "compression": {
        "stages": [{"stage": "topk", "fraction": 0.3}],
        "error_feedback": True,
        "downstream": {"stage": "nf4"},
    },
}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray instance for the module (each federation reuses it); its address."""
    import ray

    with ray_session():
        yield ray.get_runtime_context().gcs_address


def _final_model(workspace: Path) -> Weights:
    return load_checkpoint(workspace / "save" / "last.safetensors")[0]


def _train_records(workspace: Path) -> list[dict[str, Any]]:
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    return [r for r in records if r["event"] == "task" and r["task"] == "train"]


def _both_backends(root: Path, **workspace: Any) -> tuple[Path, Path]:
    """The same workspace run in-process and on two Ray workers."""
    runs = []
    for folder in ("in-process", "ray"):
        runs.append(plain_workspace(root, folder=folder, **workspace))
    simulate_in_process(runs[0])
    simulate_on_ray(runs[1], workers=2)
    return runs[0], runs[1]


@pytest.fixture(scope="module")
def per_client_runs(
    ray_cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    return _both_backends(
        tmp_path_factory.mktemp("per-client"),
        collaborators=8,
        rounds=4,
        files={"per_client.py": PER_CLIENT_TASK},
        plan_changes=PER_CLIENT_PLAN,
    )


@pytest.mark.slow
def test_the_final_model_is_bit_for_bit_the_in_process_one(
    per_client_runs: tuple[Path, Path],
) -> None:
    """Clients are replayed in the in-process visiting order, so even the float sums agree;
    a runner state or compression residual left behind on a worker would break this."""
    in_process, on_ray = per_client_runs
    expected, got = _final_model(in_process), _final_model(on_ray)
    assert list(expected) == list(got)
    for name in expected:
        assert expected[name].tobytes() == got[name].tobytes(), name

    def trained(workspace: Path) -> list[tuple[Any, ...]]:
        return [
            (r["round"], r["collaborator"], r["examples"], r["metrics"]["loss"])
            for r in _train_records(workspace)
        ]

    assert trained(on_ray) == trained(in_process)  # same clients, same order, same losses


@pytest.mark.slow
def test_each_client_state_follows_it_to_whichever_worker_runs_it(
    per_client_runs: tuple[Path, Path],
) -> None:
    _, on_ray = per_client_runs
    counts: dict[str, list[int]] = {}
    workers: dict[str, set[float]] = {}
    for record in _train_records(on_ray):
        name = record["collaborator"]
        counts.setdefault(name, []).append(int(record["metrics"]["rounds_trained"]))
        workers.setdefault(name, set()).add(record["metrics"]["worker_pid"])
    assert all(seen == list(range(1, len(seen) + 1)) for seen in counts.values()), counts
    assert len(set().union(*workers.values())) == 2  # both workers trained clients
    moved = [name for name, pids in workers.items() if len(pids) > 1]
    assert moved, "some client must have trained on both workers for this to show anything"
    assert any(len(counts[name]) >= 3 for name in moved)


@pytest.mark.slow
def test_local_dp_spend_follows_each_client_and_over_budget_sites_decline(
    ray_cluster: str, tmp_path: Path
) -> None:
    """The accountant history is client state: epsilon grows per site, not per worker."""
    changes = {
        "task_runner": {"path": "mlp:build_runner", "args": {"seed": 0, "lr": 0.1}},
        "tasks": [
            {"name": "validate_global", "kind": "validate"},
            {"name": "train", "kind": "train", "args": {"epochs": 1, "batch_size": 32}},
        ],
        "participation": {"fraction": 0.5, "seed": 3},
        "differential_privacy": {
            "local": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "epsilon_budget": 4.0}
        },
    }
    in_process, on_ray = _both_backends(
        tmp_path, collaborators=4, rounds=4, files={"mlp.py": TORCH_MLP_TASK}, plan_changes=changes
    )
    expected, got = _final_model(in_process), _final_model(on_ray)
    assert all(expected[name].tobytes() == got[name].tobytes() for name in expected)

    def spend(workspace: Path) -> list[tuple[int, str, float]]:
        return [
            (r["round"], r["collaborator"], r["metrics"]["dp_epsilon"])
            for r in _train_records(workspace)
        ]

    def declines(workspace: Path) -> list[tuple[int, str]]:
        records = read_metrics(workspace / "logs" / "metrics.jsonl")
        return [(r["round"], r["collaborator"]) for r in records if r["event"] == "declined"]

    assert spend(on_ray) == spend(in_process)
    by_site: dict[str, list[float]] = {}
    for _, name, epsilon in spend(on_ray):
        by_site.setdefault(name, []).append(epsilon)
    assert any(len(e) >= 2 and e == sorted(e) and e[0] < e[-1] for e in by_site.values())
    assert declines(on_ray) == declines(in_process) != []


@pytest.mark.slow
def test_central_dp_accounts_and_stops_as_in_process(ray_cluster: str, tmp_path: Path) -> None:
    changes = {
        "aggregation": {
            "strategy": "dp_fedavg",
            "args": {"noise_multiplier": 1.0, "clip_norm": 1.0},
        },
        "participation": {"fraction": 0.5, "sampling": "poisson"},
        "differential_privacy": {"accountant": "rdp", "delta": 1e-5, "epsilon_budget": 8.0},
    }
    in_process, on_ray = _both_backends(tmp_path, collaborators=6, rounds=8, plan_changes=changes)

    def accounting(workspace: Path) -> tuple[dict[int, Any], set[int], dict[str, Any]]:
        """Each trained round's privacy report, the rounds skipped (a Poisson sample can be
        empty: one in 64 with six sites at 0.5) and the final evaluation's report."""
        records = read_metrics(workspace / "logs" / "metrics.jsonl")
        summaries = round_summaries(records)
        trained = {s["round"]: s["privacy"] for s in summaries if not s["final_evaluation"]}
        skipped = {r["round"] for r in records if r["event"] == "round_skipped"}
        (final,) = [s["privacy"] for s in summaries if s["final_evaluation"]]
        return trained, skipped, final

    reports = {}
    for backend, workspace in (("in-process", in_process), ("ray", on_ray)):
        trained, skipped, final = accounting(workspace)
        assert 0 < final["rounds"] < 8 and final["stopped"], final  # the budget ended training
        # an empty round spends budget too, so every round up to the stop is accounted for
        assert set(trained) | skipped == set(range(1, final["rounds"] + 1)), (trained, skipped)
        assert all(report["rounds"] == r for r, report in trained.items())
        reports[backend] = trained, final
    (in_process_rounds, in_process_final), (ray_rounds, ray_final) = reports.values()
    assert ray_final == in_process_final  # the same epsilon, the same stop, after as many rounds
    for r in set(ray_rounds) & set(in_process_rounds):
        assert ray_rounds[r] == in_process_rounds[r]


def _shared_shards(count: int, shards: int) -> list[dict[str, Any]]:
    """``count`` clients over ``shards`` shards of digits (it has 1,437 training examples)."""
    return [{"name": f"site-{i}", "shard": (i - 1) % shards} for i in range(1, count + 1)]


@pytest.mark.slow
def test_a_thousand_clients_train_the_digits_template(ray_cluster: str, tmp_path: Path) -> None:
    rounds = 2
    workspace = plain_workspace(
        tmp_path,
        collaborators=1000,
        rounds=rounds,
        plan_changes={
            "collaborators": _shared_shards(1000, 100),
            "participation": {"fraction": 0.06, "seed": 11},
        },
    )
    simulate_on_ray(workspace, workers=2)

    plan = load_plan(workspace)
    roster = plan.collaborator_names()
    trained = _train_records(workspace)
    for number in range(1, rounds + 1):
        names = [r["collaborator"] for r in trained if r["round"] == number]
        assert sorted(names) == sorted(sample_collaborators(roster, number, plan.participation))
        assert len(names) == len(set(names)) == 60
    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in summaries]
    assert summaries[-1]["final_evaluation"] and len(accuracy) == rounds + 1
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy
    assert json.loads((workspace / "save" / "state.json").read_text())["finished"]


def test_secure_aggregation_is_refused_before_ray_starts(tmp_path: Path) -> None:
    workspace = plain_workspace(
        tmp_path, collaborators=3, plan_changes={"secure_aggregation": {"neighbours": 2}}
    )
    with pytest.raises(BastionError, match=r"'secure_aggregation'.*--in-process"):
        RayFederation(workspace)
    assert not (workspace / "save" / "state.json").exists()


def _bastion(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(home)}
    env["MPLCONFIGDIR"] = str(home / "mpl")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.slow
def test_cli_simulate_on_ray_and_its_refusals(ray_cluster: str, tmp_path: Path) -> None:
    """Joins the module's Ray instance with --address (starting one costs seconds)."""
    home = tmp_path / "home"
    home.mkdir()
    workspace = plain_workspace(tmp_path, collaborators=3, rounds=2)
    command = ["simulate", "--backend", "ray", "--workers", "2", "--address", ray_cluster]
    run = _bastion(["-m", "bastion", *command], workspace, home)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "on Ray (2 workers)" in run.stdout and "final" in run.stdout
    assert "federation finished: accuracy" in run.stdout
    assert json.loads((workspace / "save" / "state.json").read_text())["finished"]
    assert set(os.listdir(home)) <= {"mpl"}  # nothing of Ray's under $HOME

    secure = plain_workspace(
        tmp_path, folder="secure", plan_changes={"secure_aggregation": {"neighbours": 2}}
    )
    refused = _bastion(["-m", "bastion", "simulate", "--backend", "ray"], secure, home)
    assert refused.returncode == 2
    assert "secure_aggregation" in refused.stderr and "Traceback" not in refused.stderr

    without_ray = (
        "import sys; sys.modules['ray'] = None; sys.argv = ['bastion', 'simulate', "
        "'--backend', 'ray']; from bastion.cli.main import main; main()"
    )
    missing = _bastion(["-c", without_ray], workspace, home)
    assert missing.returncode == 2, missing.stderr
    assert "pip install 'bastion-fl[ray]'" in missing.stderr.replace("\n", "")
