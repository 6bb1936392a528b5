"""A site whose task code raises: the aggregator hears why at once, the round goes on with
the others, status shows it, and the site stops with one line naming its error log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import run_bastion
from support.workspaces import make_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation

BROKEN_TASK = """
import os

from task import build_runner as build_template_runner


class BrokenAtOneSite:
    def __init__(self, inner):
        self.inner = inner

    def get_weights(self):
        return self.inner.get_weights()

    def set_weights(self, weights):
        self.inner.set_weights(weights)

    def validate(self, data, **args):
        return self.inner.validate(data, **args)

    def train(self, data, **args):
        if os.environ.get("BROKEN_SITE") == "1":
            raise ValueError("epoch is not an argument of train(); did you mean epochs?")
        return self.inner.train(data, **args)


def build_runner(seed=0):
    return BrokenAtOneSite(build_template_runner(seed=seed))
"""
REASON = "ValueError: epoch is not an argument of train(); did you mean epochs?"


@pytest.mark.slow
def test_a_site_whose_task_raises_is_reported_and_the_round_goes_on(tmp_path: Path) -> None:
    workspace = make_workspace(
        tmp_path,
        collaborators=3,
        rounds=2,
        files={"broken_task.py": BROKEN_TASK},
        plan_changes={
            "task_runner": {"path": "broken_task:build_runner"},
            "timeouts": {"round_seconds": 600, "min_results": 2},
        },
    )
    with LocalFederation(workspace, collaborators=["site-1", "site-3"]) as federation:
        federation.start()
        env = {**os.environ, "BROKEN_SITE": "1", "COLUMNS": "300", "PYTHONUNBUFFERED": "1"}
        broken = subprocess.run(
            [
                sys.executable, "-m", "bastion", "collaborator", "start", "site-2",
                "--aggregator", f"127.0.0.1:{federation.port}", "--workspace", str(workspace),
            ],
            capture_output=True, text=True, timeout=180, env=env, cwd=workspace,
        )  # fmt: skip
        codes = federation.wait(timeout=240)
        aggregator_log = federation.log_text("aggregator")
    assert codes == {"aggregator": 0, "site-1": 0, "site-3": 0}

    # The site: a non-zero exit, one line, the traceback kept in its own log file.
    assert broken.returncode == 2
    assert "Traceback" not in broken.stderr
    [line] = [line for line in broken.stderr.splitlines() if line.startswith("error: ")]
    errors_log = workspace / "logs" / "site-2-errors.log"
    assert f"site-2: task 'train' of round 1 raised {REASON}" in line
    assert f"the traceback is in {errors_log}" in line
    assert "Traceback (most recent call last)" in errors_log.read_text()

    # The aggregator: logged once with the site's name and reason; the round closed with the
    # other two, not by its 600 s timeout.
    assert aggregator_log.count(f"site-2: task train failed in round 1: {REASON}") == 1
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    [failed] = [r for r in records if r["event"] == "failed"]
    assert (failed["collaborator"], failed["round"], failed["error"]) == ("site-2", 1, REASON)
    first = round_summaries(records)[0]
    assert first["accepted"] == 2 and first["timed_out"] == []
    assert first["failed"] == {"site-2": f"train: {REASON}"}

    # Status shows the failure.
    status = run_bastion("status", "--workspace", str(workspace))
    assert status.returncode == 0
    [row] = [line for line in status.stdout.splitlines() if "site-2" in line]
    assert "1: round 1 train: ValueError: epoch is not an argument" in row
