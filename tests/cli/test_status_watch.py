"""``bastion status --json`` and ``--watch``: before a federation starts and after it ends."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import run_bastion
from support.federations import SITES, run_template_federation


def test_status_json_and_watch(tmp_path: Path) -> None:
    run_template_federation(tmp_path, "numpy_logreg_digits", "bastion.runners.numpy", "numpy", 2)
    workspace = next(tmp_path.glob("**/plan.yaml")).parent
    answer = run_bastion("status", "--workspace", str(workspace), "--json")
    assert answer.returncode == 0, answer.stderr
    status = json.loads(answer.stdout)
    assert status["state"] == "finished" and status["rounds"] == 2
    assert sorted(status["summary"]["collaborators_seen"]) == sorted(SITES)
    assert status["last_round"]["final_evaluation"] is True
    # a finished federation: --watch draws once and returns
    watched = run_bastion("status", "--workspace", str(workspace), "--watch", "0.2", "--json")
    assert watched.returncode == 0 and len(watched.stdout.splitlines()) == 1, watched.stderr
    table = run_bastion("status", "--workspace", str(workspace), "--watch", "0.2", timeout=60)
    assert table.returncode == 0 and "finished" in table.stdout, table.stderr
