"""FedProx over real processes: the torch template with proximal_mu, aggregator and collaborators over mTLS.

Each collaborator also trains a counterfactual copy from the same global model, with the
same batches, without the proximal term, so the test sees what the term changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint

MU = 1.0

COUNTERFACTUAL_TASK = """
import os
from pathlib import Path

from bastion.storage.checkpoints import save_checkpoint
from task import build_runner as build_template_runner


class CounterfactualRunner:
    '''The template's runner (FedProx on); each training is first run without the term.

    Both runs start from the round's global model with the same shuffling and torch RNG
    state; the one with the proximal term is what the collaborator sends.
    '''

    def __init__(self, inner, folder):
        self.inner, self.folder, self.round = inner, Path(folder), 0

    def begin_round(self, round_number):
        self.round = round_number
        self.inner.begin_round(round_number)

    def update_accepted(self, round_number):
        self.inner.update_accepted(round_number)

    def get_weights(self):
        return self.inner.get_weights()

    def set_weights(self, weights):
        self.inner.set_weights(weights)

    def validate(self, data, **args):
        return self.inner.validate(data, **args)

    def train(self, data, **args):
        start, state = self.inner.get_weights(), self.inner.client_state()
        self.inner.train(data, **{**args, "proximal_mu": 0.0})
        plain = self.inner.get_weights()
        self.inner.load_client_state(state)
        self.inner.set_weights(start)
        result = self.inner.train(data, **args)
        stem = f"round{self.round}-{os.getpid()}"
        self.folder.mkdir(exist_ok=True)
        save_checkpoint(self.folder / f"{stem}-global.safetensors", start, {})
        save_checkpoint(self.folder / f"{stem}-plain.safetensors", plain, {})
        save_checkpoint(
            self.folder / f"{stem}-prox.safetensors",
            self.inner.get_weights(),
            {"examples": str(result.example_count)},
        )
        return result


def build_runner(folder, **options):
    return CounterfactualRunner(build_template_runner(**options), folder)
"""


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[n].astype(np.float64) - b[n]) ** 2) for n in a)))


@pytest.mark.slow
def test_fedprox_keeps_each_local_model_closer_to_the_global_one(tmp_path: Path) -> None:
    rounds = 2
    records = tmp_path / "records"
    workspace = make_workspace(
        tmp_path,
        template="torch_cnn_mnist",
        collaborators=2,
        rounds=rounds,
        files={"counterfactual_task.py": COUNTERFACTUAL_TASK},
        plan_changes={
            "task_runner": {
                "path": "counterfactual_task:build_runner",
                "args": {"folder": str(records), "threads": 1, "seed": 0, "proximal_mu": MU},
            },
            # Training only, a few batches: the point is the update, not accuracy.
            "tasks": [
                {
                    "name": "train",
                    "kind": "train",
                    "args": {"epochs": 1, "batch_size": 32, "max_batches": 15},
                }
            ],
        },
    )
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=240)
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, federation.log_text("aggregator")

    sent_terms = {
        (r["round"], r["collaborator"]): r["metrics"]["proximal_term"]
        for r in read_metrics(workspace / "logs" / "metrics.jsonl")
        if r["event"] == "task" and r["task"] == "train"
    }
    assert len(sent_terms) == 2 * rounds
    reported = sorted(sent_terms.values())
    for round_number in range(1, rounds + 1):
        stems = sorted(
            p.name[: -len("-global.safetensors")]
            for p in records.glob(f"round{round_number}-*-global.safetensors")
        )
        assert len(stems) == 2
        expected_terms = []
        for stem in stems:
            start = load_checkpoint(records / f"{stem}-global.safetensors")[0]
            plain = load_checkpoint(records / f"{stem}-plain.safetensors")[0]
            prox = load_checkpoint(records / f"{stem}-prox.safetensors")[0]
            with_term, without = _distance(prox, start), _distance(plain, start)
            print(
                f"round {round_number} {stem}: ‖w − w_global‖ {with_term:.4f} with μ={MU}, {without:.4f} without"
            )
            assert with_term < 0.9 * without
            expected_terms.append(0.5 * MU * with_term**2)
        # The runner reports the term (μ/2)‖w − w_global‖² of the update it sent.
        got = sorted(v for (r, _), v in sent_terms.items() if r == round_number)
        np.testing.assert_allclose(got, sorted(expected_terms), rtol=1e-4)
    assert all(v > 0 for v in reported)

    # FedAvg of the proximal updates is the global model: the sent update is the FedProx one.
    last = sorted(records.glob(f"round{rounds}-*-prox.safetensors"))
    updates = [load_checkpoint(p) for p in last]
    counts = [int(meta["examples"]) for _, meta in updates]
    final, _ = load_checkpoint(workspace / "save" / "last.safetensors")
    for name in final:
        expected = sum(
            n * w[name].astype(np.float64) for (w, _), n in zip(updates, counts, strict=True)
        )
        np.testing.assert_allclose(final[name], expected / sum(counts), rtol=1e-5, atol=1e-7)
