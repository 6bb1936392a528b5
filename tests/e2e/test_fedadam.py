"""FedAdam over real processes (mTLS): the server step, and its moments across a kill -9.

Collaborators record every global model they receive and every update they send; the
test recomputes Reddi et al. 2021, Algorithm 2 (FedAdam) from those records in float64
NumPy and compares it with the aggregator's models and checkpointed moments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.federations import checkpoint_state, kill_aggregator_after_round, restart_aggregator
from support.workspaces import make_workspace

from bastion.sim.inprocess import InProcessFederation
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint
from bastion.tensors import Weights

ETA, BETA_1, BETA_2, TAU = 0.05, 0.9, 0.99, 1e-3

# The template's runner, rebuilt each round with a seed derived from the round, so a
# round retrained after an aggregator restart sends exactly what it sent before.
RECORDING_TASK = """
import os
import time
from pathlib import Path

from bastion.storage.checkpoints import save_checkpoint
from task import build_runner as build_template_runner


class RecordingRunner:
    def __init__(self, seed):
        self.seed, self.round = seed, 0
        self.inner = build_template_runner(seed=seed)

    def begin_round(self, round_number):
        self.round = round_number
        self.inner = build_template_runner(seed=1000 * self.seed + round_number)

    def update_accepted(self, round_number):
        pass

    def get_weights(self):
        return self.inner.get_weights()

    def set_weights(self, weights):
        self.inner.set_weights(weights)

    def validate(self, data, **args):
        return self.inner.validate(data, **args)

    def train(self, data, **args):
        time.sleep(float(os.environ.get("TEST_SLOW_TRAINING", "0")))
        start = self.inner.get_weights()
        result = self.inner.train(data, **args)
        folder = os.environ.get("TEST_RECORDS")
        if folder:
            stem = Path(folder) / f"round{self.round}-{os.getpid()}"
            Path(folder).mkdir(exist_ok=True)
            save_checkpoint(Path(f"{stem}-global.safetensors"), start, {})
            save_checkpoint(
                Path(f"{stem}-update.safetensors"),
                self.inner.get_weights(),
                {"examples": str(result.example_count)},
            )
        return result


def build_runner(seed=0):
    return RecordingRunner(seed)
"""


def fedadam_workspace(root: Path, rounds: int, collaborators: int) -> Path:
    """The NumPy digits template with FedAdam, unequal shards and the recording runner."""
    return make_workspace(
        root,
        collaborators=collaborators,
        rounds=rounds,
        files={"recording_task.py": RECORDING_TASK},
        plan_changes={
            "task_runner": {"path": "recording_task:build_runner", "args": {"seed": 0}},
            "data": {"partition": {"method": "dirichlet", "alpha": 0.5, "seed": 3}},
            "aggregation": {
                "strategy": "fedadam",
                "args": {"eta": ETA, "beta_1": BETA_1, "beta_2": BETA_2, "tau": TAU},
            },
        },
    )


def recorded_round(
    records: Path, round_number: int
) -> tuple[list[Weights], list[tuple[Weights, int]]]:
    """The global models received and the (update, example count) pairs sent in a round."""
    stems = sorted(
        p.name[: -len("-update.safetensors")]
        for p in records.glob(f"round{round_number}-*-update.safetensors")
    )
    received = [load_checkpoint(records / f"{s}-global.safetensors")[0] for s in stems]
    sent = []
    for stem in stems:
        weights, metadata = load_checkpoint(records / f"{stem}-update.safetensors")
        sent.append((weights, int(metadata["examples"])))
    return received, sent


class FedAdamReference:
    """Algorithm 2 (FedAdam) in float64, written from the paper: Δ, m, v, x ← x + η m/(√v + τ)."""

    def __init__(self) -> None:
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, x: Weights, updates: list[tuple[Weights, int]]) -> Weights:
        total = sum(n for _, n in updates)
        new: Weights = {}
        for name, value in x.items():
            current = value.astype(np.float64)
            delta = sum(n * (w[name].astype(np.float64) - current) for w, n in updates) / total
            m = self.m.get(name, np.zeros_like(current))
            v = self.v.get(name, np.full_like(current, TAU**2))
            self.m[name] = BETA_1 * m + (1 - BETA_1) * delta
            self.v[name] = BETA_2 * v + (1 - BETA_2) * delta**2
            step = ETA * self.m[name] / (np.sqrt(self.v[name]) + TAU)
            new[name] = (current + step).astype(value.dtype)
        return new


def assert_moments(checkpoint: Weights, reference: FedAdamReference) -> None:
    for name in reference.m:
        np.testing.assert_allclose(
            checkpoint[f"strategy/m/{name}"], reference.m[name], rtol=1e-9, atol=1e-15
        )
        np.testing.assert_allclose(
            checkpoint[f"strategy/v/{name}"], reference.v[name], rtol=1e-9, atol=1e-18
        )


@pytest.mark.slow
def test_global_models_are_the_fedadam_steps_of_the_recorded_updates(tmp_path: Path) -> None:
    rounds = 3
    workspace = fedadam_workspace(tmp_path, rounds=rounds, collaborators=3)
    records = tmp_path / "records"
    with LocalFederation(workspace, extra_env={"TEST_RECORDS": str(records)}) as federation:
        federation.start()
        codes = federation.wait(timeout=180)
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0, "site-3": 0}, federation.log_text(
        "aggregator"
    )

    reference = FedAdamReference()
    x = load_checkpoint(workspace / "save" / "initial.safetensors")[0]
    for round_number in range(1, rounds + 1):
        received, sent = recorded_round(records, round_number)
        assert len(sent) == 3
        start = received[0]
        for model in received:  # every collaborator started the round from the same x_t ...
            assert all(model[n].tobytes() == start[n].tobytes() for n in start), round_number
        for name, value in x.items():  # ... the reference's step from the previous round
            np.testing.assert_allclose(start[name], value, rtol=1e-6, atol=1e-7)
        if round_number == 1:
            assert len({n for _, n in sent}) > 1, "unequal shards make the weighting matter"
        x = reference.step(start, sent)
    final, metadata = load_checkpoint(workspace / "save" / "last.safetensors")
    assert json.loads(metadata["bastion.state"])["round_completed"] == rounds
    for name, value in x.items():
        assert final[name].dtype == value.dtype
        np.testing.assert_allclose(final[name], value, rtol=1e-6, atol=1e-7)
    assert_moments(final, reference)
    # FedAdam is not FedAvg: the server step moved the model off the plain average.
    _, last_sent = recorded_round(records, rounds)
    average = sum(n * w["w"].astype(np.float64) for w, n in last_sent) / sum(
        n for _, n in last_sent
    )
    assert not np.allclose(final["w"], average, atol=1e-4)


@pytest.mark.slow
def test_fedadam_moments_survive_an_aggregator_kill_and_the_run_matches_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    rounds = 5
    workspace = fedadam_workspace(tmp_path / "crashed", rounds=rounds, collaborators=2)
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(workspace, uninterrupted)  # same plan, same initial model

    # The uninterrupted run: the same aggregator and collaborator code, in this process.
    snapshots: dict[int, Weights] = {}

    def snapshot(number: int, federation: InProcessFederation) -> None:
        state = federation.aggregator.strategy.state_dict()
        snapshots[number] = {
            **{k: v.copy() for k, v in federation.aggregator.model.items()},
            **{f"strategy/{k}": v for k, v in state.items()},
        }

    InProcessFederation(uninterrupted, on_round=snapshot).run()

    last = workspace / "save" / "last.safetensors"
    env = {"TEST_SLOW_TRAINING": "0.5"}  # a round lasts long enough to crash inside it
    with LocalFederation(workspace, extra_env=env) as federation:
        port = federation.start_aggregator()
        for name in ("site-1", "site-2"):
            federation.start_collaborator(name)
        completed = kill_aggregator_after_round(federation, 2)
        at_crash, _ = load_checkpoint(last)
        assert 2 <= completed < rounds

        restart_aggregator(federation, port, after=0.5)
        codes = federation.wait(timeout=180)
        aggregator_log = federation.log_text("aggregator")
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, aggregator_log
    # words, not lines: the console wraps a long checkpoint path onto the next line
    assert f"{completed} of {rounds} rounds complete" in " ".join(aggregator_log.split())

    # The moments on disk at the crash are the uninterrupted run's after that round, and
    # they are not the starting values, so losing them would change every later step.
    assert sorted(at_crash) == sorted(snapshots[completed])
    for name, value in snapshots[completed].items():
        assert at_crash[name].tobytes() == value.tobytes(), name
    assert any(np.abs(at_crash[k]).max() > 0 for k in at_crash if k.startswith("strategy/m/"))

    # After the restart the federation continues bit for bit: model and moments.
    final, _ = load_checkpoint(last)
    expected = load_checkpoint(uninterrupted / "save" / "last.safetensors")[0]
    assert sorted(final) == sorted(expected)
    for name, value in expected.items():
        assert final[name].tobytes() == value.tobytes(), name
    assert checkpoint_state(last)["finished"] is True
