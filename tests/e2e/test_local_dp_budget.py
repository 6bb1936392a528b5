"""Local DP budgets over real processes: sites stop training at their budget, and a restart
does not reset what their records spent.

An aggregator and two collaborators (mutual TLS) train a small MLP on digits with DP-SGD,
4 rounds planned and a per-site budget that fits 2. Site 1 is killed with SIGKILL between
rounds 1 and 2 and started again: its ledger must carry its round-1 spend into round 2.
In round 3 both sites decline training; the aggregator then runs the final evaluation and
every process exits 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.simulation import TORCH_MLP_TASK
from support.status import bastion_status
from support.workspaces import edit_plan, make_workspace, sign_workspace

from bastion.metrics.log import read_metrics, round_summaries
from bastion.plan import load_plan
from bastion.privacy.dp.local import round_steps
from bastion.privacy.dp.site_ledger import ledger_path
from bastion.sim.processes import LocalFederation
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.tasks import load_shard

pytest.importorskip("opacus")

Z, CLIP, DELTA, ROUNDS, BATCH, STEPS = 1.0, 1.0, 1e-5, 4, 32, 8
SITES = ["site-1", "site-2"]


def _epsilon(rate: float, steps: int) -> float:
    """Opacus's RDP epsilon of ``steps`` DP-SGD steps at sampling rate ``rate``."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(Z, rate, steps)]
    return float(accountant.get_epsilon(DELTA))


def _wait_for(path: Path, found: Callable[[dict], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(found(r) for r in read_metrics(path)):
        assert time.monotonic() < deadline, f"timed out waiting in {path}"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
def test_sites_stop_at_their_local_budget_and_a_restart_keeps_the_spend(tmp_path: Path) -> None:
    train = {"epochs": 1, "batch_size": BATCH, "lr": 0.1, "max_batches": STEPS}
    workspace = make_workspace(
        tmp_path,
        collaborators=2,
        rounds=ROUNDS,
        task_code=TORCH_MLP_TASK,
        initialize=False,
        plan_changes={
            "tasks": [
                {"name": "validate_global", "kind": "validate"},
                {"name": "train", "kind": "train", "args": train},
                {"name": "validate_local", "kind": "validate", "model": "local"},
            ],
            "differential_privacy": {
                "delta": DELTA,
                "local": {"noise_multiplier": Z, "max_grad_norm": CLIP},
            },
        },
    )
    # Each site's epsilon after k rounds, from its shard size; a budget that fits 2 rounds.
    plan = load_plan(workspace)
    rate = {
        name: round_steps(load_shard(plan, name, workspace).train_count, 1, BATCH, STEPS)[0]
        for name in SITES
    }
    expected = {name: {k: _epsilon(rate[name], k * STEPS) for k in (1, 2, 3)} for name in SITES}
    assert max(e[2] for e in expected.values()) < min(e[3] for e in expected.values())
    budget = (max(e[2] for e in expected.values()) + min(e[3] for e in expected.values())) / 2
    edit_plan(workspace, {"differential_privacy": {"local": {"epsilon_budget": budget}}})
    initialize_plan(workspace)
    sign_workspace(workspace)

    metrics = workspace / "logs" / "metrics.jsonl"
    with LocalFederation(workspace) as federation:
        federation.start_aggregator()
        first = federation.start_collaborator("site-1")
        # Site 1 finishes round 1 (its last task is validate_local) while site 2 is not up,
        # so the round stays open and site 1 sits idle between rounds: kill it there.
        _wait_for(
            metrics,
            lambda r: (
                r["event"] == "task"
                and r["collaborator"] == "site-1"
                and r["task"] == "validate_local"
            ),
        )
        first.kill()
        assert first.wait(timeout=30) == -9
        federation.start_collaborator("site-1")
        federation.start_collaborator("site-2")
        codes = federation.wait(timeout=240)
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, federation.log_text("aggregator")

    records = read_metrics(metrics)
    reported = {
        name: [
            r["metrics"]["dp_epsilon"]
            for r in records
            if r["event"] == "task" and r["task"] == "train" and r["collaborator"] == name
        ]
        for name in SITES
    }
    for name in SITES:
        # Rounds 1 and 2 trained; site 1's round 2 starts from its round-1 spend, restart or not.
        assert reported[name] == pytest.approx([expected[name][1], expected[name][2]], rel=1e-9)
        assert all(e <= budget for e in reported[name])
    declined = [r for r in records if r["event"] == "declined"]
    assert sorted(r["collaborator"] for r in declined) == SITES
    for record in declined:
        name = record["collaborator"]
        assert record["round"] == 3 and record["task"] == "train"
        assert record["metrics"]["dp_epsilon"] == pytest.approx(expected[name][2], rel=1e-9)
        assert record["metrics"]["dp_epsilon_next"] == pytest.approx(expected[name][3], rel=1e-9)
        assert record["metrics"]["dp_epsilon_next"] > budget

    summaries = round_summaries(records)
    assert [(s["round"], s["final_evaluation"], s["accepted"]) for s in summaries] == [
        (1, False, 2),
        (2, False, 2),
        (3, False, 0),
        (4, True, 0),
    ]
    for summary in summaries[:3]:
        local = summary["local_privacy"]
        assert local["epsilon_budget"] == budget
        assert max(local["epsilon"].values()) <= budget
    assert summaries[2]["local_privacy"]["declined"] == SITES
    assert summaries[3]["model_round"] == 3  # the final evaluation of the last model
    stopped = [r for r in records if r["event"] == "privacy_budget_reached"]
    assert len(stopped) == 1 and "every collaborator declined training" in stopped[0]["reason"]
    assert records[-1]["event"] == "finished" and records[-1]["stopped"] == stopped[0]["reason"]

    logs = {name: " ".join(federation.log_text(name).split()) for name in SITES}  # unwrapped
    for name in SITES:
        ledger = json.loads(ledger_path(workspace, plan, name).read_text())
        assert ledger["epsilon"] == pytest.approx(expected[name][2], rel=1e-9)
        assert (
            f"{name}: declining 'train' of round 3: local DP budget: epsilon spent "
            f"{expected[name][2]:.4g}, its {STEPS} DP-SGD steps would bring it to "
            f"{expected[name][3]:.4g} (delta=1e-05), over "
            f"differential_privacy.local.epsilon_budget={budget:g}"
        ) in logs[name]
    # The restarted process read its round-1 spend back before training again.
    assert f"epsilon {expected['site-1'][1]:.4g} already spent" in logs["site-1"]

    shown = bastion_status(workspace)
    worst = max(reported, key=lambda n: reported[n][-1])
    assert f"local DP-SGD: epsilon up to {reported[worst][-1]:.4g} ({worst})" in shown
    assert f"budget epsilon {budget:g} per site" in shown
    assert "every collaborator declined training" in shown
    print(
        f"local DP over processes: {ROUNDS} rounds planned, budget {budget:.4g} per site "
        f"(delta={DELTA:g}, z={Z}, {STEPS} steps/round); epsilon per round "
        + "; ".join(f"{n} {[round(e, 4) for e in reported[n]]}" for n in SITES)
        + "; declined in round 3 (would reach "
        + ", ".join(f"{r['metrics']['dp_epsilon_next']:.4g}" for r in declined)
        + "), final evaluation of model 3"
    )
