"""A real federation: aggregator and 3 collaborators as separate processes over mTLS."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint

# Task code that records, independently of the aggregator, every update a collaborator
# sends: its weights after training and the example count it reports.
RECORDING_TASK = """
import os
from pathlib import Path

from bastion.storage.checkpoints import save_checkpoint
from task import build_runner as build_template_runner


class RecordingRunner:
    def __init__(self, inner, folder):
        self.inner, self.folder, self.rounds = inner, Path(folder), 0

    def get_weights(self):
        return self.inner.get_weights()

    def set_weights(self, weights):
        self.inner.set_weights(weights)

    def validate(self, data, **args):
        return self.inner.validate(data, **args)

    def train(self, data, **args):
        result = self.inner.train(data, **args)
        self.rounds += 1
        self.folder.mkdir(exist_ok=True)
        name = f"{os.getpid()}-round{self.rounds}.safetensors"
        save_checkpoint(self.folder / name, self.inner.get_weights(),
                        {"examples": str(result.example_count)})
        return result


def build_runner(folder, seed=0):
    return RecordingRunner(build_template_runner(seed=seed), folder)
"""


@pytest.mark.slow
def test_final_model_is_the_weighted_average_of_last_updates(tmp_path: Path) -> None:
    rounds = 3
    records = tmp_path / "records"
    # Non-IID shards give the collaborators different example counts, so weighting matters.
    workspace = make_workspace(
        tmp_path,
        collaborators=3,
        rounds=rounds,
        files={"recording_task.py": RECORDING_TASK},
        plan_changes={
            "task_runner": {
                "path": "recording_task:build_runner",
                "args": {"folder": str(records)},
            },
            "data": {"partition": {"method": "dirichlet", "alpha": 0.5, "seed": 3}},
        },
    )
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=180)
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0, "site-3": 0}, federation.log_text(
        "aggregator"
    )

    last_updates = sorted(records.glob(f"*-round{rounds}.safetensors"))
    assert len(last_updates) == 3
    updates = [load_checkpoint(p) for p in last_updates]
    counts = [int(meta["examples"]) for _, meta in updates]
    assert len(set(counts)) > 1, "shards should differ in size for this test to mean something"
    expected = {
        name: sum(n * w[name].astype(np.float64) for (w, _), n in zip(updates, counts, strict=True))
        / sum(counts)
        for name in updates[0][0]
    }
    final, metadata = load_checkpoint(workspace / "save" / "last.safetensors")
    assert json.loads(metadata["bastion.state"])["finished"] is True
    assert list(final) == ["w", "b"]
    for name, value in expected.items():
        assert final[name].dtype == np.float32
        np.testing.assert_allclose(final[name], value, rtol=1e-5, atol=1e-7)

    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    assert [s["round"] for s in summaries] == [1, 2, 3, 4]
    assert summaries[-1]["final_evaluation"] is True
    accuracy = [s["tasks"]["validate_global"]["accuracy"] for s in summaries]
    assert accuracy[-1] > accuracy[0] + 0.3  # the digits model learns: ~0.1 → ~0.9
    # Weighted validation over all shards covers the whole test split exactly once.
    assert summaries[-1]["tasks"]["validate_global"]["examples"] == 360
    assert (workspace / "save" / "best.safetensors").exists()
    if sys.platform.startswith("linux"):  # what the aggregator process held after each round
        held = [s["resident_memory"] for s in summaries]
        assert all(h["rss_bytes"] > 20 * 2**20 and h["open_fds"] >= 3 for h in held), held
