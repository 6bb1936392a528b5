"""Crash safety: kill -9 the aggregator mid-federation, restart it, and finish."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.federations import checkpoint_state, kill_aggregator_after_round, restart_aggregator
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint

SLOW_TASK = '''
import time

from task import build_runner as build_template_runner


class SlowRunner:
    """The template's runner, slowed down so a round lasts long enough to crash inside it."""

    def __init__(self, inner):
        self.inner = inner

    def get_weights(self):
        return self.inner.get_weights()

    def set_weights(self, weights):
        self.inner.set_weights(weights)

    def validate(self, data, **args):
        return self.inner.validate(data, **args)

    def train(self, data, **args):
        time.sleep(0.6)
        return self.inner.train(data, **args)


def build_runner(seed=0):
    return SlowRunner(build_template_runner(seed=seed))
'''


@pytest.mark.slow
def test_aggregator_killed_after_round_k_resumes_at_k_plus_1(tmp_path: Path) -> None:
    rounds = 5
    workspace = make_workspace(
        tmp_path,
        collaborators=2,
        rounds=rounds,
        files={"slow_task.py": SLOW_TASK},
        plan_changes={"task_runner": {"path": "slow_task:build_runner", "args": {}}},
    )
    metrics_path = workspace / "logs" / "metrics.jsonl"
    last = workspace / "save" / "last.safetensors"

    with LocalFederation(workspace) as federation:
        port = federation.start_aggregator()
        for name in ("site-1", "site-2"):
            federation.start_collaborator(name)
        completed_at_crash = kill_aggregator_after_round(federation, 2)
        assert 2 <= completed_at_crash < rounds

        # Collaborators keep retrying with backoff; the aggregator comes back on the same port.
        restart_aggregator(federation, port)
        codes = federation.wait(timeout=180)
        aggregator_log = federation.log_text("aggregator")
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, aggregator_log
    assert f"resuming from {last}" in aggregator_log.replace("\n", "")
    assert f"{completed_at_crash} of {rounds} rounds complete" in " ".join(aggregator_log.split())

    final_state = checkpoint_state(last)
    assert final_state["round_completed"] == rounds and final_state["finished"] is True
    records = read_metrics(metrics_path)
    starts_after_restart = [r["round"] for r in records if r["event"] == "round_start"]
    # The restarted aggregator's first round is exactly the one after the checkpoint.
    restart_index = max(
        i for i, r in enumerate(starts_after_restart) if r == completed_at_crash + 1
    )
    assert starts_after_restart[restart_index:] == list(range(completed_at_crash + 1, rounds + 2))
    completed = [s["round"] for s in round_summaries(records)]
    assert completed == list(range(1, rounds + 2))  # every round once, plus the final evaluation
    model, _ = load_checkpoint(workspace / "save" / "best.safetensors")
    assert set(model) == {"w", "b"}
