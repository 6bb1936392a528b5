"""Asynchronous (FedBuff) versions over real processes with mTLS: kill -9 the aggregator
mid-federation; the restart resumes at the saved model version and finishes."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.federations import checkpoint_state, kill_aggregator_after_round, restart_aggregator
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation

SLOW_SITE_TASK = '''
import sys
import time

from task import build_runner as build_template_runner


class Paced:
    """The template's runner; site-3 trains ten times slower than the others."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 2.0 if "site-3" in sys.argv else 0.2

    def get_weights(self):
        return self.inner.get_weights()

    def set_weights(self, weights):
        self.inner.set_weights(weights)

    def validate(self, data, **args):
        return self.inner.validate(data, **args)

    def train(self, data, **args):
        time.sleep(self.seconds)
        return self.inner.train(data, **args)


def build_runner(seed=0):
    return Paced(build_template_runner(seed=seed))
'''

ROUNDS = 8
SITES = ("site-1", "site-2", "site-3")


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 20 s alone; process start-up is slow on a loaded machine
def test_aggregator_killed_mid_version_resumes_at_the_saved_version(tmp_path: Path) -> None:
    workspace = make_workspace(
        tmp_path,
        collaborators=3,
        rounds=ROUNDS,
        files={"paced_task.py": SLOW_SITE_TASK},
        plan_changes={
            "task_runner": {"path": "paced_task:build_runner", "args": {}},
            "timeouts": {"poll_seconds": 0.1},
            "asynchronous": {"buffer_size": 2, "max_staleness": 20},
        },
    )
    metrics_path = workspace / "logs" / "metrics.jsonl"
    last = workspace / "save" / "last.safetensors"

    with LocalFederation(workspace) as federation:
        port = federation.start_aggregator()
        for name in SITES:
            federation.start_collaborator(name)
        completed_at_crash = kill_aggregator_after_round(federation, 3, timeout=300)
        assert 3 <= completed_at_crash < ROUNDS

        restart_aggregator(federation, port)
        codes = federation.wait(timeout=180)
        aggregator_log = federation.log_text("aggregator")
    assert codes == {"aggregator": 0, **dict.fromkeys(SITES, 0)}, aggregator_log
    assert f"resuming from {last}" in aggregator_log.replace("\n", "")
    assert f"{completed_at_crash} of {ROUNDS} rounds complete" in " ".join(aggregator_log.split())

    final_state = checkpoint_state(last)
    assert final_state["round_completed"] == ROUNDS and final_state["finished"] is True
    records = read_metrics(metrics_path)
    starts = [r["round"] for r in records if r["event"] == "round_start"]
    restart_index = max(i for i, r in enumerate(starts) if r == completed_at_crash + 1)
    assert starts[restart_index:] == list(range(completed_at_crash + 1, ROUNDS + 2))
    summaries = round_summaries(records)
    assert [s["round"] for s in summaries] == list(range(1, ROUNDS + 2))
    # Versions closed while the slow site still trained: its work was carried over.
    assert any("site-3" in s.get("carried_over", ()) for s in summaries)
    versions = [r for r in records if r["event"] == "buffered_version"]
    assert all(v["buffered"] <= 2 for v in versions)
    # ... and folded into a later version, weighted by its staleness.
    assert any(v["max_staleness_seen"] > 0 for v in versions)
